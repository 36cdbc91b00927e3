"""Outlier channels of the FFN's second GEMM kept in float before NNCF's static INT8, on OpenVINO models.

outlier_channels.py says why and which channels. OpenVINO's static INT8 quantizes the FFN output GEMMs (ONNX
Runtime's old static default kept them FP32), and there the outlier channels cost SST-2 agreement most: with those
GEMMs float, fine-tuned MiniLM agreed with FP32 on 99.40% of 5,000 unseen sentences instead of 99.00%
(benchmarks/RESULTS.md). Here each outlier channel leaves the INT8 GEMMs (W1's output channel and b's entry, W2's
input channel) for a float side path added after the second GEMM's bias Add; the side path's nodes go to NNCF's
ignored scope.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import openvino as ov
import openvino.opset13 as ops
from openvino.utils.node_factory import NodeFactory

from .openvino_precision import INT8_COMPUTE
from .outlier_channels import outlier_channels, split_record

# Elementwise ops the activation between the FFN's GEMMs is made of (OpenVINO's Gelu, or a decomposed one): a channel
# of their output depends on that channel of their input, when their other inputs are scalar constants.
ELEMENTWISE_OPS = {"Gelu", "Relu", "Sigmoid", "Tanh", "Swish", "HSwish", "Erf", "Add", "Subtract", "Multiply",
                   "Divide", "Power", "Sqrt"}


@dataclass
class FeedForward:
    """GEMM1 -> [bias Add] -> activation -> GEMM2 (-> its bias Add). `activation` holds the elementwise nodes in
    graph order, from `activation_input` (the bias Add's output, else GEMM1's) to GEMM2's input."""

    first: ov.Node
    bias: ov.Node | None
    activation_input: ov.Output
    activation: list[ov.Node]
    second: ov.Node
    tail: ov.Output  # where the side path is added: the bias Add's output after GEMM2, else GEMM2's


def _constant(value: ov.Output) -> np.ndarray | None:
    """The value of a constant input (a Constant, or a Convert that decompresses an FP16-stored one), else None."""
    node = value.get_node()
    if node.get_type_name() == "Convert" and node.input_value(0).get_node().get_type_name() == "Constant":
        node = node.input_value(0).get_node()
    return np.asarray(node.get_data(), dtype=np.float32) if node.get_type_name() == "Constant" else None


def _consumers(value: ov.Output) -> list[ov.Node]:
    return [target.get_node() for target in value.get_target_inputs()]


def _only_use(value: ov.Output) -> bool:
    consumers = _consumers(value)
    return len(consumers) == 1 and consumers[0].get_type_name() != "Result"


def _weight_matmul(node: ov.Node) -> bool:
    """A MatMul of an activation by a constant 2-D weight that nothing else reads."""
    if node.get_type_name() != "MatMul" or node.get_input_size() != 2:
        return False
    weight = _constant(node.input_value(1))
    return weight is not None and weight.ndim == 2 and _only_use(node.input_value(1))


def _weight_axis(matmul: ov.Node, output_features: bool) -> int:
    """The axis of a MatMul's constant weight that indexes its output features (True) or its input features (False):
    the FFN's inner channels are GEMM1's output features and GEMM2's input features."""
    transposed = bool(matmul.get_attributes()["transpose_b"])  # weight stored [out, in] rather than [in, out]
    return int(transposed != output_features)


def _bias(node: ov.Node, channels: int) -> tuple[np.ndarray | None, ov.Output | None]:
    """(bias, the other input) of an Add with one constant input holding one value per inner channel."""
    if node.get_type_name() != "Add":
        return None, None
    for constant_port in (0, 1):
        value = _constant(node.input_value(constant_port))
        if value is not None and value.size == channels and value.shape[-1] == channels:
            other = node.input_value(1 - constant_port)
            return (value, other) if _constant(other) is None else (None, None)
    return None, None


def _activation(output: ov.Output, position: dict) -> tuple[ov.Output, list[ov.Node]] | None:
    """(input, nodes in graph order) of the elementwise nodes that compute `output` from one tensor, whose other
    inputs are scalar constants and whose tensors nothing outside reads; None if it is not so computed."""
    region: dict[str, ov.Node] = {}
    pending, sources = [output], {}
    while pending:
        value = pending.pop()
        node = value.get_node()
        constants = [_constant(v) for v in node.input_values()]
        if (node.get_type_name() not in ELEMENTWISE_OPS or node.get_output_size() != 1
                or any(c is not None and c.size > 1 for c in constants) or all(c is not None for c in constants)):
            sources[(node.get_name(), value.get_index())] = value
        elif node.get_name() not in region:
            region[node.get_name()] = node
            pending += [v for v, c in zip(node.input_values(), constants) if c is None]
    if len(sources) != 1 or not region:
        return None
    (source,) = sources.values()
    final = (output.get_node().get_name(), output.get_index())
    for node in region.values():
        if (node.get_name(), 0) != final and any(c.get_name() not in region for c in _consumers(node.output(0))):
            return None
    if any(c.get_name() not in region for c in _consumers(source)):
        return None
    return source, sorted(region.values(), key=lambda n: position[n.get_name()])


