"""ONNX Runtime static INT8 keeps attention's activation x activation products (Q x K^T, P x V) in FP32 unless
asked (StaticQuantConfig.activation_matmuls="auto"); the OpenVINO side is in test_openvino_backend.py."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import SENTENCES
from onnx import TensorProto, helper, numpy_helper
from test_onnxruntime_backend import assert_close_to_fp32, fp32_logits, onnx_file

from optimum.quantization import QuantModelForSequenceClassification, StaticQuantConfig
from optimum.quantization.backends.onnxruntime import activation_matmuls
from optimum.quantization.configuration import config_from_dict
from optimum.quantization.errors import ConfigError

LAYERS = 2  # the tiny classifier's
CONFIG = StaticQuantConfig(calibration={"num_samples": len(SENTENCES), "sequence_length": 32})


def test_activation_matmuls_are_the_matmuls_without_a_constant_input():
    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones((4, 4), np.float32))),
         helper.make_node("MatMul", ["x", "w"], ["a"], name="by_initializer"),
         helper.make_node("MatMul", ["a", "c"], ["b"], name="by_constant_node"),
         helper.make_node("Transpose", ["w"], ["wt"], name="transpose_weight"),
         helper.make_node("MatMul", ["b", "wt"], ["d"], name="by_transposed_weight"),
         helper.make_node("MatMul", ["a", "d"], ["y"], name="scores")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])], [weight],
    )
    assert activation_matmuls(helper.make_model(graph)) == ["scores"]


def test_ort_static_keeps_activation_matmuls_fp32_by_default_and_quantizes_them_on_request(tiny_dir):
    folder = tiny_dir("text-classification")
    reference, inputs = fp32_logits(folder)
    default = QuantModelForSequenceClassification.from_pretrained(folder, quantize=CONFIG, calibration_dataset=SENTENCES)
    details = default.quantization_recipe.details["activation_matmuls"]
    assert details["quantized"] is False and len(details["kept_float"]) == 2 * LAYERS  # Q x K^T and P x V per layer
    assert set(details["kept_float"]) <= set(default.quantization_recipe.details["excluded_nodes"])
    assert not any(_dequantized_inputs(default, details["kept_float"]).values())
    assert_close_to_fp32(reference, default(**inputs).logits.numpy())

    quantized = QuantModelForSequenceClassification.from_pretrained(
        folder, quantize=CONFIG.replace(activation_matmuls=True), calibration_dataset=SENTENCES)
    assert quantized.quantization_recipe.details["activation_matmuls"] == {"quantized": True, "kept_float": []}
    assert all(_dequantized_inputs(quantized, details["kept_float"]).values())


def _dequantized_inputs(model, names) -> dict[str, bool]:
    """Each named MatMul of the saved graph -> whether every input comes from a DequantizeLinear."""
    graph = onnx.load(str(onnx_file(model))).graph
    producers = {out: node.op_type for node in graph.node for out in node.output}
    found = {node.name: all(producers.get(i) == "DequantizeLinear" for i in node.input)
             for node in graph.node if node.name in names}
    assert set(found) == set(names), f"missing from the saved graph: {set(names) - set(found)}"
    return found


@pytest.mark.parametrize("value", [None, "AUTO", 1, "false"])
def test_bad_activation_matmuls(value):
    with pytest.raises(ConfigError, match="activation_matmuls"):
        StaticQuantConfig(activation_matmuls=value)


def test_activation_matmuls_round_trips_and_auto_takes_the_backends_default():
    assert StaticQuantConfig().activation_matmuls == "auto"
    for value in (True, False, "auto"):
        config = StaticQuantConfig(activation_matmuls=value)
        assert config_from_dict(config.to_dict()) == config
    assert StaticQuantConfig().quantize_activation_matmuls(False) is False
    assert StaticQuantConfig(activation_matmuls=True).quantize_activation_matmuls(False) is True
