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


def test_caller_session_options_keep_a_value_they_set():
    import onnxruntime

    from optimum.quantization.backends.ort_embeddings import folding_session_options

    key, value = FOLD_DEQUANTIZE
    assert folding_session_options().get_session_config_entry(key) == value
    unset = onnxruntime.SessionOptions()
    assert folding_session_options(unset) is unset and unset.get_session_config_entry(key) == value
    chosen = onnxruntime.SessionOptions()
    chosen.add_session_config_entry(key, "0")
    assert folding_session_options(chosen).get_session_config_entry(key) == "0"


def _embedding_graph(opset: int, node_name: str = "EmbedLayerNorm_0") -> onnx.ModelProto:
    """A fused embedding op whose word table is also read by a MatMul (a tied head)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    tables = {"word": rng.normal(0, 0.05, (30, 8)), "pos": rng.normal(0, 0.02, (16, 8)), "tok": rng.normal(0, 0.02, (2, 8)),
              "gamma": np.ones(8), "beta": np.zeros(8)}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in tables.items()]
    eln = helper.make_node("EmbedLayerNormalization", ["ids", "segment", "word", "pos", "tok", "gamma", "beta"],
                           ["hidden", "mask_index"], domain="com.microsoft", name=node_name)
    head = helper.make_node("MatMul", ["hidden", "word_t"], ["logits"], name="head")
    transpose = helper.make_node("Transpose", ["word"], ["word_t"], name="tied")
    graph = helper.make_graph(
        [eln, transpose, head], "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT32, [1, 4]), helper.make_tensor_value_info("segment", TensorProto.INT32, [1, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 30])], initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)])


def test_store_tables_per_row_renames_every_reader_and_skips_excluded_nodes_and_old_opsets():
    from optimum.quantization.backends.ort_embeddings import store_tables_per_row

    model = _embedding_graph(17)
    assert store_tables_per_row(model) == ["word", "pos"]
    readers = [list(n.input) for n in model.graph.node if n.name in ("EmbedLayerNorm_0", "tied")]
    assert readers[0][2:4] == ["word_dequantized", "pos_dequantized"] and readers[1] == ["word_dequantized"]
    assert [n.op_type for n in model.graph.node[:2]] == ["DequantizeLinear", "DequantizeLinear"]  # before their readers
    onnx.checker.check_model(model)
    assert store_tables_per_row(_embedding_graph(17), excluded={"EmbedLayerNorm_0"}) == []
    assert store_tables_per_row(_embedding_graph(12)) == []  # per-axis DequantizeLinear needs opset 13
