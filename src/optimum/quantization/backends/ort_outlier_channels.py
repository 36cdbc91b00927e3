"""Outlier channels of the FFN's second GEMM kept in FP32 before INT8, on ONNX Runtime graphs.

outlier_channels.py says why and which channels. Here each one is taken out of the INT8 path (W1 and b lose the
column, W2 the row) and computed by an FP32 side path added after the GEMM's bias Add.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .ort_smoothing import input_channel_amax
from .outlier_channels import outlier_channels, split_record

# Elementwise ops the activation between the FFN's GEMMs is made of: ORT's fused Gelu, or the exported erf GELU
# (Div, Erf, Add, Mul, Mul with scalar constants). A channel of their output depends on that channel of their input.
ELEMENTWISE_OPS = {"Gelu", "FastGelu", "QuickGelu", "Relu", "Sigmoid", "Tanh", "Erf", "Add", "Sub", "Mul", "Div", "Pow",
                   "Sqrt"}


@dataclass
class FeedForward:
    """GEMM1 -> [bias Add] -> activation -> GEMM2 (-> its bias Add, when there is one). The activation is one or more
    elementwise nodes (graph order) from `activation_input` (the bias Add's output, else GEMM1's) to GEMM2's input,
    their other inputs scalar constants."""

    first: onnx.NodeProto
    bias: str | None
    activation_input: str
    activation: list[onnx.NodeProto]
    second: onnx.NodeProto
    output_add: onnx.NodeProto | None


def _single_constant(node: onnx.NodeProto, initializers) -> tuple[str | None, str | None]:
    """(the constant input, the other input) of a two-input node with exactly one initializer input."""
    constants = [name for name in node.input if name in initializers]
    others = [name for name in node.input if name not in initializers]
    return (constants[0], others[0]) if len(constants) == 1 and len(others) == 1 else (None, None)


def _constants(graph: onnx.GraphProto) -> dict[str, int]:
    """Constant tensors (initializers and Constant node outputs) -> their number of elements."""
    sizes = {i.name: int(np.prod(i.dims)) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute:
            value = helper.get_attribute_value(node.attribute[0])
            sizes[node.output[0]] = int(np.prod(value.dims)) if isinstance(value, onnx.TensorProto) else 1
    return sizes


def _activation_nodes(output: str, producers: dict, consumers: dict, constants: dict[str, int], position: dict):
    """(input, nodes in graph order) of the elementwise nodes that compute `output` from one tensor; None if it is not
    so computed. A node belongs when it is an elementwise op whose constant inputs are scalars: a bias Add (a vector
    constant) or the GEMM before it is where the activation's input comes from. Nothing outside may read its tensors."""
    region: dict[str, onnx.NodeProto] = {}
    pending, sources = [output], set()
    while pending:
        name = pending.pop()
        node = producers.get(name)
        if (node is None or node.op_type not in ELEMENTWISE_OPS or len(node.output) != 1
                or any(constants.get(i, 1) > 1 for i in node.input if i in constants)):
            sources.add(name)
        elif node.name not in region:
            region[node.name] = node
            pending += [i for i in node.input if i and i not in constants]
    if len(sources) != 1 or not region:
        return None
    (source,) = sources
    inside = set(region)
    for node in region.values():
        if node.output[0] != output and any(c.name not in inside for c in consumers.get(node.output[0], [])):
            return None
    if any(c.name not in inside for c in consumers.get(source, [])):
        return None
    return source, sorted(region.values(), key=lambda n: position[n.name])


def feed_forwards(graph: onnx.GraphProto, skip: set[str]) -> list[FeedForward]:
    """Every GEMM1 -> [bias] -> activation -> GEMM2 chain whose weights and intermediate tensors nothing else uses,
    whose second GEMM is not in `skip` and whose output is not a graph output."""
    initializers = {i.name: tuple(i.dims) for i in graph.initializer}
    constants = _constants(graph)
    position = {node.name: i for i, node in enumerate(graph.node)}
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}

    def only_use(name: str) -> bool:
        return len(consumers.get(name, [])) == 1 and name not in graph_outputs

    def constant_weight_matmul(node) -> bool:
        return (node is not None and node.op_type == "MatMul" and len(node.input) == 2
                and node.input[1] in initializers and only_use(node.input[1]))

    found = []
    for second in graph.node:
        if not constant_weight_matmul(second) or second.name in skip:
            continue
        activation = _activation_nodes(second.input[0], producers, consumers, constants, position)
        if activation is None or not only_use(second.input[0]):
            continue
        activation_input, activation_nodes = activation
        if activation_input in graph_outputs:
            continue
        first, bias = producers.get(activation_input), None
        if first is not None and first.op_type == "Add":
            bias, other = _single_constant(first, initializers)
            if bias is None or len(initializers[bias]) != 1 or not only_use(bias) or not only_use(other):
                continue
            first = producers.get(other)
        if not constant_weight_matmul(first):
            continue
        if second.output[0] in graph_outputs:
            continue
        after = consumers.get(second.output[0], [])
        # The side path is added after the GEMM's bias Add where it can be (not a graph output: names stay).
        output_add = after[0] if (len(after) == 1 and after[0].op_type == "Add" and _single_constant(
            after[0], initializers)[0] and after[0].output[0] not in graph_outputs) else None
        found.append(FeedForward(first, bias, activation_input, activation_nodes, second, output_add))
    return found


