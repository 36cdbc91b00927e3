"""INT8 on ONNX Runtime keeps residual adds apart from LayerNorm and bias adds apart from GELU: the stored dynamic
graph really holds the separate ops, the loaded session (dynamic and static) really keeps them where ONNX Runtime
would fuse them at load, the classifier stays close to FP32, and `fuse_layer_norm=True` gives ONNX Runtime's fused
ops."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from conftest import SENTENCES
from test_onnxruntime_backend import assert_close_to_fp32, fp32_logits, onnx_file
from transformers import AutoConfig

from optimum.quantization import DynamicQuantConfig, QuantModelForSequenceClassification, StaticQuantConfig
from optimum.quantization.backends.onnxruntime import fuse_graph
from optimum.quantization.backends.ort_norm_fusion import DISABLE_OPTIMIZERS, UNFUSED_AT_LOAD, unfused_session_options
from optimum.quantization.configuration import config_from_dict
from optimum.quantization.errors import ConfigError

FUSED_NORM_OPS = {"SkipLayerNormalization", "BiasGelu"}


def _ops(path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}


def _ops_after_load(model_path, options, tmp_path) -> set[str]:
    """The operators of the graph ONNX Runtime runs after its own load-time fusions, read back from the file it
    writes when asked to (the extended level: the fusions in question, nothing hardware-specific)."""
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "as_loaded.onnx")
    onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    return _ops(tmp_path / "as_loaded.onnx")


def test_dynamic_default_keeps_layer_norm_and_gelu_unfused(tiny_dir, tmp_path):
    folder = tiny_dir("text-classification")
    model = QuantModelForSequenceClassification.from_pretrained(folder, quantize="dynamic")
    stored = _ops(onnx_file(model))
    assert {"LayerNormalization", "Gelu", "QAttention", "EmbedLayerNormalization"} <= stored
    assert not stored & FUSED_NORM_OPS
    details = model.quantization_recipe.details
    assert details["unfused_at_load"] == list(UNFUSED_AT_LOAD)
    assert "SkipLayerNormalization" not in details["fused_ops"] and details["fused_ops"]["Attention"] >= 1
    options = model.model.get_session_options()
    assert options.get_session_config_entry(DISABLE_OPTIMIZERS) == "SkipLayerNormFusion;BiasGeluFusion"
    assert not _ops_after_load(onnx_file(model), options, tmp_path) & FUSED_NORM_OPS
    # Without the entry ONNX Runtime would fuse the residual adds back into SkipLayerNormalization when it loads.
    assert "SkipLayerNormalization" in _ops_after_load(onnx_file(model), onnxruntime.SessionOptions(), tmp_path)
    reference, inputs = fp32_logits(folder)
    assert_close_to_fp32(reference, model(**inputs).logits.numpy())


def test_reloaded_model_keeps_layer_norm_unfused(tiny_dir, tmp_path):
    """The saved recipe carries the fusions to turn off, so a reload, with or without the caller's SessionOptions,
    runs the graph as stored and gives the same logits."""
    folder = tiny_dir("text-classification")
    model = QuantModelForSequenceClassification.from_pretrained(folder, quantize="dynamic")
    model.save_pretrained(tmp_path / "saved")
    _, inputs = fp32_logits(folder)
    expected = model(**inputs).logits.numpy()
    mine = onnxruntime.SessionOptions()
    mine.intra_op_num_threads = 1
    for session_options in (None, mine):
        reloaded = QuantModelForSequenceClassification.from_pretrained(tmp_path / "saved", session_options=session_options)
        assert reloaded.quantization_recipe.details["unfused_at_load"] == list(UNFUSED_AT_LOAD)
        options = reloaded.model.get_session_options()
        assert options.get_session_config_entry(DISABLE_OPTIMIZERS) == "SkipLayerNormFusion;BiasGeluFusion"
        assert not _ops_after_load(onnx_file(reloaded), options, tmp_path) & FUSED_NORM_OPS
        # Same graph and weights; only the thread count (and so float summation order) may differ.
        np.testing.assert_allclose(reloaded(**inputs).logits.numpy(), expected, atol=1e-5)
    assert mine.get_session_config_entry(DISABLE_OPTIMIZERS) == "SkipLayerNormFusion;BiasGeluFusion"


def test_fuse_layer_norm_true_gives_onnx_runtimes_fused_ops(tiny_dir):
    folder = tiny_dir("text-classification")
    model = QuantModelForSequenceClassification.from_pretrained(folder, quantize=DynamicQuantConfig(fuse_layer_norm=True))
    assert FUSED_NORM_OPS <= _ops(onnx_file(model))
    assert "unfused_at_load" not in model.quantization_recipe.details
    with pytest.raises(RuntimeError):  # the loader added nothing
        model.model.get_session_options().get_session_config_entry(DISABLE_OPTIMIZERS)
    reference, inputs = fp32_logits(folder)
    assert_close_to_fp32(reference, model(**inputs).logits.numpy())


def test_static_default_loads_with_layer_norm_unfused(tiny_dir, tmp_path):
    """Static INT8 stores the plain graph, whose LayerNorm and residual Add ONNX Runtime fuses when it loads."""
    folder = tiny_dir("text-classification")
    calibration = {"num_samples": len(SENTENCES), "sequence_length": 32}
    model = QuantModelForSequenceClassification.from_pretrained(
        folder, quantize=StaticQuantConfig(calibration=calibration), calibration_dataset=SENTENCES)
    assert model.quantization_recipe.details["unfused_at_load"] == list(UNFUSED_AT_LOAD)
    kept = _ops_after_load(onnx_file(model), model.model.get_session_options(), tmp_path)
    assert "LayerNormalization" in kept and not kept & FUSED_NORM_OPS
    reference, inputs = fp32_logits(folder)
    assert_close_to_fp32(reference, model(**inputs).logits.numpy())
    fused = QuantModelForSequenceClassification.from_pretrained(
        folder, quantize=StaticQuantConfig(calibration=calibration, fuse_layer_norm=True), calibration_dataset=SENTENCES)
    assert "unfused_at_load" not in fused.quantization_recipe.details
    assert "SkipLayerNormalization" in _ops_after_load(onnx_file(fused), fused.model.get_session_options(), tmp_path)


def test_session_entry_stops_onnx_runtime_fusing_at_load(tiny_dir, tmp_path):
    """On an FP32 graph ONNX Runtime fuses Add + LayerNormalization itself when it loads: the entry our loader adds
    must stop that (a wrongly joined list of names would disable nothing)."""
    folder = tiny_dir("text-classification")
    plain = QuantModelForSequenceClassification.from_pretrained(folder, quantize=None)
    unfused = tmp_path / "unfused.onnx"
    fuse_graph(onnx_file(plain), unfused, AutoConfig.from_pretrained(folder), fuse_norms=False)
    assert "LayerNormalization" in _ops(unfused) and not _ops(unfused) & FUSED_NORM_OPS
    assert FUSED_NORM_OPS <= _ops_after_load(unfused, onnxruntime.SessionOptions(), tmp_path)
    kept = _ops_after_load(unfused, unfused_session_options(UNFUSED_AT_LOAD), tmp_path)
    assert "LayerNormalization" in kept and not kept & FUSED_NORM_OPS


def test_caller_session_options_keep_the_optimizers_they_disabled():
    chosen = onnxruntime.SessionOptions()
    chosen.add_session_config_entry(DISABLE_OPTIMIZERS, "ConstantFolding;BiasGeluFusion")
    assert unfused_session_options(UNFUSED_AT_LOAD, chosen) is chosen
    assert chosen.get_session_config_entry(DISABLE_OPTIMIZERS) == "ConstantFolding;BiasGeluFusion;SkipLayerNormFusion"
    assert unfused_session_options(UNFUSED_AT_LOAD, chosen) is chosen  # a second load adds nothing
    assert chosen.get_session_config_entry(DISABLE_OPTIMIZERS) == "ConstantFolding;BiasGeluFusion;SkipLayerNormFusion"


@pytest.mark.parametrize("config_class", [DynamicQuantConfig, StaticQuantConfig])
def test_fuse_layer_norm_is_validated_and_round_trips(config_class):
    with pytest.raises(ConfigError, match="fuse_layer_norm"):
        config_class(fuse_layer_norm="yes")
    config = config_class(fuse_layer_norm=True)
    assert config_from_dict(config.to_dict()) == config
    assert config_class().fuse_layer_norm is False
