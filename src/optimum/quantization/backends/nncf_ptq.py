"""Our configs lowered to NNCF post-training calls on an OpenVINO model (`nncf.quantize`, `compress_weights`,
`quantize_with_accuracy_control`). NNCF on an `ov.Model` needs no torch extension build.
"""

from __future__ import annotations

import glob
import logging
from typing import Sequence

import nncf
import numpy as np
import openvino as ov

from ..accuracy_control import AccuracyControl
from ..configuration import StaticQuantConfig, WeightOnlyQuantConfig
from ..errors import ConfigError
from ..presets import DEFAULT_EXCLUDE
from .base import check_patterns_used, matches_any
from .openvino_precision import INT8_COMPUTE
from .ov_outlier_channels import split_outlier_channels

logger = logging.getLogger(__name__)

# Operations whose weights NNCF quantizes; exclusions are matched on their module names.
WEIGHTED_OPS = ("MatMul", "Convolution")
# reduce_range (7-bit weights where u8 x s8 products saturate in 16 bits) is NNCF's overflow fix.
OVERFLOW_FIX = {True: nncf.OverflowFix.ENABLE, False: nncf.OverflowFix.DISABLE}
# What StaticQuantConfig(symmetric="auto") means here: symmetric s8 activations kept SQuAD F1 and SST-2
# agreement closer to FP32 than NNCF's mixed preset (asymmetric u8) on fine-tuned MiniLM.
SYMMETRIC_ACTIVATIONS = True
# What StaticQuantConfig(activation_matmuls="auto") means here: NNCF's transformer scheme, which quantizes the Q and K
# inputs of ScaledDotProductAttention. Keeping them float changed nothing beyond noise on fine-tuned MiniLM (Zen 4:
# SQuAD F1 -0.53 vs -0.46, SST-2 agreement 98.96 vs 98.92%), unlike on ONNX Runtime, and took 1.042x the time.
QUANTIZE_ACTIVATION_MATMULS = True
# What StaticQuantConfig(outlier_channel_ratio="auto") means here: split the FFN output GEMMs' outlier channels into a
# float side path before NNCF, as ONNX Runtime does. On fine-tuned MiniLM (Zen 5) SQuAD F1 over 4 calibration draws
# went from -0.62 to -0.24 at ratio 2.0, and SST-2 agreement from 99.00% to 99.14%, at <2% of the time. Over 8 draws
# 1.5 (one more channel, in layer 3) gave -0.11 with every draw inside 0.5, against -0.19 with 2 draws past it, at the
# same agreement (99.16% / 99.39%) and speed (benchmarks/RESULTS.md, "Outlier channels on OpenVINO").
OUTLIER_CHANNEL_RATIO = 1.5


def module_name_of(node_name: str) -> str:
    """'__module.bert.encoder.layer.0.output.dense/aten::linear/MatMul' -> 'bert.encoder.layer.0.output.dense'."""
    head = node_name.split("/", 1)[0]
    return head[len("__module."):] if head.startswith("__module.") else head


def ignored_scope(model: ov.Model, patterns: Sequence[str], user_patterns: Sequence[str]) -> tuple[list[str], list[str]]:
    """Names of weighted nodes whose module (or own name) matches a pattern, and the user patterns that matched none."""
    names, used = [], set()
    for op in model.get_ops():
        if op.get_type_name() not in WEIGHTED_OPS:
            continue
        name = op.get_friendly_name()
        pattern = matches_any(module_name_of(name), patterns) or matches_any(name, patterns)
        if pattern:
            names.append(name)
            used.add(pattern)
    return names, check_patterns_used(user_patterns, used, "weighted OpenVINO node")


def activation_matmuls(model: ov.Model) -> list[str]:
    """Attention's products of two activations: ScaledDotProductAttention ops (NNCF quantizes their Q and K inputs)
    and MatMuls without a constant input (attention exported without SDPA). A value is constant when it comes from
    constants only (a Constant, or a Convert that decompresses an FP16-stored weight)."""
    constant: dict[str, bool] = {}
    names = []
    for op in model.get_ordered_ops():  # producers before consumers
        inputs = [constant[value.get_node().get_name()] for value in op.input_values()]  # unique, unlike friendly names
        kind = op.get_type_name()
        constant[op.get_name()] = kind == "Constant" or (kind != "Parameter" and bool(inputs) and all(inputs))
        if kind == "ScaledDotProductAttention" or (kind == "MatMul" and not any(inputs)):
            names.append(op.get_friendly_name())
    return names


def quantized_units(model: ov.Model, excluded: Sequence[str]) -> list[str]:
    """Module names of the weighted nodes NNCF quantizes (a constant weight, outside the ignored scope), in graph
    order. Each is an `exclude` pattern that keeps exactly that module float here: the names the accuracy-aware
    search falls back with."""
    skip = set(excluded) | set(activation_matmuls(model))
    names = (module_name_of(op.get_friendly_name()) for op in model.get_ordered_ops()
             if op.get_type_name() in WEIGHTED_OPS and op.get_friendly_name() not in skip)
    return [glob.escape(name) for name in dict.fromkeys(names)]


