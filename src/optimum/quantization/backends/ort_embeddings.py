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

EMBEDDING_OP = "EmbedLayerNormalization"
# Inputs 2 and 3 are the word and position tables; token types (2 rows) and gamma/beta (one row) stay FP32.
TABLE_INPUTS = (2, 3)
FOLD_DEQUANTIZE = ("session.disable_quant_qdq", "1")


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
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:  # per-axis DequantizeLinear is opset 13
        return []
    graph = model.graph
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
            quantized, scale, zero_point = quantize_rows(numpy_helper.to_array(init))
            graph.initializer.remove(init)
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
