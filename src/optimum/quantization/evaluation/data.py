"""Evaluation data from local files: labelled texts, SQuAD-format questions, plain text for perplexity."""

from __future__ import annotations

import json
from pathlib import Path

from ..calibration import TEXT_COLUMNS, load_dataset_source, read_text_lines
from ..errors import ConfigError

LABEL_COLUMNS = ("label", "labels", "target", "class")


def _pick_column(columns, wanted: str | None, candidates, what: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise ConfigError(f"The evaluation data has no {what} column {wanted!r}; its columns are {columns}.")
        return wanted
    for name in candidates:
        if name in columns:
            return name
    raise ConfigError(f"Cannot tell which column holds the {what} among {columns}: name it explicitly.")


def load_labelled_texts(
    source, text_column: str | None = None, label_column: str | None = None, limit: int | None = None
) -> tuple[list[str], list[int] | None]:
    """(texts, integer labels) from a .csv/.tsv/.json/.jsonl file, a `datasets.Dataset` or a local dataset.

    A .txt file (one text per line) or a table without a label column gives labels None: only agreement with
    the baseline can be measured then.
    """
    if isinstance(source, (str, Path)) and Path(source).suffix.lower() == ".txt":
        if not Path(source).is_file():
            raise ConfigError(f"Evaluation file {source} does not exist.")
        texts = read_text_lines(Path(source))[:limit]
        if not texts:
            raise ConfigError(f"The evaluation data {source!r} holds no examples.")
        return texts, None
    dataset = source if hasattr(source, "column_names") else load_dataset_source(str(source), what="evaluation data")
    columns = list(dataset.column_names)
    texts = [str(t) for t in dataset[_pick_column(columns, text_column, TEXT_COLUMNS, "text")]]
    labels = None
    if label_column is not None or any(c in columns for c in LABEL_COLUMNS):
        raw = list(dataset[_pick_column(columns, label_column, LABEL_COLUMNS, "label")])
        try:
            labels = [int(label) for label in raw]
        except (TypeError, ValueError) as err:
            raise ConfigError(f"Labels must be class ids (integers); found {raw[:3]!r}.") from err
    if limit is not None:
        texts, labels = texts[:limit], (labels[:limit] if labels is not None else None)
    if not texts:
        raise ConfigError(f"The evaluation data {source!r} holds no examples.")
    return texts, labels


def load_squad_file(path, limit: int | None = None, articles: slice | None = None) -> list[dict]:
    """Questions of a SQuAD v1.1-format JSON file as dicts: id, question, context, answers (all gold texts)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"SQuAD file {path} does not exist.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ConfigError(f"{path} is not a SQuAD-format JSON file (top-level 'data' list): {err}") from err
    examples = []
    for article in data[articles] if articles is not None else data:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                examples.append(
                    {
                        "id": qa["id"],
                        "question": qa["question"],
                        "context": paragraph["context"],
                        "answers": [a["text"] for a in qa["answers"]],
                    }
                )
    if not examples:
        raise ConfigError(f"{path} holds no questions.")
    return examples[:limit] if limit is not None else examples


def load_text(path, encoding: str = "utf-8") -> str:
    """The whole text of a file, for perplexity."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Text file {path} does not exist.")
    text = path.read_text(encoding=encoding)
    if not text.strip():
        raise ConfigError(f"{path} is empty.")
    return text
