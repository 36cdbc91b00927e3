"""Pair-safe 8-bit weights: no int16 pair saturation in ONNX Runtime's AVX2 u8 x s8 kernels, and close to FP32."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_onnxruntime_backend import assert_close_to_fp32, fp32_logits, onnx_file

from optimum.quantization import DynamicQuantConfig, QuantModelForSequenceClassification, StaticQuantConfig
from optimum.quantization.configuration import config_from_dict
from optimum.quantization.backends.ort_pair_safe import GEMM_WEIGHT_INPUTS, PAIR_LIMIT, pair_safe_quantize, worst_pair_sums
from optimum.quantization.errors import ConfigError
from optimum.quantization.hardware import cpu_info

K, N = 256, 64
# Relative error of the integer GEMM against the same weights dequantized and multiplied in float.
EXACT_RTOL = 1e-5


def integer_gemm(q: np.ndarray, scale: np.ndarray):
    """ORT's DynamicQuantizeMatMul (u8 activations x s8 weights, MLAS kernels) over a fixed weight."""
    graph = helper.make_graph(
        [helper.make_node("DynamicQuantizeMatMul", ["A", "B", "scale", "zero"], ["Y"], domain="com.microsoft")],
        "gemm",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [None, q.shape[0]])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, q.shape[1]])],
        [numpy_helper.from_array(q, "B"), numpy_helper.from_array(scale.astype(np.float32), "scale"),
         numpy_helper.from_array(np.zeros(q.shape[1], np.int8), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda a: session.run(None, {"A": a})[0]


def worst_case_error(q, scale):
    """Largest relative error over inputs that quantize to u8 255 (zero point 0): the saturating case."""
    activations = np.ones((2, q.shape[0]), np.float32)
    activations[:, -1] = 0.0
    got = integer_gemm(q, scale)(activations)
    expected = activations @ (q.astype(np.float32) * scale)
    return float(np.abs(got - expected).max() / np.abs(expected).max())


@pytest.fixture(scope="module")
def heavy_tailed_weight():
    return np.random.default_rng(0).standard_t(3, size=(K, N)).astype(np.float32)


def test_pair_safe_weights_never_saturate(heavy_tailed_weight):
    q, scale = pair_safe_quantize(heavy_tailed_weight)
    assert worst_pair_sums(q).max() <= PAIR_LIMIT and np.abs(q).max() <= 127
    assert worst_case_error(q, scale) < EXACT_RTOL
    # Finer than 7-bit weights: the mean scale is well under 2x the plain 8-bit scale.
    assert np.mean(scale * 127 / np.abs(heavy_tailed_weight).max(axis=0)) < 1.5


def test_plain_8bit_weights_saturate_without_vnni(heavy_tailed_weight):
    """The contrast that makes the test above meaningful: it only shows on CPUs without VNNI."""
    if cpu_info().has_vnni:
        pytest.skip("this CPU has VNNI: its u8 x s8 products accumulate in 32 bits and cannot saturate "
                    "(tests/test_isa_emulation.py runs this test on AVX2 code paths where the CPU allows)")
    scale = np.abs(heavy_tailed_weight).max(axis=0) / 127
    q = np.clip(np.rint(heavy_tailed_weight / scale), -127, 127).astype(np.int8)
    assert worst_pair_sums(q).max() > PAIR_LIMIT
    assert worst_case_error(q, scale) > 0.05


def test_pair_safe_dynamic_model_is_close_to_fp32_and_records_it(tiny_dir):
    folder = tiny_dir("text-classification")
    model = QuantModelForSequenceClassification.from_pretrained(folder, quantize=DynamicQuantConfig(reduce_range="pair-safe"))
    graph = onnx.load(str(onnx_file(model)))
    weights = {init.name: numpy_helper.to_array(init) for init in graph.graph.initializer}
    gemms = [n for n in graph.graph.node if n.op_type in GEMM_WEIGHT_INPUTS]
    assert gemms
    for node in gemms:
        assert worst_pair_sums(weights[node.input[GEMM_WEIGHT_INPUTS[node.op_type]]]).max() <= PAIR_LIMIT, node.name
    details = model.quantization_recipe.details
    assert details["weight_range"] == "pair-safe" and details["pair_safe_weights"] == len(gemms)
    assert 1.0 <= details["pair_safe_mean_scale_vs_8bit"] < 2.0
    reference, inputs = fp32_logits(folder)
    assert_close_to_fp32(reference, model(**inputs).logits.numpy())


def test_pair_safe_is_refused_where_it_cannot_apply():
    with pytest.raises(ConfigError, match="reduce_range"):
        StaticQuantConfig(reduce_range="pair-safe")
    with pytest.raises(ConfigError, match="reduce_range"):
        DynamicQuantConfig(reduce_range="7bit")
    assert config_from_dict(DynamicQuantConfig(reduce_range="pair-safe").to_dict()).reduce_range == "pair-safe"
