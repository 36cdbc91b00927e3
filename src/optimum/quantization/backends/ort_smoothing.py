"""Activation smoothing before dynamic or static INT8 (SmoothQuant, Xiao et al. 2023) on ONNX Runtime graphs.

Dynamic INT8 gives each activation tensor one scale. A few LayerNorm output channels of BERT-family models are
tens of times larger than the rest, so that scale leaves the other channels a handful of levels. For every GEMM fed
by a LayerNorm (fused `Attention`'s Q/K/V, the FFN input), input channel j is divided by
s_j = amax_j^alpha / wmax_j^(1 - alpha) (a `Mul` before the GEMM) and row j of the weight multiplied by it: the FP32
graph computes the same function, and the INT8 one shares the range between activation and weight. The LayerNorm
output also feeds the residual branch, which is why the scale is a `Mul` of its own and not folded into LayerNorm.
GELU- and attention-fed GEMMs are left alone: smoothing them lost SQuAD F1 on fine-tuned MiniLM (benchmarks/RESULTS.md).
Dynamic INT8 smooths ONNX Runtime's fused graph; static INT8 the plain graph, where Q, K and V share one scale. In a
text classifier's cut last layer (`head_token.py`) Q reads a Slice of the LayerNorm output, the [CLS] row: its GEMM
gets a scale of its own, measured on that row.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

# Ops whose first output is a normalised activation (ORT's fused forms and the plain op).
LAYER_NORM_OPS = {"LayerNormalization", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization",
                  "EmbedLayerNormalization", "SimplifiedLayerNormalization"}
SMOOTHED_OPS = {"Attention", "MatMul"}


def _reads_layer_norm(tensor: str, producers: dict[str, onnx.NodeProto]) -> bool:
    """Whether `tensor` is a LayerNorm's output, or a Slice of one: the first token's row that a text classifier's
    cut last layer takes its queries from (`head_token.py`). The Mul scales whatever tensor the GEMM reads, so
    the function is unchanged either way."""
    producer = producers.get(tensor)
    if producer is not None and producer.op_type == "Slice":
        producer = producers.get(producer.input[0])
    return getattr(producer, "op_type", None) in LAYER_NORM_OPS


def smoothing_targets(graph: onnx.GraphProto, skip: set[str]) -> list[onnx.NodeProto]:
    """GEMMs with a constant weight of their own whose activation is a LayerNorm's output (or a row slice of one),
    minus `skip`."""
    initializers = {i.name for i in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output[:1]}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    return [
        node for node in graph.node
        if node.op_type in SMOOTHED_OPS and node.name not in skip and len(node.input) > 1
        and node.input[1] in initializers and uses[node.input[1]] == 1  # a shared (tied) weight cannot be rescaled
        and _reads_layer_norm(node.input[0], producers)
    ]


# How each channel's range is summarised over the calibration texts (one feed each): SmoothQuant's largest value
# over all of them, or the mean of each text's largest value, which does not grow with the number of texts
# (benchmarks/RESULTS.md, "How much the smoothing texts move SQuAD F1").
SMOOTHING_STATISTICS = {"max": np.max, "mean-max": np.mean}


def input_channel_amax(
    model: onnx.ModelProto, tensors: list[str], feeds: list[dict], statistic: str = "max"
) -> dict[str, np.ndarray]:
    """|value| per last-axis channel of each tensor (FP32 ONNX Runtime run): its largest over every feed
    (`statistic="max"`) or the mean over the feeds of each feed's largest (`"mean-max"`)."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for name in tensors:
        if name not in known:
            probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    per_feed: dict[str, list[np.ndarray]] = {name: [] for name in tensors}
    for feed in feeds:
        outputs = session.run(tensors, {k: v for k, v in feed.items() if k in inputs})
        for name, value in zip(tensors, outputs):
            per_feed[name].append(np.abs(value.reshape(-1, value.shape[-1])).max(axis=0))
    reduce = SMOOTHING_STATISTICS[statistic]
    return {name: reduce(np.stack(maxima), axis=0) for name, maxima in per_feed.items() if maxima}


def smooth_graph(
    model: onnx.ModelProto, feeds: list[dict], alpha: float, skip: set[str], statistic: str = "max"
) -> dict:
    """Rescale every smoothing target of `model` in place; returns what was done (for the recipe).

    GEMMs reading the same tensor (an unfused graph's Q, K and V) share one scale and one `Mul`, with the weight
    maximum taken over all of them (as SmoothQuant does for QKV): the tensor is still quantized once.
    """
    graph = model.graph
    targets = smoothing_targets(graph, skip)
    if not targets:
        return {"alpha": alpha, "statistic": statistic, "smoothed_nodes": [], "calibration_samples": len(feeds)}
    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in targets:
        groups.setdefault(node.input[0], []).append(node)
    amax = input_channel_amax(model, sorted(groups), feeds, statistic)
    initializers = {i.name: i for i in graph.initializer}
    ratios = []
    for tensor, nodes in groups.items():
        weights = [numpy_helper.to_array(initializers[n.input[1]]).astype(np.float32) for n in nodes]
        weight_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        # Both factors floored: an all-zero channel (padding, a dead unit) must not give 0 or inf.
        scale = (np.maximum(amax[tensor], 1e-5) ** alpha / np.maximum(weight_max, 1e-5) ** (1 - alpha)).astype(np.float32)
        for node, weight in zip(nodes, weights):
            initializers[node.input[1]].CopyFrom(numpy_helper.from_array(weight * scale[:, None], node.input[1]))
        first = nodes[0].name
        inverse = numpy_helper.from_array((1.0 / scale).astype(np.float32), f"{first}_smoothing_inverse_scale")
        graph.initializer.append(inverse)
        smoothed = f"{first}_smoothed_input"
        mul = helper.make_node("Mul", [tensor, inverse.name], [smoothed], name=f"{first}_smoothing")
        graph.node.insert(min(list(graph.node).index(n) for n in nodes), mul)
        for node in nodes:
            node.input[0] = smoothed
        ratios.append(float(scale.max() / scale.min()))
    return {"alpha": alpha, "statistic": statistic, "smoothed_nodes": [n.name for n in targets],
            "calibration_samples": len(feeds),
            "largest_scale_ratio": round(max(ratios), 2)}
