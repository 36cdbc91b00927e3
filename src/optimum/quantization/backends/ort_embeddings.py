"""Embedding tables of a dynamic INT8 graph stored in 8 bits with one scale per row.

ONNX Runtime's dynamic quantizer turns a fused `EmbedLayerNormalization` into `QEmbedLayerNormalization`, which
keeps the word and position tables (and LayerNorm's gamma and beta) as u8 with one scale per tensor: the widest
row sets the step for all 30,522 rows. Here the fused op stays FP32 and its word and position tables are read
through `DequantizeLinear` (axis 0) from u8 copies with one scale and zero point per row; the file is as small
(+0.15 MB of scales for BERT's vocabulary).

ONNX Runtime folds those `DequantizeLinear` nodes into FP32 tables when the session is created only with
`session.disable_quant_qdq=1` (its constant folding skips DequantizeLinear otherwise, to keep QDQ pairs for
fusion; a dynamic graph has none). `FOLD_DEQUANTIZE` is that entry: our loader sets it for these graphs.
A plain ONNX Runtime session without it gives the same outputs but dequantizes the tables on every run.
"""

from __future__ import annotations

from typing import Collection

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import QuantizationError
from .ort_session import with_config_entry

EMBEDDING_OP = "EmbedLayerNormalization"
# Inputs 2 and 3 are the word and position tables; token types (2 rows) and gamma/beta (one row) stay FP32.
TABLE_INPUTS = (2, 3)
FOLD_DEQUANTIZE = ("session.disable_quant_qdq", "1")
PER_AXIS_DEQUANTIZE_OPSET = 13


def has_per_row_tables(model: onnx.ModelProto) -> bool:
    """Whether `store_tables_per_row` can rewrite this graph: a fused embedding op and per-axis DequantizeLinear."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return opset >= PER_AXIS_DEQUANTIZE_OPSET and any(n.op_type == EMBEDDING_OP for n in model.graph.node)


def folding_session_options(options=None):
    """Session options with FOLD_DEQUANTIZE, added to the caller's unless they set it (`ort_session`)."""
    return with_config_entry(options, *FOLD_DEQUANTIZE, "so ONNX Runtime folds the per-row embedding tables once")


def quantize_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric u8 with one scale and zero point per row; each row's range includes 0, as ONNX asks."""
    low = np.minimum(table.min(axis=1), 0.0)
    high = np.maximum(table.max(axis=1), 0.0)
    scale = ((high - low) / 255.0).astype(np.float32)
    scale[scale == 0] = 1.0  # an all-zero row: any scale represents it exactly
    zero_point = np.clip(np.round(-low / scale), 0, 255).astype(np.uint8)
    quantized = np.clip(np.round(table / scale[:, None]) + zero_point[:, None], 0, 255).astype(np.uint8)
    return quantized, scale, zero_point


def store_tables_per_row(model: onnx.ModelProto, excluded: Collection[str] = ()) -> list[str]:
    """Rewrite in place every FP32 word/position table of the not-excluded `EmbedLayerNormalization` nodes as
    per-row u8 read through `DequantizeLinear`; returns the names of the tables rewritten."""
    if not has_per_row_tables(model):
        return []
    graph = model.graph
    taken = {name for node in graph.node for name in (*node.output, node.name)} | {i.name for i in graph.initializer}
    graph_inputs = {i.name: i for i in graph.input}
    initializers = {init.name: init for init in graph.initializer}
    rewritten, dequantize_nodes = [], []
    for node in graph.node:
        if node.op_type != EMBEDDING_OP or node.name in excluded:
            continue
        for index in TABLE_INPUTS:
            name = node.input[index] if index < len(node.input) else ""
            init = initializers.get(name)
            if init is None or init.data_type != onnx.TensorProto.FLOAT or len(init.dims) != 2:
                continue
            new_names = [f"{name}_per_row_{part}" for part in ("quantized", "scale", "zero_point")]
            new_names += [f"{name}_dequantized", f"{name}_DequantizeLinear"]
            if taken & set(new_names):
                raise QuantizationError(f"Cannot store {name} per row: the graph already uses one of {new_names}.")
            quantized, scale, zero_point = quantize_rows(numpy_helper.to_array(init))
            graph.initializer.remove(init)
            if name in graph_inputs:  # older IR versions list initializers as graph inputs too
                graph.input.remove(graph_inputs.pop(name))
            del initializers[name]
            graph.initializer.extend([
                numpy_helper.from_array(quantized, f"{name}_per_row_quantized"),
                numpy_helper.from_array(scale, f"{name}_per_row_scale"),
                numpy_helper.from_array(zero_point, f"{name}_per_row_zero_point"),
            ])
            dequantize_nodes.append(helper.make_node(
                "DequantizeLinear",
                [f"{name}_per_row_quantized", f"{name}_per_row_scale", f"{name}_per_row_zero_point"],
                [f"{name}_dequantized"], name=f"{name}_DequantizeLinear", axis=0,
            ))
            rewritten.append(name)
    if rewritten:
        renamed = {name: f"{name}_dequantized" for name in rewritten}
        for node in graph.node:  # every reader of a table (a tied head too) reads the dequantized one
            for i, value in enumerate(node.input):
                if value in renamed:
                    node.input[i] = renamed[value]
        nodes = dequantize_nodes + list(graph.node)  # inputs are initializers: first is a valid order
        del graph.node[:]
        graph.node.extend(nodes)
    return rewritten