def static_exclusions(config: StaticQuantConfig) -> list[str]:
    """Task heads and the user's patterns; not the ONNX Runtime static block (attention/FFN output projections).

    That block keeps 5 of every 12 H^2 GEMM FLOPs of a BERT layer in FP32, which caps any INT8 speed-up; NNCF's
    transformer scheme (SmoothQuant before the ranges are set) quantizes them within the accuracy budget
    (benchmarks/results/squad_openvino.md).
    """
    return config.exclusion_patterns(DEFAULT_EXCLUDE)


def _advanced_parameters(config: StaticQuantConfig, reduce_range: bool):
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
        QuantizationParameters,
    )
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    kwargs = {"overflow_fix": OVERFLOW_FIX[reduce_range]}
    # smoothing_alpha="auto" keeps NNCF's own SmoothQuant default for transformers (alpha 0.95 on MatMuls in
    # nncf 3.4), which the OpenVINO results were measured with; a negative alpha is how NNCF switches it off.
    if config.smoothing_alpha != "auto":
        alpha = -1.0 if config.smoothing_alpha is None else float(config.smoothing_alpha)
        kwargs["smooth_quant_alphas"] = AdvancedSmoothQuantParameters(matmul=alpha)
    if not config.per_channel:
        kwargs["weights_quantization_params"] = QuantizationParameters(per_channel=False)
    if config.calibration.method == "percentile":
        kwargs["activations_range_estimator_params"] = RangeEstimatorParametersSet.MEAN_QUANTILE
    return AdvancedQuantizationParameters(**kwargs)


def check_static(config: StaticQuantConfig) -> None:
    """Refuse what NNCF cannot do before the slow export."""
    if config.format != "qdq":
        raise ConfigError("The openvino backend stores INT8 as FakeQuantize (Q/DQ-like) nodes: use format='qdq'.")
    if config.calibration.method == "entropy":
        raise ConfigError("NNCF has no entropy (KL) calibration: use calibration='minmax' or 'percentile' with backend='openvino'.")
    if config.weight_type != "int8":
        raise ConfigError("NNCF stores signed 8-bit weights: leave weight_type='int8' with backend='openvino'.")
    if config.calibration.method == "percentile" and config.calibration.percentile != 99.99:
        raise ConfigError(
            "The openvino backend's percentile calibration is NNCF's MEAN_QUANTILE estimator (99.99th "
            f"percentile); percentile={config.calibration.percentile} is not available: leave it at 99.99."
        )


def quantize_static(
    model: ov.Model, feeds: list[dict], config: StaticQuantConfig, reduce_range: bool,
    accuracy: AccuracyControl | None = None, validation_feeds: list[dict] | None = None,
) -> tuple[ov.Model, dict]:
    """NNCF static INT8 (FakeQuantize on weights and activations) with the transformer scheme.

    `config` has passed `check_static` (the backend's `check_supports`, before the export)."""
    names, unused = ignored_scope(model, static_exclusions(config), config.exclude)
    ratio = config.resolved_outlier_channel_ratio(OUTLIER_CHANNEL_RATIO)
    if ratio is None:
        outlier_channels = {"applied": False, "reason": "outlier_channel_ratio=None"}
    else:  # on `model` itself, which callers pass as a clone of the export
        outlier_channels = split_outlier_channels(model, feeds, ratio, skip=set(names))
    quantize_matmuls = config.quantize_activation_matmuls(QUANTIZE_ACTIVATION_MATMULS)
    kept_matmuls = [] if quantize_matmuls else [n for n in activation_matmuls(model) if n not in names]
    names += kept_matmuls + outlier_channels.get("side_path_nodes", [])
    kwargs = dict(
        preset=nncf.QuantizationPreset.PERFORMANCE if config.symmetric_activations(SYMMETRIC_ACTIVATIONS)
        else nncf.QuantizationPreset.MIXED,
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(feeds),
        ignored_scope=nncf.IgnoredScope(names=names, validate=False),
        advanced_parameters=_advanced_parameters(config, reduce_range),
    )
    details = {
        "algorithm": "nncf.quantize",
        "preset": kwargs["preset"].value,
        "overflow_fix": OVERFLOW_FIX[reduce_range].value,
        "smooth_quant_matmul_alpha": kwargs["advanced_parameters"].smooth_quant_alphas.matmul,
        "reduce_range": reduce_range,
        "calibration_samples": len(feeds),
        "activation_matmuls": {"quantized": quantize_matmuls, "kept_float": kept_matmuls},
        "outlier_channels": outlier_channels,
        "excluded_nodes": names,
        "unused_exclude_patterns": unused,
        "quantized_units": quantized_units(model, names),
    }
    if accuracy is None:
        return nncf.quantize(model, nncf.Dataset(feeds), **kwargs), details

    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    def validate(compiled: ov.CompiledModel, items) -> float:
        return float(accuracy.metric(run_compiled(compiled, items)))

    # Both metrics as computed in f32 outside INT8: the reference is really FP32, and the INT8 model loads that way.
    fp32_metric = validate(ov.Core().compile_model(model, "CPU", INT8_COMPUTE), validation_feeds)
    kwargs["advanced_quantization_parameters"] = kwargs.pop("advanced_parameters")
    quantized = nncf.quantize_with_accuracy_control(
        model, nncf.Dataset(feeds), nncf.Dataset(validation_feeds), validate,
        max_drop=accuracy.max_drop,
        drop_type=nncf.DropType.ABSOLUTE if accuracy.drop_type == "absolute" else nncf.DropType.RELATIVE,
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
            max_num_iterations=accuracy.max_num_iterations
        ),
        **kwargs,
    )
    int8_metric = validate(ov.Core().compile_model(quantized, "CPU", INT8_COMPUTE), validation_feeds)
    drop = fp32_metric - int8_metric
    if accuracy.drop_type == "relative" and fp32_metric:
        drop /= abs(fp32_metric)
    within = drop <= accuracy.max_drop + 1e-12
    details.update(
        algorithm="nncf.quantize_with_accuracy_control",
        accuracy_control={
            **accuracy.describe(),
            "validation_samples": len(validation_feeds),
            "fp32_metric": fp32_metric,
            "int8_metric": int8_metric,
            "drop": drop,
            "within_max_drop": within,
        },
    )
    if not within:
        logger.warning(
            "Accuracy control could not bring the drop (%.4f) within max_drop=%s in %d iterations; "
            "the recipe records it.", drop, accuracy.max_drop, accuracy.max_num_iterations,
        )
    return quantized, details


