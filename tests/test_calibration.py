"""Calibration data: every accepted source becomes a list of examples; tokenization gives fixed-shape batches."""

from __future__ import annotations

import json
import os

# Never reach the Hub from these tests (set before `datasets` is first imported).
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from optimum.quantization.calibration import load_calibration_examples, tokenize_examples
from optimum.quantization.errors import ConfigError

TEXTS = ["the first sentence", "a second one", "and a third", "fourth example here"]


@pytest.fixture(autouse=True)
def _datasets_cache_in_tmp(tmp_path, monkeypatch):
    """Keep `datasets` caches out of the home folder so that runs never see each other's files."""
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets_cache")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)


# --------------------------------------------------------------------------------------------- sources


def test_from_list():
    assert load_calibration_examples(list(TEXTS)) == TEXTS


def test_from_list_of_pairs_and_non_strings():
    examples = load_calibration_examples([("q1", "c1"), "text", ""])
    assert examples == [("q1", "c1"), "text"]
    with pytest.raises(ConfigError, match=r"calibration_dataset\[1\] is 42: each example must be a text"):
        load_calibration_examples([("q1", "c1"), 42, "text"])


def test_from_txt_drops_blank_lines(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text("first line\n\n   \n  second line  \n\nthird\n", encoding="utf-8")
    assert load_calibration_examples(path) == ["first line", "second line", "third"]
    assert load_calibration_examples(str(path)) == ["first line", "second line", "third"]


def test_from_file_without_known_suffix_read_as_lines(tmp_path):
    path = tmp_path / "calib.data"
    path.write_text("one\ntwo\n", encoding="utf-8")
    assert load_calibration_examples(path) == ["one", "two"]


def test_from_csv_sentence_column(tmp_path):
    path = tmp_path / "calib.csv"
    rows = ["idx,sentence,label"] + [f'{i},"{text}",{i % 2}' for i, text in enumerate(TEXTS)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert load_calibration_examples(path) == TEXTS


def test_from_tsv(tmp_path):
    path = tmp_path / "calib.tsv"
    rows = ["label\ttext"] + [f"{i}\t{text}, with a comma" for i, text in enumerate(TEXTS)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    # A comma inside the text proves the tab, not the comma, was used as the delimiter.
    assert load_calibration_examples(path) == [f"{text}, with a comma" for text in TEXTS]


def test_from_jsonl_text_column(tmp_path):
    path = tmp_path / "calib.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(TEXTS)), encoding="utf-8")
    assert load_calibration_examples(path) == TEXTS


def test_from_dataset_question_context_gives_pairs():
    import datasets

    dataset = datasets.Dataset.from_dict(
        {"id": ["a", "b"], "question": ["who?", "what?"], "context": ["ctx one", "ctx two"], "text": ["x", "y"]}
    )
    # Pair columns win over a single text column.
    assert load_calibration_examples(dataset) == [("who?", "ctx one"), ("what?", "ctx two")]


def test_from_dataset_text_column_override():
    import datasets

    dataset = datasets.Dataset.from_dict({"text": ["t1", "t2"], "body": ["b1", "b2"]})
    assert load_calibration_examples(dataset) == ["t1", "t2"]
    assert load_calibration_examples(dataset, text_column="body") == ["b1", "b2"]


def test_text_column_override_on_file(tmp_path):
    path = tmp_path / "calib.csv"
    path.write_text("sentence,other\ns1,o1\ns2,o2\n", encoding="utf-8")
    assert load_calibration_examples(path, text_column="other") == ["o1", "o2"]


def test_text_column_missing_lists_columns():
    import datasets

    dataset = datasets.Dataset.from_dict({"text": ["t1"], "body": ["b1"]})
    with pytest.raises(ConfigError, match="'nope'") as info:
        load_calibration_examples(dataset, text_column="nope")
    assert "body" in str(info.value)


@pytest.mark.parametrize("num_samples", [1, 3])
def test_num_samples_truncates(num_samples, tmp_path):
    assert load_calibration_examples(TEXTS, num_samples=num_samples) == TEXTS[:num_samples]
    path = tmp_path / "calib.txt"
    path.write_text("\n".join(TEXTS), encoding="utf-8")
    assert load_calibration_examples(path, num_samples=num_samples) == TEXTS[:num_samples]


def test_num_samples_larger_than_data():
    assert load_calibration_examples(TEXTS, num_samples=1000) == TEXTS


# --------------------------------------------------------------------------------------------- errors


def test_none_source_mentions_calibration_dataset():
    with pytest.raises(ConfigError, match="calibration_dataset"):
        load_calibration_examples(None)


@pytest.mark.parametrize("name", ["missing.txt", "missing.csv", "missing.jsonl", "missing.tsv"])
def test_missing_file(tmp_path, name):
    with pytest.raises(ConfigError, match="does not exist"):
        load_calibration_examples(tmp_path / name)


def test_no_recognisable_text_column():
    import datasets

    dataset = datasets.Dataset.from_dict({"foo": ["a"], "bar": ["b"]})
    with pytest.raises(ConfigError, match="text_column") as info:
        load_calibration_examples(dataset)
    assert "foo" in str(info.value) and "bar" in str(info.value)


def test_no_recognisable_text_column_in_csv(tmp_path):
    path = tmp_path / "calib.csv"
    path.write_text("foo,bar\n1,2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="text_column"):
        load_calibration_examples(path)


def test_unreadable_json_file(tmp_path):
    path = tmp_path / "calib.json"
    path.write_text("{this is not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="Could not load calibration data"):
        load_calibration_examples(path)


@pytest.mark.parametrize("source", [[], ["", ""]])
def test_empty_list(source):
    with pytest.raises(ConfigError, match="no examples"):
        load_calibration_examples(source)


def test_empty_txt(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text("\n  \n\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="no examples"):
        load_calibration_examples(path)


def test_empty_dataset():
    import datasets

    with pytest.raises(ConfigError, match="no examples"):
        load_calibration_examples(datasets.Dataset.from_dict({"text": []}))


def test_unsupported_type():
    with pytest.raises(ConfigError, match="int"):
        load_calibration_examples(12)


def test_qa_dicts_become_question_context_pairs():
    rows = [{"question": "who was it ?", "context": "the model was"}, {"context": "a text", "question": "what ?", "id": 3}]
    assert load_calibration_examples(rows) == [("who was it ?", "the model was"), ("what ?", "a text")]
    assert load_calibration_examples([["who ?", "ctx"]]) == [("who ?", "ctx")]  # a pair read back from JSON


@pytest.mark.parametrize(
    "source,message",
    [
        (b"first text", "calibration_dataset is bytes: decode it"),
        ([b"first text"], r"calibration_dataset\[0\] is b'first text'"),
        (["ok", {"q": "who ?", "c": "ctx"}], r"calibration_dataset\[1\] is dict with keys \['c', 'q'\]"),
        ([("a", "b", "c")], r"calibration_dataset\[0\]"),
        ([None], r"calibration_dataset\[0\] is None"),
    ],
)
def test_other_example_shapes_are_refused(source, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_calibration_examples(source)
    assert "question" in str(info.value) or "decode" in str(info.value)  # says what is expected


def test_whitespace_only_texts_and_pairs_are_left_out():
    assert load_calibration_examples(["  ", "\t\n", "text", ("  ", "ctx"), ("q", "c")]) == ["text", ("q", "c")]
    with pytest.raises(ConfigError, match="holds no examples"):
        load_calibration_examples([" ", "\n"])


def test_qa_dicts_tokenize_as_pairs(tokenizer):
    examples = load_calibration_examples([{"question": "who was it ?", "context": "the model was"}])
    [batch] = tokenize_examples(examples, tokenizer, sequence_length=12,
                                input_names=["input_ids", "attention_mask", "token_type_ids"])
    assert 1 in batch["token_type_ids"][0].tolist()  # the context is the second segment


# --------------------------------------------------------------------------------------------- tokenization

VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "the", "a", "an", "and", "first", "second", "third", "fourth", "sentence", "one", "example", "here",
    "who", "what", "is", "was", "ctx", "two", "model", "text", "word", "this", "that", "of", "in", "to",
    "long", "very", ",", ".", "?", "!", "##s", "##ing", "##ed",
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import BertTokenizerFast

    vocab_file = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab_file.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return BertTokenizerFast(vocab_file=str(vocab_file))


@pytest.mark.parametrize("sequence_length", [8, 16])
def test_tokenize_fixed_shape(tokenizer, sequence_length):
    examples = ["the first sentence", "a", "this is a very very very very long text of words , and more words ."]
    names = ["input_ids", "attention_mask", "token_type_ids"]
    batches = tokenize_examples(examples, tokenizer, sequence_length=sequence_length, input_names=names)
    assert len(batches) == len(examples)
    for batch in batches:
        assert list(batch) == names
        for array in batch.values():
            assert isinstance(array, np.ndarray)
            assert array.shape == (1, sequence_length)
            assert array.dtype == np.int64
    # Short text is padded with [PAD] (id 0) under a zero attention mask; long text is truncated, ending in [SEP].
    short = batches[1]
    assert short["input_ids"][0, :3].tolist() == [VOCAB.index("[CLS]"), VOCAB.index("a"), VOCAB.index("[SEP]")]
    assert short["input_ids"][0, 3:].tolist() == [0] * (sequence_length - 3)
    assert short["attention_mask"][0].tolist() == [1, 1, 1] + [0] * (sequence_length - 3)
    assert batches[2]["input_ids"][0, -1] == VOCAB.index("[SEP]")
    assert batches[2]["attention_mask"][0].tolist() == [1] * sequence_length


def test_tokenize_only_requested_names(tokenizer):
    batches = tokenize_examples(["the first sentence"], tokenizer, sequence_length=12, input_names=["input_ids"])
    assert list(batches[0]) == ["input_ids"]
    # Names the tokenizer does not produce are skipped, not invented.
    batches = tokenize_examples(
        ["the first"], tokenizer, sequence_length=12, input_names=["attention_mask", "position_ids"]
    )
    assert list(batches[0]) == ["attention_mask"]
    assert batches[0]["attention_mask"].shape == (1, 12)


def test_tokenize_pairs(tokenizer):
    batches = tokenize_examples(
        [("who is that ?", "the model is here ."), ("what", "very " * 40)],
        tokenizer,
        sequence_length=10,
        input_names=["input_ids", "attention_mask", "token_type_ids"],
    )
    for batch in batches:
        for array in batch.values():
            assert array.shape == (1, 10) and array.dtype == np.int64
    # The second segment is marked by token_type_ids == 1.
    assert 1 in batches[0]["token_type_ids"][0].tolist()
    assert batches[0]["token_type_ids"][0, 0] == 0


def test_tokenize_from_loaded_examples(tokenizer, tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text("\n".join(TEXTS), encoding="utf-8")
    examples = load_calibration_examples(path, num_samples=2)
    batches = tokenize_examples(examples, tokenizer, sequence_length=6, input_names=["input_ids", "attention_mask"])
    assert len(batches) == 2
    assert all(b["input_ids"].shape == (1, 6) for b in batches)


def test_tokenize_sets_missing_pad_token(tokenizer):
    class NoPad:
        pad_token = None
        eos_token = "[SEP]"

        def __call__(self, text, pair, **kwargs):
            assert self.pad_token == "[SEP]"
            return {"input_ids": np.zeros((1, kwargs["max_length"]), dtype=np.int32)}

    fake = NoPad()
    batches = tokenize_examples(["x"], fake, sequence_length=4, input_names=["input_ids"])
    assert fake.pad_token == "[SEP]"
    assert batches[0]["input_ids"].dtype == np.int64
