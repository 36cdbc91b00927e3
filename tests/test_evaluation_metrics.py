"""Metrics: exact values on hand-made inputs, and agreement of perplexity across runtimes on tiny models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from optimum.quantization import ConfigError, QuantModelForCausalLM, QuantModelForQuestionAnswering
from optimum.quantization.evaluation import metrics
from optimum.quantization.evaluation.data import load_labelled_texts, load_squad_file, load_text


def test_classification_metrics_binary_and_macro():
    # preds vs refs: TP(1)=2, FP(1)=1, FN(1)=1 -> F1(1) = 4/6; accuracy 4/6
    scores = metrics.classification_metrics([1, 1, 1, 0, 0, 0], [1, 1, 0, 1, 0, 0])
    assert scores["accuracy"] == pytest.approx(100 * 4 / 6)
    assert scores["f1"] == pytest.approx(100 * 4 / 6)
    macro = metrics.classification_metrics([0, 1, 2, 2], [0, 1, 2, 1])
    # per class F1: 1.0, 2/3, 2/3
    assert macro["f1"] == pytest.approx(100 * (1 + 2 / 3 + 2 / 3) / 3)


def test_classification_metrics_refuse_mismatched_lengths():
    with pytest.raises(ConfigError, match="pair up"):
        metrics.classification_metrics([1, 0], [1])
    with pytest.raises(ConfigError, match="binary"):
        metrics.classification_metrics([1], [1], average="micro")


def test_squad_metrics_use_official_normalisation_and_best_gold():
    scores = metrics.squad_metrics(["The Eiffel Tower!", "in Paris France"], [["eiffel tower"], ["Paris", "Lyon"]])
    assert scores["exact_match"] == pytest.approx(50.0)  # first exact after normalisation, second not
    # second: tokens {in, paris, france} vs {paris}: precision 1/3, recall 1 -> F1 0.5
    assert scores["f1"] == pytest.approx(100 * (1.0 + 0.5) / 2)


def test_logit_divergence_values():
    ref = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    same = metrics.logit_divergence(ref, ref)
    assert same["kl_divergence"] == pytest.approx(0.0, abs=1e-12) and same["top1_agreement"] == 1.0
    shifted = metrics.logit_divergence(ref, ref + 5.0)  # softmax is shift-invariant
    assert shifted["kl_divergence"] == pytest.approx(0.0, abs=1e-9) and shifted["max_abs_diff"] == pytest.approx(5.0)
    flipped = metrics.logit_divergence(ref, ref[:, ::-1].copy())
    assert flipped["top1_agreement"] == 0.5 and flipped["kl_divergence"] > 0.1
    masked = metrics.logit_divergence(ref, ref[:, ::-1].copy(), mask=[0, 1])
    assert masked["positions"] == 1 and masked["top1_agreement"] == 1.0
    with pytest.raises(ConfigError, match="shapes differ"):
        metrics.logit_divergence(ref, ref[:, :2])


@pytest.mark.parametrize("length,max_length,stride", [(10, 4, 2), (10, 4, 3), (7, 16, 8), (100, 32, 7), (2, 4, 1)])
def test_perplexity_windows_score_every_token_once(length, max_length, stride):
    scored = []
    for begin, end, scored_from in metrics.token_windows(length, max_length, stride):
        assert end - begin <= max_length
        scored.extend(range(begin + scored_from, end))
    assert scored == list(range(1, length))  # every token but the first, each once, in order


def _ids_text(tokenizer, n_tokens: int) -> str:
    text = " ".join(["the quick brown fox jumps over the lazy dog"] * 20)
    assert len(tokenizer(text).input_ids) >= n_tokens
    return text


def test_perplexity_matches_transformers_loss(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_dir("text-generation")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    text = _ids_text(tokenizer, 100)
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :100]
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    one_window = metrics.perplexity(model, tokenizer, text, max_length=100, stride=50, max_tokens=100)
    assert one_window["perplexity"] == pytest.approx(math.exp(loss), rel=1e-4)
    assert one_window["tokens"] == 99
    strided = metrics.perplexity(model, tokenizer, text, max_length=40, stride=20, max_tokens=100)
    assert strided["tokens"] == 99 and strided["windows"] > 1 and math.isfinite(strided["perplexity"])


def test_perplexity_onnxruntime_fp32_equals_pytorch_and_int8_stays_close(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_dir("text-generation")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = _ids_text(tokenizer, 120)
    window = dict(max_length=64, stride=32, max_tokens=120)
    torch_ppl = metrics.perplexity(AutoModelForCausalLM.from_pretrained(folder).eval(), tokenizer, text, **window)
    ort_fp32 = QuantModelForCausalLM.from_pretrained(folder, quantize=None)
    ort_int8 = QuantModelForCausalLM.from_pretrained(folder, quantize="dynamic")
    assert metrics.perplexity(ort_fp32, tokenizer, text, **window)["perplexity"] == pytest.approx(
        torch_ppl["perplexity"], rel=1e-4
    )
    int8_ppl = metrics.perplexity(ort_int8, tokenizer, text, **window)["perplexity"]
    assert int8_ppl == pytest.approx(torch_ppl["perplexity"], rel=0.05)  # tiny random model: a loose bound
    divergence = metrics.compare_causal_logits(ort_fp32, ort_int8, tokenizer, ["hello world, this is a test"])
    assert 0 < divergence["kl_divergence"] < 0.05 and divergence["top1_agreement"] > 0.8


def test_perplexity_refuses_bad_window(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_dir("text-generation")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    for stride in (16, 8, 0):
        with pytest.raises(ConfigError, match="stride"):
            metrics.perplexity(model, tokenizer, "some text here", max_length=8, stride=stride)
    with pytest.raises(ConfigError, match="two tokens"):
        metrics.perplexity(model, tokenizer, "a", max_length=8, stride=4)


def test_evaluate_squad_on_a_quantized_model(tiny_dir, tmp_path):
    from transformers import AutoTokenizer

    folder = tiny_dir("question-answering")
    model = QuantModelForQuestionAnswering.from_pretrained(folder, quantize="dynamic")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    examples = [
        {"question": "what is slow ?", "context": "it 's slow -- very , very slow .", "answers": ["very slow"]},
        {"question": "what film ?", "context": "a sometimes tedious film .", "answers": ["tedious film"]},
    ]
    scores = metrics.evaluate_squad(model, tokenizer, examples)
    assert len(scores["predictions"]) == 2 and all(isinstance(p, str) for p in scores["predictions"])
    assert 0.0 <= scores["exact_match"] <= scores["f1"] <= 100.0


def test_data_loaders(tmp_path):
    tsv = tmp_path / "dev.tsv"
    tsv.write_text("sentence\tlabel\ngood film\t1\nbad film\t0\nfine\t1\n", encoding="utf-8")
    assert load_labelled_texts(tsv, limit=2) == (["good film", "bad film"], [1, 0])
    unlabelled = tmp_path / "texts.csv"
    unlabelled.write_text("text\nhello\nworld\n", encoding="utf-8")
    assert load_labelled_texts(unlabelled) == (["hello", "world"], None)
    lines = tmp_path / "texts.txt"
    lines.write_text("first text\n\n  second text  \nthird\n", encoding="utf-8")
    assert load_labelled_texts(lines, limit=2) == (["first text", "second text"], None)
    with pytest.raises(ConfigError, match="does not exist"):
        load_labelled_texts(tmp_path / "missing.txt")
    bad_labels = tmp_path / "named.csv"
    bad_labels.write_text("text,label\nhello,positive\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="class ids"):
        load_labelled_texts(bad_labels)
    squad = tmp_path / "squad.json"
    squad.write_text(
        '{"data": [{"title": "t", "paragraphs": [{"context": "Paris is in France.", "qas": ['
        '{"id": "q1", "question": "Where is Paris?", "answers": [{"text": "France", "answer_start": 12}]}]}]}]}',
        encoding="utf-8",
    )
    assert load_squad_file(squad) == [
        {"id": "q1", "question": "Where is Paris?", "context": "Paris is in France.", "answers": ["France"]}
    ]
    with pytest.raises(ConfigError, match="SQuAD-format"):
        load_squad_file(tsv)
    with pytest.raises(ConfigError, match="does not exist"):
        load_text(tmp_path / "missing.txt")
