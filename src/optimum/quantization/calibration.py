"""One calibration contract: whatever the user passes becomes a list of tokenized, fixed-shape examples.

Accepted sources: a list of strings, of (text, text_pair) tuples or of {"question": ..., "context": ...} dicts
(extractive QA), a `datasets.Dataset`, a path to a .txt (one example per line), .csv/.tsv or .json/.jsonl file, or
the name of a dataset `datasets` can load locally. Blank (whitespace-only) texts are left out. Backends adapt the
result to their own reader (ORT CalibrationDataReader, nncf.Dataset, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence, Union

from .errors import ConfigError

Example = Union[str, tuple[str, str]]

TEXT_COLUMNS = ("text", "sentence", "sentence1", "content", "review", "document", "prompt")
PAIR_COLUMNS = (("question", "context"), ("sentence1", "sentence2"), ("premise", "hypothesis"))
_FILE_LOADERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json"}
EXPECTED_EXAMPLE = "a text, a (text, text_pair) tuple or a {'question': ..., 'context': ...} dict"


def _example(item, index: int) -> Example:
    """One calibration example given in a list, in one of its accepted shapes; ConfigError for any other."""
    if isinstance(item, str):
        return item
    if isinstance(item, Mapping) and {"question", "context"} <= set(item):
        item = (item["question"], item["context"])
    if isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(part, str) for part in item):
        return tuple(item)
    shown = f"dict with keys {sorted(map(str, item))}" if isinstance(item, Mapping) else repr(item)[:60]
    raise ConfigError(f"calibration_dataset[{index}] is {shown}: each example must be {EXPECTED_EXAMPLE}.")


def _is_blank(example: Example) -> bool:
    return not all(part.strip() for part in ((example,) if isinstance(example, str) else example))


def _examples_from_dataset(dataset, text_column: str | None) -> list[Example]:
    columns = list(dataset.column_names)
    if text_column is not None:
        if text_column not in columns:
            raise ConfigError(f"Calibration data has no column {text_column!r}; its columns are {columns}.")
        return [str(t) for t in dataset[text_column]]
    for first, second in PAIR_COLUMNS:
        if first in columns and second in columns:
            return list(zip(map(str, dataset[first]), map(str, dataset[second])))
    for name in TEXT_COLUMNS:
        if name in columns:
            return [str(t) for t in dataset[name]]
    raise ConfigError(
        f"Cannot tell which calibration column holds text among {columns}: pass `text_column=` "
        f"(or name a column one of {list(TEXT_COLUMNS)})."
    )


def read_utf8(path: Path) -> str:
    """The text of `path`; ConfigError naming the file, the byte and its offset unless it is readable UTF-8."""
    try:
        data = Path(path).read_bytes()
    except PermissionError:
        raise ConfigError(f"{path} is not readable (permission denied): check its permissions.") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _not_utf8(path, data[err.start], err.start) from None


def _not_utf8(path: Path, byte: int, offset: int) -> ConfigError:
    return ConfigError(
        f"{path} is not UTF-8 text (byte 0x{byte:02x} at offset {offset}): save it in the UTF-8 encoding, e.g. "
        f"iconv -f latin1 -t utf-8 {Path(path).name} > {Path(path).stem}.utf8{Path(path).suffix} if it is Latin-1."
    )


def read_text_lines(path: Path) -> list[str]:
    """The non-blank lines of a UTF-8 text file, stripped: one example per line."""
    return [line.strip() for line in read_utf8(path).splitlines() if line.strip()]


def load_dataset_source(source: str, split: str | None = None, what: str = "calibration data"):
    """A `datasets.Dataset` from a .csv/.tsv/.json/.jsonl file or a dataset name `datasets` can load locally."""
    import datasets

    path = Path(source)
    if path.suffix.lower() in _FILE_LOADERS and path.is_file():
        read_utf8(path)  # datasets would only report "An error occurred while generating the dataset"
    try:
        if path.suffix.lower() in _FILE_LOADERS:
            kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
            return datasets.load_dataset(_FILE_LOADERS[path.suffix.lower()], data_files=str(path), split="train", **kwargs)
        return datasets.load_dataset(source, split=split or "train")
    except Exception as err:  # datasets raises many types; the user needs one clear message
        raise ConfigError(f"Could not load {what} {source!r}: {err}") from err


def load_calibration_examples(
    source, *, num_samples: int | None = None, text_column: str | None = None, split: str | None = None
) -> list[Example]:
    """Read calibration examples from any accepted source, keeping the first `num_samples`."""
    if source is None:
        raise ConfigError(
            "Static quantization needs calibration data: pass `calibration_dataset=` (a list of texts, a "
            "datasets.Dataset, or a .txt/.csv/.json file), or use quantize='dynamic', which needs none."
        )
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.suffix.lower() == ".txt" or (path.is_file() and path.suffix.lower() not in _FILE_LOADERS):
            if not path.is_file():
                raise ConfigError(f"Calibration file {path} does not exist.")
            examples: list[Example] = read_text_lines(path)
        else:
            if path.suffix.lower() in _FILE_LOADERS and not path.is_file():
                raise ConfigError(f"Calibration file {path} does not exist.")
            examples = _examples_from_dataset(load_dataset_source(str(source), split), text_column)
    elif hasattr(source, "column_names"):
        examples = _examples_from_dataset(source, text_column)
    elif isinstance(source, (bytes, bytearray)):
        raise ConfigError("calibration_dataset is bytes: decode it to text first, or pass a list of texts or a file path.")
    elif isinstance(source, Sequence):
        examples = [_example(item, index) for index, item in enumerate(source)]
    else:
        raise ConfigError(f"Unsupported calibration data of type {type(source).__name__}.")
    examples = [e for e in examples if not _is_blank(e)]
    if not examples:
        raise ConfigError("The calibration data holds no examples (blank texts are left out).")
    return examples[:num_samples] if num_samples else examples


def random_word_examples(tokenizer, count: int, pairs: bool = False, seed: int = 0) -> list[Example]:
    """`count` texts of whole words drawn at random (seeded) from the tokenizer's vocabulary: activation statistics
    for smoothing when no calibration data is given. Single texts have 4-250 words, so short inputs and far
    positions are both seen; `pairs=True` gives (10-word question, 250-word context), extractive QA's shape."""
    import random

    markers = "\u0120\u2581"  # GPT-2 byte-level and SentencePiece word-start marks
    stripped = (token.lstrip(markers) for token in tokenizer.get_vocab())
    words = sorted({word for word in stripped if word.isalpha() and len(word) > 2})
    if not words:
        return []
    rng = random.Random(seed)

    def text(length: int) -> str:
        return " ".join(rng.choice(words) for _ in range(length))

    if pairs:
        return [(text(10), text(250)) for _ in range(count)]
    return [text(rng.randint(4, 250)) for _ in range(count)]


def tokenize_examples(
    examples: Sequence[Example], tokenizer, *, sequence_length: int, input_names: Sequence[str], pad: bool = True
) -> list[dict]:
    """Tokenize one example per batch, padded to `sequence_length` so every batch has the same shape
    (`pad=False`: truncated to it only, so no padding token's activations enter the statistics)."""
    if tokenizer.pad_token is None:
        # GPT-2-style tokenizers have no pad token; padding with EOS under an attention mask is the usual fix.
        tokenizer.pad_token = tokenizer.eos_token
    batches = []
    for example in examples:
        text, pair = (example if isinstance(example, tuple) else (example, None))
        encoded = tokenizer(
            text, pair, padding="max_length" if pad else False, truncation=True, max_length=sequence_length,
            return_tensors="np",
        )
        batches.append({name: encoded[name].astype("int64") for name in input_names if name in encoded})
    return batches