def run_compiled(compiled: ov.CompiledModel, feeds) -> list[dict[str, np.ndarray]]:
    """Each feed through a compiled model: one dict per feed, output name -> array."""
    request = compiled.create_infer_request()
    names = [next(iter(output.get_names()), str(i)) for i, output in enumerate(compiled.outputs)]
    outputs = []
    for feed in feeds:
        result = request.infer(feed)
        outputs.append({name: np.array(result[output]) for name, output in zip(names, compiled.outputs)})
    return outputs


def compress_weights(model: ov.Model, config: WeightOnlyQuantConfig) -> tuple[ov.Model, dict]:
    """NNCF weight compression: 8-bit per-channel, or 4-bit in groups of `block_size` with `ratio` of the weights."""
    names, unused = ignored_scope(model, config.exclusion_patterns(), config.exclude)
    modes = {
        (8, True): nncf.CompressWeightsMode.INT8_SYM, (8, False): nncf.CompressWeightsMode.INT8_ASYM,
        (4, True): nncf.CompressWeightsMode.INT4_SYM, (4, False): nncf.CompressWeightsMode.INT4_ASYM,
    }
    mode = modes[(config.bits, config.symmetric)]
    kwargs = {"mode": mode, "ignored_scope": nncf.IgnoredScope(names=names, validate=False)}
    if config.bits == 4:
        kwargs.update(group_size=config.block_size, ratio=config.ratio)
    compressed = nncf.compress_weights(model, **kwargs)
    shared = excluded_but_compressed(compressed, names)
    if shared:
        logger.warning(
            "%s stay(s) INT8 despite the exclusion: the weight is shared with a compressed node (tied embeddings).",
            ", ".join(shared),
        )
    return compressed, {
        "algorithm": "nncf.compress_weights",
        "mode": mode.value,
        "group_size": config.block_size if config.bits == 4 else -1,  # NNCF's 8-bit weights are per-channel
        "ratio": config.ratio,
        "excluded_nodes": [n for n in names if n not in shared],
        "excluded_but_shared_with_compressed_weight": shared,
        "unused_exclude_patterns": unused,
        "quantized_units": quantized_units(model, names),
    }


LOW_PRECISION = {"i8", "u8", "i4", "u4"}
DECOMPRESSION_OPS = {"Convert", "Multiply", "Subtract", "Reshape", "Transpose"}


def excluded_but_compressed(model: ov.Model, names) -> list[str]:
    """The excluded nodes whose weight still reaches them from a low-precision constant: NNCF compresses a
    constant once, so a MatMul that shares its weight with a compressed node (GPT-2's lm_head tied to the
    token embedding) computes with the INT8 weight whatever the ignored scope says."""
    wanted, found = set(names), []
    for op in model.get_ops():
        if op.get_friendly_name() not in wanted or op.get_input_size() < 2:
            continue
        frontier, depth = [op.input_value(1).get_node()], 0  # walk up the weight's decompression subgraph only
        while frontier and depth < 6:
            if any(n.get_type_name() == "Constant" and n.get_output_element_type(0).get_type_name() in LOW_PRECISION for n in frontier):
                found.append(op.get_friendly_name())
                break
            frontier = [v.get_node() for n in frontier if n.get_type_name() in DECOMPRESSION_OPS for v in n.input_values()]
            depth += 1
    return found
