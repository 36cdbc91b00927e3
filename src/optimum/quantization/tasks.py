"""The tasks we support, their aliases, and the transformers auto class of each: data, no logic."""

from .errors import unknown_name

# task -> transformers Auto class name (the PyTorch model a backend starts from)
TASKS: dict[str, str] = {
    "text-classification": "AutoModelForSequenceClassification",
    "question-answering": "AutoModelForQuestionAnswering",
    "token-classification": "AutoModelForTokenClassification",
    "feature-extraction": "AutoModel",
    "text-generation": "AutoModelForCausalLM",
}

TASK_ALIASES: dict[str, str] = {
    "sequence-classification": "text-classification",
    "sentiment-analysis": "text-classification",
    "ner": "token-classification",
    "causal-lm": "text-generation",
    "text-generation-with-past": "text-generation",
    "default": "feature-extraction",
}


def normalize_task(task: str) -> str:
    task = TASK_ALIASES.get(task, task)
    if task not in TASKS:
        raise unknown_name("task", task, TASKS)
    return task