def feed_forwards(model: ov.Model, skip: set[str]) -> list[FeedForward]:
    """Every GEMM1 -> [bias] -> activation -> GEMM2 chain whose weights and intermediate tensors nothing else uses and
    whose second GEMM's friendly name is not in `skip`."""
    ordered = model.get_ordered_ops()
    position = {op.get_name(): i for i, op in enumerate(ordered)}
    found = []
    for second in ordered:
        if not _weight_matmul(second) or second.get_friendly_name() in skip or not _only_use(second.input_value(0)):
            continue
        activation = _activation(second.input_value(0), position)
        if activation is None:
            continue
        activation_input, nodes = activation
        w_out = _constant(second.input_value(1))
        channels = w_out.shape[_weight_axis(second, False)]
        first, bias = activation_input.get_node(), None
        if first.get_type_name() == "Add":
            bias_value, other = _bias(first, channels)
            if bias_value is None or not _only_use(other):
                continue
            bias, first = first, other.get_node()
        if not _weight_matmul(first) or _constant(first.input_value(1)).shape[_weight_axis(first, True)] != channels:
            continue
        after = _consumers(second.output(0))
        outputs = w_out.shape[_weight_axis(second, True)]
        # The side path is added after GEMM2's bias Add where there is one, so the runtime still fuses GEMM and bias.
        tail = after[0].output(0) if len(after) == 1 and _bias(after[0], outputs)[0] is not None else second.output(0)
        found.append(FeedForward(first, bias, activation_input, nodes, second, tail))
    return found


def activation_channel_amax(model: ov.Model, values: list[ov.Output], feeds: list[dict]) -> list[np.ndarray]:
    """The largest |value| of each last-axis channel of `values` over all feeds, computed in f32 with those values as
    extra outputs of `model` for the time of the measurement (the plugin compiles a copy)."""
    first = len(model.outputs)
    model.add_outputs(values)
    try:
        request = ov.Core().compile_model(model, "CPU", INT8_COMPUTE).create_infer_request()
    finally:
        for result in model.get_results()[first:]:
            model.remove_result(result)
    amax = [np.zeros(v.get_partial_shape()[-1].get_length(), np.float32) for v in values]
    for feed in feeds:
        outputs = request.infer(feed)
        for i in range(len(values)):
            value = np.abs(np.asarray(outputs[first + i]))
            amax[i] = np.maximum(amax[i], value.reshape(-1, value.shape[-1]).max(axis=0))
    return amax


def _take(value: np.ndarray, channels, axis: int) -> ov.Node:
    return ops.constant(np.ascontiguousarray(np.take(value, channels, axis=axis)))


def _split(chain: FeedForward, channels: list[int], channel_count: int) -> list[str]:
    """Move `channels` of `chain` into a float side path; returns the side path's friendly names."""
    kept = np.setdiff1d(np.arange(channel_count), channels)
    # The side path's module name is the GEMM's plus '.outlier_channels' (nncf_ptq.module_name_of reads it).
    prefix = chain.second.get_friendly_name().split("/", 1)[0] + ".outlier_channels"
    w_in, w_out = _constant(chain.first.input_value(1)), _constant(chain.second.input_value(1))
    in_axis, out_axis = _weight_axis(chain.first, True), _weight_axis(chain.second, False)
    side = [ops.matmul(chain.first.input_value(0), _take(w_in, channels, in_axis), False,
                       bool(chain.first.get_attributes()["transpose_b"]))]
    mapped = {}
    if chain.bias is not None:
        port = 0 if _constant(chain.bias.input_value(0)) is not None else 1
        bias = _constant(chain.bias.input_value(port))
        side.append(ops.add(side[-1], _take(bias, channels, bias.ndim - 1)))
        chain.bias.input(port).replace_source_output(_take(bias, kept, bias.ndim - 1).output(0))
    mapped[chain.activation_input.get_node().get_name(), chain.activation_input.get_index()] = side[-1].output(0)
    for node in chain.activation:  # the same elementwise nodes on the side path's channels
        inputs = [mapped.get((v.get_node().get_name(), v.get_index()), v) for v in node.input_values()]
        clone = NodeFactory(node.get_type_info().version_id).create(node.get_type_name(), inputs, node.get_attributes())
        mapped[node.get_name(), 0] = clone.output(0)
        side.append(clone)
    activation_output = chain.second.input_value(0)
    side.append(ops.matmul(mapped[activation_output.get_node().get_name(), activation_output.get_index()],
                           _take(w_out, channels, out_axis), False, bool(chain.second.get_attributes()["transpose_b"])))
    chain.first.input(1).replace_source_output(_take(w_in, kept, in_axis).output(0))
    chain.second.input(1).replace_source_output(_take(w_out, kept, out_axis).output(0))
    targets = list(chain.tail.get_target_inputs())  # before the Add below becomes one
    total = ops.add(chain.tail, side[-1])
    side.append(total)
    for target in targets:
        target.replace_source_output(total.output(0))
    for index, node in enumerate(side):
        node.set_friendly_name(f"{prefix}/{node.get_type_name()}_{index}")
    return [node.get_friendly_name() for node in side]


def split_outlier_channels(model: ov.Model, feeds: list[dict], ratio: float, skip: set[str]) -> dict:
    """Split the outlier channels of every feed-forward chain of `model` (in place) into float side paths.

    Returns the recipe's record: `side_path_nodes` (for NNCF's ignored scope) and, per split GEMM, the channels,
    their largest values and the largest value left in the INT8 path.
    """
    chains = feed_forwards(model, skip)
    record: dict = {"ratio": ratio, "split": {}, "side_path_nodes": []}
    if not chains:
        return record
    amax = activation_channel_amax(model, [chain.second.input_value(0) for chain in chains], feeds)
    for chain, channel_amax in zip(chains, amax):
        channels = outlier_channels(channel_amax, ratio)
        if channels:
            record["side_path_nodes"] += _split(chain, channels, channel_amax.size)
            record["split"][chain.second.get_friendly_name()] = split_record(channel_amax, channels)
    if record["split"]:
        model.validate_nodes_and_infer_types()
    return record
