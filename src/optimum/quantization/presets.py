"""Named recipes and the shared default-exclusion block: data, no logic."""

# Module-name patterns (fnmatch) kept in FP32 by every recipe unless `keep_default_exclusions=False`:
# task heads are tiny, sit right before the output and carry most of the quantization error per FLOP.
DEFAULT_EXCLUDE: tuple[str, ...] = (
    "classifier*",
    "pre_classifier",
    "qa_outputs",
    "score",
    "lm_head",
)

# Added for static quantization: layers whose inputs are post-GELU / attention-context activations with
# heavy tails that one per-tensor activation scale cannot hold. On MiniLM-L6 (minmax calibration) keeping
# them FP32 lifts FP32/INT8 embedding cosine from 0.93 to 0.99. Decoders' MLP down projections likewise.
# ONNX Runtime uses this block only with StaticQuantConfig(outlier_channel_ratio=None): its default splits the
# outlier channels of the FFN output GEMMs instead and quantizes these (OpenVINO never uses it: NNCF's scheme).
STATIC_DEFAULT_EXCLUDE: tuple[str, ...] = (
    "*.output.dense",  # BERT family: attention output and FFN output projections
    "*.mlp.c_proj",  # GPT-2
    "*.mlp.down_proj",  # LLaMA family
    "*.fc2",  # OPT
)

# Preset name -> (config class name, keyword arguments). Resolved in configuration.resolve_quant_config.
PRESETS: dict[str, tuple[str, dict]] = {
    # Dynamic INT8 is the fastest sane recipe measured on AVX2 CPUs (see shared FACTS): weights s8, fused graph.
    "dynamic": ("DynamicQuantConfig", {}),
    "int8": ("DynamicQuantConfig", {}),
    "static": ("StaticQuantConfig", {}),
    # Weight-only blockwise (ORT MatMulNBits): the decoder recipe. SmolLM2-135M 8-bit block 32: +0.67% perplexity, 2.3x smaller.
    "w8": ("WeightOnlyQuantConfig", {"bits": 8, "block_size": 32}),
    "w4": ("WeightOnlyQuantConfig", {"bits": 4, "block_size": 32}),
    # Accuracy-aware search (optimum.quantization.autoquant): needs `eval_dataset=` (and a metric) at load time.
    "auto": ("AutoQuantConfig", {}),
}

# What a generic preset means for one task, where the generic recipe is wrong for it. "int8" asks for the best
# INT8 recipe: for causal LMs that is weight-only 8-bit, because every INT8 activation scheme measured misses the
# +3% perplexity budget (SmolLM2-135M dynamic INT8 +68%, w8 +0.7%; benchmarks/results/causal_lm_quality.md).
# An explicit "dynamic" or "static" is honoured as asked.
TASK_PRESETS: dict[str, dict[str, str]] = {
    "text-generation": {"int8": "w8"},
}

# Presets named in the design that later releases implement; asking for them gives a clear error today.
PLANNED_PRESETS: tuple[str, ...] = ()

# QAT fake quant (qat/prepare.py) finds its sites by module class names, not by architecture:
# attention matmuls in the innermost module whose class name ends with this suffix
# (BertSelfAttention, BertSdpaSelfAttention, MultiHeadSelfAttention, DistilBertSdpaAttention, GPT2Attention, ...),
ATTENTION_CLASS_SUFFIX = "Attention"
# residual adds in modules with a normalisation child of these class-name suffixes (or nn.LayerNorm) and no embedding.
NORM_CLASS_SUFFIXES: tuple[str, ...] = ("LayerNorm", "RMSNorm")
