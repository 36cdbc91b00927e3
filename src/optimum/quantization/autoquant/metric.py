"""The metric a search maximises: the user's callable, or a named task metric over `eval_dataset`."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..configuration import AutoQuantConfig
from ..errors import ConfigError, unknown_name
from ..evaluation import metrics
from ..evaluation.data import load_labelled_texts, load_squad_file

# task -> metric names scored on `eval_dataset`, the default first (evaluation/metrics.py, in percent).
TASK_METRICS = {
    "text-classification": ("accuracy", "f1"),
    "question-answering": ("f1", "exact_match"),
}
ALIASES = {"exact": "exact_match", "em": "exact_match", "squad_f1": "f1", "squad_exact": "exact_match"}


def _classification_data(source) -> tuple[list[str], list[int]]:
    if isinstance(source, dict):
        texts, labels = list(source.get("texts") or []), source.get("labels")
    else:
        texts, labels = load_labelled_texts(source)
    if not texts or labels is None or len(labels) != len(texts):
        raise ConfigError("A classification `eval_dataset` needs texts with integer labels, e.g. {'texts': [...], "
                          "'labels': [...]}, a labelled .tsv/.csv/.json file or a datasets.Dataset with a label column.")
    return texts, [int(label) for label in labels]


def _qa_examples(source) -> list[dict]:
    if isinstance(source, (str, Path)):
        return load_squad_file(source)
    examples = source.get("examples") if isinstance(source, dict) else source
    examples = list(examples or [])
    if not examples or not all(isinstance(e, dict) and {"question", "context", "answers"} <= set(e) for e in examples):
        raise ConfigError("A question-answering `eval_dataset` needs SQuAD-style examples (dicts with question, "
                          "context and answers) or a SQuAD-format JSON file.")
    return examples


def resolve_metric(config: AutoQuantConfig, task: str, tokenizer) -> tuple[Callable, str]:
    """(metric(model) -> float, its name). Higher is better."""
    metric = config.metric if config.metric is not None else config.metric_name
    if callable(metric):
        return metric, config.metric_name
    if task not in TASK_METRICS:
        raise ConfigError(f"No named metric is defined for {task!r}: pass `metric=` a callable metric(model) -> float.")
    name = ALIASES.get(metric, metric) if metric else TASK_METRICS[task][0]
    if name not in TASK_METRICS[task]:
        if config.metric is None and config.metric_name:  # a recipe that recorded a callable's name
            raise ConfigError(f"The metric {config.metric_name!r} was a callable, which is not saved: pass `metric=` again.")
        raise unknown_name(f"{task} metric", name, TASK_METRICS[task])
    if config.eval_dataset is None:
        raise ConfigError(f"quantize='auto' scores every candidate on evaluation data: pass `eval_dataset=` "
                          f"(the {name} of each candidate is compared with FP32), or `metric=` a callable.")
    if task == "text-classification":
        texts, labels = _classification_data(config.eval_dataset)
        return (lambda model: metrics.evaluate_classification(model, tokenizer, texts, labels)[name]), name
    examples = _qa_examples(config.eval_dataset)
    return (lambda model: metrics.evaluate_squad(model, tokenizer, examples)[name]), name
