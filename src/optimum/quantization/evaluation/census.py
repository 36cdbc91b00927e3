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
