"""Dynamic INT8 embedding tables stored per row (u8, one scale per row) instead of ONNX Runtime's per-tensor
QEmbedLayerNormalization: the tables really are 8-bit on disk, each row is reconstructed within half its own
step, ONNX Runtime folds them at load, and the classifier stays close to FP32."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import transformers
from onnx import numpy_helper
from test_onnxruntime_backend import assert_close_to_fp32, fp32_logits, onnx_file

from optimum.quantization import DynamicQuantConfig, QuantModelForSequenceClassification
from optimum.quantization.backends.ort_embeddings import FOLD_DEQUANTIZE, quantize_rows
from optimum.quantization.configuration import config_from_dict
from optimum.quantization.errors import ConfigError


def test_quantize_rows_reconstructs_each_row_within_half_its_step():
    rng = np.random.default_rng(0)
    table = rng.standard_normal((50, 16)).astype(np.float32) * rng.uniform(0.01, 5.0, (50, 1)).astype(np.float32)
    table[3] = 0.0  # an all-zero row
    table[4] = np.abs(table[4]) + 1.0  # all positive: its range must still include 0
    quantized, scale, zero_point = quantize_rows(table)
    assert quantized.dtype == np.uint8 and scale.shape == (50,) and zero_point.dtype == np.uint8
    restored = (quantized.astype(np.float32) - zero_point[:, None]) * scale[:, None]
    assert np.all(np.abs(restored - table) <= scale[:, None] / 2 + 1e-6)
    assert np.all(restored[3] == 0.0) and zero_point[4] == 0
    # one scale for the whole table (per tensor) is far coarser on the narrow rows
    per_tensor_step = (table.max() - min(table.min(), 0)) / 255
    assert np.median(scale) < per_tensor_step / 3


def _table(graph, name):
    return next(numpy_helper.to_array(i) for i in graph.initializer if i.name == name)


def test_dynamic_default_stores_tables_per_row_and_folds_them_at_load(tiny_dir):
    folder = tiny_dir("text-classification")
    model = QuantModelForSequenceClassification.from_pretrained(folder, quantize="dynamic")
    graph = onnx.load(str(onnx_file(model))).graph
    ops = [n.op_type for n in graph.node]
    assert "EmbedLayerNormalization" in ops and "QEmbedLayerNormalization" not in ops
    tables = model.quantization_recipe.details["per_row_tables"]
    assert len(tables) == 2  # word and position tables
    state = transformers.AutoModelForSequenceClassification.from_pretrained(folder).state_dict()
    assert sorted(tables) == ["bert.embeddings.position_embeddings.weight", "bert.embeddings.word_embeddings.weight"]
    for name in tables:
        quantized = _table(graph, f"{name}_per_row_quantized")
        scale, zero_point = _table(graph, f"{name}_per_row_scale"), _table(graph, f"{name}_per_row_zero_point")
        assert quantized.dtype == np.uint8 and not any(i.name == name for i in graph.initializer)  # no FP32 copy left
        restored = (quantized.astype(np.float32) - zero_point[:, None]) * scale[:, None]
        assert np.abs(restored - state[name].numpy()).max() <= scale.max() / 2 + 1e-6
    # the loader asks ONNX Runtime to fold the DequantizeLinear nodes into FP32 tables once, at session creation
    assert model.model.get_session_options().get_session_config_entry(FOLD_DEQUANTIZE[0]) == FOLD_DEQUANTIZE[1]
    reference, inputs = fp32_logits(folder)
    assert_close_to_fp32(reference, model(**inputs).logits.numpy())


def test_reloaded_model_folds_tables_too(tiny_dir, tmp_path):
    folder = tiny_dir("text-classification")
    model = QuantModelForSequenceClassification.from_pretrained(folder, quantize="dynamic")
    model.save_pretrained(tmp_path / "saved")
    reloaded = QuantModelForSequenceClassification.from_pretrained(tmp_path / "saved")
    assert reloaded.model.get_session_options().get_session_config_entry(FOLD_DEQUANTIZE[0]) == FOLD_DEQUANTIZE[1]
    _, inputs = fp32_logits(folder)
    np.testing.assert_allclose(reloaded(**inputs).logits.numpy(), model(**inputs).logits.numpy(), atol=1e-6)


def test_per_tensor_keeps_onnx_runtimes_quantized_embedding_op(tiny_dir):
    folder = tiny_dir("text-classification")
    model = QuantModelForSequenceClassification.from_pretrained(folder, quantize=DynamicQuantConfig(embeddings="per-tensor"))
    graph = onnx.load(str(onnx_file(model))).graph
    assert "QEmbedLayerNormalization" in [n.op_type for n in graph.node]
    assert not [i.name for i in graph.initializer if "_per_row_" in i.name]
    assert "per_row_tables" not in model.quantization_recipe.details


def test_embeddings_option_is_validated_and_round_trips():
    with pytest.raises(ConfigError, match="embeddings"):
        DynamicQuantConfig(embeddings="per-column")
    config = DynamicQuantConfig(embeddings="per-tensor")
    assert config_from_dict(config.to_dict()) == config
