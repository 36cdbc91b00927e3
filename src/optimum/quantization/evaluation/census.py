"""Count what a quantized graph really holds, so tests and reports can say "INT8" with evidence."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

# ONNX operators that only appear when something was quantized.
INT8_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
        "QLinearMatMul",
        "QAttention",
        "QGemm",
        "QLinearConv",
        "ConvInteger",
        "MatMulNBits",
    }
)


def onnx_op_counts(model) -> dict[str, int]:
    """Operator type -> count over the main graph of an ONNX model (path or ModelProto)."""
    import onnx

    if isinstance(model, (str, Path)):
        model = onnx.load(str(model), load_external_data=False)
    return dict(Counter(node.op_type for node in model.graph.node))


def int8_op_counts(model) -> dict[str, int]:
    return {op: n for op, n in onnx_op_counts(model).items() if op in INT8_OPS}


# Element types of stored weights that mean "quantized" in an OpenVINO IR.
LOW_PRECISION_TYPES = frozenset({"i8", "u8", "i4", "u4", "nf4", "f8e4m3", "f8e5m2"})


def openvino_quantized_counts(model) -> dict[str, int]:
    """What an OpenVINO IR (path or `ov.Model`) holds that only quantization puts there.

    `FakeQuantize`: static INT8 nodes; `weights_<type>`: constants stored in low precision (NNCF INT8
    weights of a static model, or compressed weights of a weight-only model).
    """
    import openvino as ov

    if isinstance(model, (str, Path)):
        model = ov.Core().read_model(str(model))
    counts: Counter = Counter()
    for op in model.get_ops():
        kind = op.get_type_name()
        if kind == "FakeQuantize":
            counts[kind] += 1
        elif kind == "Constant":
            element = op.get_output_element_type(0).get_type_name()
            if element in LOW_PRECISION_TYPES:
                counts[f"weights_{element}"] += 1
    return dict(counts)


def openvino_runtime_precisions(compiled, layer_types=("FullyConnected", "MatMul", "Convolution")) -> dict[str, int]:
    """Which kernels a compiled model runs: `"<layer> <runtimePrecision> <primitiveType>"` -> count.

    Read after at least one inference: with dynamic shapes the CPU plugin picks primitives on first run.
    E.g. "FullyConnected i8 brgemm_avx512_amx" (INT8 path) vs "FullyConnected f32 brgemm_avx2_f32".
    """
    counts: Counter = Counter()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        if layer.startswith(layer_types):
            precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
            primitive = info["primitiveType"].astype(str) if "primitiveType" in info else "?"
            counts[f"{layer} {precision} {primitive}"] += 1
    return dict(sorted(counts.items()))
