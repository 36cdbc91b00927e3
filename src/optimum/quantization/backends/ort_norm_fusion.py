"""Residual adds and LayerNorm, and bias adds and GELU, left as separate ops in ONNX Runtime INT8 graphs.

ONNX Runtime's transformer optimizer fuses `Add + LayerNormalization` into `SkipLayerNormalization` and
`Add + Gelu` into `BiasGelu`. In our dynamic INT8 BERT graphs the separate ops ran faster than the fused ones
(benchmarks/RESULTS.md, "Dynamic INT8 keeps LayerNorm and GELU unfused"), so those graphs are built without the two
fusions. ONNX Runtime's session optimizer has the same two fusions and applies them when it loads a graph:
onnxruntime 1.32 turns each residual `Add + LayerNormalization` of our dynamic INT8 graphs back into
`SkipLayerNormalization` (1.12x slower), and static INT8 graphs, stored unfused, get both. So the recipe records them
(`UNFUSED_AT_LOAD`) and our loader turns them off, and the graph runs as stored.
"""

from __future__ import annotations

from .ort_session import with_listed_entry

# ONNX Runtime's names for the session-level fusions (its graph transformers) the separate ops would undergo.
UNFUSED_AT_LOAD = ("SkipLayerNormFusion", "BiasGeluFusion")
DISABLE_OPTIMIZERS = "optimization.disable_specified_optimizers"
# onnxruntime 1.32 splits this entry's value at ";" (its header says ","; a comma-joined list disables nothing).
OPTIMIZER_SEPARATOR = ";"


def fusion_options(fuse_norms: bool):
    """The transformer optimizer's options for BERT: all of its fusions, or all but skip-LayerNorm and BiasGelu."""
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("bert")
    if not fuse_norms:
        options.enable_skip_layer_norm = False
        options.enable_bias_skip_layer_norm = False
        options.enable_bias_gelu = False
    return options


def unfused_session_options(optimizers, options=None):
    """`options` (or new SessionOptions) that keep ONNX Runtime from applying `optimizers` at load. Optimizers the
    caller disabled themselves stay disabled: the entry becomes the union of theirs and ours."""
    return with_listed_entry(options, DISABLE_OPTIMIZERS, optimizers, OPTIMIZER_SEPARATOR,
                             "so ONNX Runtime keeps LayerNorm and GELU as the graph stores them")
