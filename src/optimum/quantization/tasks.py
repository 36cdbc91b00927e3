"""The tasks we support, their aliases, the transformers auto class of each, and the task a checkpoint is for."""

from .errors import ConfigError, unknown_name

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


def task_from_architectures(architectures, source: str) -> str:
    """The task of a checkpoint whose config.json names `architectures` (e.g. ["BertForSequenceClassification"]),
    as optimum's TasksManager maps model classes to tasks; ConfigError when it names none, several or an
    unsupported one."""
    import transformers
    from optimum.exporters.tasks import TasksManager

    found = {}
    for name in architectures or ():
        model_class = getattr(transformers, name, None)
        try:
            task = TasksManager.infer_task_from_model(model_class) if model_class is not None else None
        except (ValueError, KeyError):
            task = None
        found[name] = TASK_ALIASES.get(task, task)
    tasks = set(found.values())
    if len(tasks) == 1 and None not in tasks and next(iter(tasks)) in TASKS:
        return next(iter(tasks))
    if not found:
        reason = "its config.json names no `architectures`"
    elif len(tasks) > 1:
        reason = f"its architectures {sorted(found)} mean different tasks ({', '.join(sorted(map(str, tasks)))})"
    else:
        task = next(iter(tasks))
        reason = (f"{', '.join(found)} is not a model class known for a task" if task is None
                  else f"{', '.join(found)} is a {task!r} model, a task this library does not quantize")
    raise ConfigError(f"Cannot infer the task of {source}: {reason}. Pass --task, one of {', '.join(TASKS)}.")