def _side_path_name(second: onnx.NodeProto) -> str:
    """'/bert/encoder/layer.0/output/dense/MatMul' -> '/bert/encoder/layer.0/output/dense/outlier_channels', so the
    side path's module name is the GEMM's followed by `.outlier_channels`."""
    parent = second.name.rsplit("/", 1)[0] if "/" in second.name else second.name
    return f"{parent}/outlier_channels"


def _split(graph: onnx.GraphProto, chain: FeedForward, channels: list[int], initializers: dict) -> list[str]:
    """Move `channels` of `chain` into an FP32 side path; returns the side path's node names."""
    w_in = numpy_helper.to_array(initializers[chain.first.input[1]])
    w_out = numpy_helper.to_array(initializers[chain.second.input[1]])
    kept = np.setdiff1d(np.arange(w_out.shape[0]), channels)
    prefix = _side_path_name(chain.second)
    new_initializers = [numpy_helper.from_array(np.ascontiguousarray(w_in[:, channels]), f"{prefix}/weight_in"),
                        numpy_helper.from_array(np.ascontiguousarray(w_out[channels, :]), f"{prefix}/weight_out")]
    initializers[chain.first.input[1]].CopyFrom(
        numpy_helper.from_array(np.ascontiguousarray(w_in[:, kept]), chain.first.input[1]))
    initializers[chain.second.input[1]].CopyFrom(
        numpy_helper.from_array(np.ascontiguousarray(w_out[kept, :]), chain.second.input[1]))

    nodes = [helper.make_node("MatMul", [chain.first.input[0], f"{prefix}/weight_in"], [f"{prefix}/pre_bias"],
                              name=f"{prefix}/MatMul_in")]
    pre_activation = f"{prefix}/pre_bias"
    if chain.bias is not None:
        bias = numpy_helper.to_array(initializers[chain.bias])
        new_initializers.append(numpy_helper.from_array(np.ascontiguousarray(bias[channels]), f"{prefix}/bias"))
        initializers[chain.bias].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(bias[kept]), chain.bias))
        nodes.append(helper.make_node("Add", [pre_activation, f"{prefix}/bias"], [f"{prefix}/pre_activation"],
                                      name=f"{prefix}/Add_bias"))
        pre_activation = f"{prefix}/pre_activation"
    renamed = {chain.activation_input: pre_activation}
    for index, node in enumerate(chain.activation):  # the same elementwise nodes on the side path's channels
        clone = onnx.NodeProto()
        clone.CopyFrom(node)
        clone.name = f"{prefix}/{node.op_type}" if len(chain.activation) == 1 else f"{prefix}/{node.op_type}_{index}"
        for i, name in enumerate(clone.input):
            clone.input[i] = renamed.get(name, name)
        renamed[node.output[0]] = clone.output[0] = f"{clone.name}_output"
        nodes.append(clone)
    nodes.append(helper.make_node("MatMul", [renamed[chain.second.input[0]], f"{prefix}/weight_out"],
                                  [f"{prefix}/output"], name=f"{prefix}/MatMul_out"))
    # Added after the GEMM's bias Add, so ONNX Runtime still fuses the INT8 GEMM with its bias.
    tail = (chain.output_add or chain.second).output[0]
    total = f"{prefix}/sum"
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == tail:
                node.input[i] = total
    nodes.append(helper.make_node("Add", [tail, f"{prefix}/output"], [total], name=f"{prefix}/Add"))
    graph.initializer.extend(new_initializers)
    position = list(graph.node).index(chain.output_add or chain.second) + 1
    for offset, node in enumerate(nodes):
        graph.node.insert(position + offset, node)
    # The intermediate tensors lost channels: drop their recorded shapes rather than leave wrong ones.
    resized = {chain.first.output[0], chain.activation_input, *(n.output[0] for n in chain.activation)}
    stale = [vi for vi in graph.value_info if vi.name in resized]
    for vi in stale:
        graph.value_info.remove(vi)
    return [node.name for node in nodes]


def split_outlier_channels(model: onnx.ModelProto, feeds: list[dict], ratio: float, skip: set[str]) -> dict:
    """Split the outlier channels of every feed-forward chain of `model` (in place) into FP32 side paths.

    Returns the recipe's record: `side_path_nodes` (to keep out of quantization) and, per split GEMM, the channels,
    their largest values and the largest value left in the INT8 path.
    """
    chains = feed_forwards(model.graph, skip)
    record: dict = {"ratio": ratio, "split": {}, "side_path_nodes": []}
    if not chains:
        return record
    amax = input_channel_amax(model, sorted({c.second.input[0] for c in chains}), feeds, "max")
    initializers = {i.name: i for i in model.graph.initializer}
    for chain in chains:
        channel_amax = amax[chain.second.input[0]]
        channels = outlier_channels(channel_amax, ratio)
        if not channels:
            continue
        record["side_path_nodes"] += _split(model.graph, chain, channels, initializers)
        record["split"][chain.second.name] = split_record(channel_amax, channels)
    return record

