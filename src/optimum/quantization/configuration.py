"""Quantization configurations: dataclasses validated on creation, serialised tagged and versioned.

A config serialises as ``{"_type": "StaticQuantConfig", "_version": 1, "_data": {...}}`` and loads only
classes from an allow-list, so a recipe file can never name arbitrary code. Configs import no backend.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import numbers
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence, Union

from .errors import ConfigError, unknown_name
from .presets import DEFAULT_EXCLUDE, PLANNED_PRESETS, PRESETS, STATIC_DEFAULT_EXCLUDE, TASK_PRESETS

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
STATIC_FORMATS = ("qdq", "qoperator")
WEIGHT_TYPES = ("int8", "uint8")
WEIGHT_ONLY_BITS = (8, 4)
QAT_METHODS = ("fake_quant", "nncf")
QAT_CALIBRATORS = ("max", "percentile", "entropy", "mse")
# QATConfig(recipe=...): the field values each named recipe gives where the config leaves them at None.
QAT_RECIPES = {
    "accurate": {"quantize_residual_adds": False},
    "tensorrt": {"quantize_residual_adds": True},  # the TensorRT quantization toolkit's placement, as QDQBERT
}
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
EMBEDDING_STORAGE = ("per-row", "per-tensor")
# What dynamic INT8 smooths with when no calibration_dataset is given (None: it does not smooth then).
SMOOTHING_WITHOUT_DATA = ("random-words", None)
# How smoothing summarises each channel over its texts: SmoothQuant's largest value, or the mean of each text's largest.
SMOOTHING_STATISTICS = ("auto", "max", "mean-max")


def _type_matches(value, hint) -> bool:
    """Whether `value` has the type a dataclass field is annotated with (bools are not numbers here)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_type_matches(value, arg) for arg in args)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple)) and all(_type_matches(item, args[0]) for item in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is type(None):
        return value is None
    if hint is Any or dataclasses.is_dataclass(hint):  # a nested config validates (and converts) itself
        return True
    return not isinstance(hint, type) or isinstance(value, hint)


def _type_description(hint) -> str:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_type_description(arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) in (list, tuple):
        return f"a list of {_type_description(typing.get_args(hint)[0]).split(' ', 1)[-1]}s"
    names = {bool: "True or False", int: "an integer", float: "a number", str: "a string", type(None): "None"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _takes_words(hint) -> bool:
    """Whether a field takes a value or one of a few words (`reduce_range`: True, False, "auto", "pair-safe")."""
    args = set(typing.get_args(hint)) if typing.get_origin(hint) in (Union, types.UnionType) else set()
    return str in args and bool(args - {str, type(None)})


def _check_field_types(config) -> None:
    """ConfigError naming the first field whose value does not have its annotated type (e.g. per_channel="yes"):
    every config's `__post_init__` starts with this, before the checks of values. A field that also takes words is
    left to the class's own check, which names the words."""
    for name, hint in _field_types(type(config)).items():
        value = getattr(config, name)
        if not _type_matches(value, hint) and not _takes_words(hint):
            raise ConfigError(f"`{name}` ({type(config).__name__}) must be {_type_description(hint)}, got {value!r}.")


def _check_choice(kind: str, value: object, valid) -> None:
    if value not in valid:
        raise unknown_name(kind, value, valid)


def _check_patterns(name: str, patterns) -> list[str]:
    if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns):
        raise ConfigError(f"`{name}` must be a list of strings (fnmatch patterns), got {patterns!r}.")
    return list(patterns)


def _check_int(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(f"`{name}` must be {expected}, got {value!r}.")


def _check_percentile(value) -> None:
    if not 0.0 < float(value) <= 100.0:
        raise ConfigError(f"`percentile` must be in (0, 100], got {value}.")


def _check_positive(name: str, value) -> None:
    if not float(value) > 0.0:
        raise ConfigError(f"`{name}` must be > 0, got {value}.")


def _check_smoothing_alpha(value) -> None:
    if value == "auto":
        return
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0):
        raise ConfigError(f"`smoothing_alpha` must be None, 'auto' or a number in (0, 1), got {value!r}.")


def _check_outlier_channel_ratio(value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 1.0):
        raise ConfigError(f"`outlier_channel_ratio` must be None or a number > 1, got {value!r}.")


def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"`{name}` must be True or False, got {value!r}.")


def _check_bool_or_auto(name: str, value) -> None:
    # The type check keeps 1 and 0, which equal True and False, out.
    if value not in (True, False, "auto") or not isinstance(value, (bool, str)):
        raise ConfigError(f"`{name}` must be True, False or 'auto', got {value!r}.")


def _check_reduce_range(value, choices=(True, False, "auto")) -> None:
    if value not in choices or not isinstance(value, (bool, str)):  # 1 and 0 equal True and False
        allowed = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"`reduce_range` must be one of {allowed}, got {value!r}.")


@dataclass
class CalibrationConfig:
    """How activation ranges are measured for static quantization.

    Histogram methods (percentile, entropy) need every calibration batch to have the same shape, so
    calibration texts are padded or truncated to `sequence_length`.
    """

    method: str = "minmax"
    percentile: float = 99.99
    num_samples: int = 128
    sequence_length: int = 128

    def __post_init__(self):
        _check_field_types(self)
        _check_choice("calibration method", self.method, CALIBRATION_METHODS)
        _check_percentile(self.percentile)
        if int(self.num_samples) < 1 or int(self.sequence_length) < 2:
            raise ConfigError("`num_samples` must be >= 1 and `sequence_length` >= 2.")


@dataclass
class _QuantConfigBase:
    """Fields and (de)serialisation shared by every quantization config."""

    VERSION: ClassVar[int] = 1
    requires_calibration: ClassVar[bool] = False
    reduce_range_choices: ClassVar[tuple] = (True, False, "auto")
    default_exclude: ClassVar[tuple[str, ...]] = DEFAULT_EXCLUDE

    per_channel: bool = True
    reduce_range: Union[bool, str] = "auto"
    weight_type: str = "int8"
    exclude: list[str] = field(default_factory=list)
    keep_default_exclusions: bool = True
    op_types: list[str] | None = None

    def __post_init__(self):
        _check_reduce_range(self.reduce_range, self.reduce_range_choices)
        _check_choice("weight type", self.weight_type, WEIGHT_TYPES)
        self.exclude = _check_patterns("exclude", self.exclude)
        if self.op_types is not None:
            self.op_types = _check_patterns("op_types", self.op_types)

    def exclusion_patterns(self, defaults: Sequence[str] | None = None) -> list[str]:
        """Every module/node pattern to keep in FP32: the default block (this config's own unless a backend
        passes its `defaults`), then the user's."""
        defaults = list(self.default_exclude if defaults is None else defaults) if self.keep_default_exclusions else []
        return defaults + [p for p in self.exclude if p not in defaults]

    def calibration_samples(self) -> int | None:
        """How many calibration examples this config uses when they are given (None: it uses none)."""
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"_type": type(self).__name__, "_version": self.VERSION, "_data": dataclasses.asdict(self)}

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **changes) -> "_QuantConfigBase":
        """A copy with some fields changed; the original is never mutated."""
        # Deep-copy first: a shallow copy would share the nested CalibrationConfig with the original.
        return dataclasses.replace(copy.deepcopy(self), **changes)


def _or_default(value, backend_default):
    """A field's value as given, or where it is "auto" the backend's measured default."""
    return backend_default if value == "auto" else value


class _SmoothingChoice:
    """For configs with a `smoothing_alpha` field that takes "auto"."""

    def smoothing(self, backend_default: float | None) -> float | None:
        """`smoothing_alpha` as given, or for "auto" the backend's measured default (None: no smoothing)."""
        return _or_default(self.smoothing_alpha, backend_default)


@dataclass
class DynamicQuantConfig(_SmoothingChoice, _QuantConfigBase):
    """Dynamic INT8: weights quantized ahead of time, activations quantized per batch at run time.

    Per-channel weight scales are the default: on MiniLM-L6 per-tensor scales drop the FP32/INT8
    embedding cosine similarity to 0.87, per-channel keeps it at 0.99, at the same speed.

    `reduce_range="pair-safe"` (ONNX Runtime, per-channel s8 weights): 8-bit weights rescaled per channel so
    that the 16-bit pair sums of CPUs without VNNI cannot saturate (`backends/ort_pair_safe.py`).

    `embeddings` (ONNX Runtime, fused graphs): `"per-row"` stores the word and position tables in u8 with one
    scale per row and keeps the fused embedding op FP32 (`backends/ort_embeddings.py`); `"per-tensor"` is
    ONNX Runtime's own `QEmbedLayerNormalization` (one scale for a whole table, LayerNorm weights in u8 too).

    `smoothing_alpha` (ONNX Runtime, fused encoder graphs): the inputs of LayerNorm-fed GEMMs are smoothed first
    (SmoothQuant, `backends/ort_smoothing.py`), measured on the first `smoothing_samples` examples of the
    `calibration_dataset`. Without one, `smoothing_without_data="random-words"` measures texts of random vocabulary
    words instead (`calibration.random_word_examples`); `None` there skips smoothing when no data is given, and
    `smoothing_alpha=None` turns it off. The recipe says which statistics and alpha were used, or why smoothing was
    skipped. `"auto"` takes alpha by weight range: 0.5 with 8-bit weights, 0.4 with 7-bit weights (`reduce_range`, by
    default on CPUs without VNNI), whose steps are twice as coarse, so less of the activations' range should move into
    them (fine-tuned MiniLM on AVX2 code paths: SQuAD F1 +0.05 against -0.55 at 0.5, SST-2 agreement level; with
    8-bit weights 0.4 lost 0.46 F1 more than 0.5; `benchmarks/RESULTS.md`). `smoothing_statistic` is how a channel's
    range is summarised over the texts: `"max"`, the largest over all of them (SmoothQuant's), or `"mean-max"`, the
    mean of each text's largest value, which does not grow with the number of texts. `"auto"` takes it by weight range
    like alpha: "max" with 8-bit weights, "mean-max" with 7-bit ones. SQuAD F1 moves by up to 1.5 points with the
    texts drawn, so each was measured over several draws (`benchmarks/RESULTS.md`, "How much the smoothing texts move
    SQuAD F1").

    `outlier_channel_ratio` (ONNX Runtime, fused encoder graphs): the few input channels of the FFN's second GEMM whose
    largest value on the same texts smoothing measures is more than this many times the tensor's 99th-percentile
    channel maximum are computed by a small FP32 side path, so the INT8 GEMM's one activation scale fits the rest
    (`backends/outlier_channels.py`). On fine-tuned MiniLM those are one [CLS] channel in each of the first four
    layers (two in the third), 2-4x past the rest. SQuAD F1 averaged over 4 draws of calibration texts went from -0.56
    to -0.02 with VNNI and from -0.31 to -0.00 on AVX2 code paths, at under 2% of the time; `None` turns it off
    (`benchmarks/RESULTS.md`, "Outlier channels").

    `fuse_layer_norm` (ONNX Runtime, fused encoder graphs): False keeps residual adds apart from LayerNorm and bias
    adds apart from GELU, and our loader keeps ONNX Runtime from fusing them at load (`backends/ort_norm_fusion.py`);
    True gives ONNX Runtime's `SkipLayerNormalization` and `BiasGelu`. Same function, different speed.

    `head_token_only` (exported text classifiers; every config that exports has it): BERT-style heads read only the
    first token's final state, so the last encoder layer is exported for that token alone, its keys and values still
    over every token (`head_token.py`). The logits are the same; the last layer's work for the other tokens is gone.
    `"auto"` does it for text classifiers of a registered architecture (BERT, RoBERTa, XLM-R, CamemBERT, ELECTRA,
    DistilBERT) after checking on a test batch that the logits do not change, and says in the recipe what it did;
    True raises where it cannot; False exports every token.
    """

    reduce_range_choices: ClassVar[tuple] = (True, False, "auto", "pair-safe")

    optimize_graph: bool = True
    embeddings: str = "per-row"
    smoothing_alpha: Union[float, str, None] = "auto"
    smoothing_samples: int = 64
    smoothing_without_data: str | None = "random-words"
    smoothing_statistic: str = "auto"
    outlier_channel_ratio: float | None = 2.0
    fuse_layer_norm: bool = False
    head_token_only: Union[bool, str] = "auto"

    def __post_init__(self):
        _check_field_types(self)
        _check_choice("embeddings storage", self.embeddings, EMBEDDING_STORAGE)
        _check_bool_or_auto("head_token_only", self.head_token_only)
        _check_choice("smoothing statistic", self.smoothing_statistic, SMOOTHING_STATISTICS)
        _check_smoothing_alpha(self.smoothing_alpha)
        _check_int("smoothing_samples", self.smoothing_samples)
        _check_outlier_channel_ratio(self.outlier_channel_ratio)
        _check_bool("fuse_layer_norm", self.fuse_layer_norm)
        if self.smoothing_without_data not in SMOOTHING_WITHOUT_DATA:
            raise ConfigError(
                f"`smoothing_without_data` must be 'random-words' or None, got {self.smoothing_without_data!r}."
            )
        super().__post_init__()

    def calibration_samples(self) -> int | None:
        uses_activations = self.smoothing_alpha is not None or self.outlier_channel_ratio is not None
        return self.smoothing_samples if uses_activations else None

    def resolved_smoothing_statistic(self, backend_default: str) -> str:
        """`smoothing_statistic` as given, or for "auto" the backend's measured default."""
        return _or_default(self.smoothing_statistic, backend_default)


@dataclass
class StaticQuantConfig(_SmoothingChoice, _QuantConfigBase):
    """Static INT8: activation ranges measured once on calibration data, stored in the graph.

    `symmetric` is about activations (weights are always symmetric): `"auto"` takes what measured best on each
    backend. On OpenVINO that is symmetric s8 (NNCF's performance preset): on fine-tuned MiniLM (VNNI/AMX Xeon)
    SQuAD F1 +0.03 and SST-2 agreement 98.82%, against -0.16 and 98.70% for asymmetric u8, at the same speed.
    On ONNX Runtime it is asymmetric u8: symmetric s8 lost 1.03 SST-2 points and fell to 98.38% agreement
    (`benchmarks/RESULTS.md`).

    `smoothing_alpha` (SmoothQuant before calibration): `"auto"` is SmoothQuant with alpha 0.7 on the LayerNorm-fed
    GEMMs on ONNX Runtime (`backends/ort_smoothing.py`; fine-tuned MiniLM on Zen 4 with `activation_matmuls` off:
    SQuAD F1 -0.22 and SST-2 agreement 99.29%, against -0.52 and 99.08% for alpha 0.5) and NNCF's own SmoothQuant
    default (alpha 0.95) on OpenVINO. A number in (0, 1) is used on both; `None` turns smoothing off.

    `activation_matmuls` is whether the products of two activations, attention's scores (Q x K^T) and context
    (probabilities x V), are quantized, each input with one static range. `"auto"` keeps them in FP32 on ONNX Runtime:
    on fine-tuned MiniLM (Zen 4) that took SQuAD answers identical to FP32 from 85.9% to 90.3% and SST-2 dev from
    -0.69 to +0.34, at the same speed. On OpenVINO it keeps NNCF's transformer scheme, which quantizes the Q and K
    inputs of ScaledDotProductAttention: keeping them float there made no difference beyond noise
    (`benchmarks/RESULTS.md`).

    `outlier_channel_ratio`: as `DynamicQuantConfig`'s, the FFN's second GEMM computes its outlier input channels in a
    float side path (`backends/outlier_channels.py`), measured on the calibration data. With the split, ONNX Runtime
    quantizes the attention and FFN output projections (`*.output.dense`) that the static default otherwise keeps in
    FP32 (`default_exclude`), and keeps only the task heads, as OpenVINO does. `"auto"` is 2.0 on ONNX Runtime: on
    fine-tuned MiniLM static INT8 kept SQuAD F1 (mean over 4 draws +0.03 on VNNI, -0.12 on AVX2 code paths) and SST-2
    agreement (99.32% / 99.26%), and ran 1.48x (VNNI) / 1.29x (AVX2) faster on BERT-base 1 x 128
    (`benchmarks/RESULTS.md`, "Outlier channels"). `None` keeps the projections FP32 and the graph unsplit. On
    OpenVINO, which always quantized the projections, "auto" is 1.5: SQuAD F1 over 8 calibration draws -0.11 (every
    draw within 0.5; 2.0: -0.19, two draws past it; no split: -0.62 over 4) and SST-2 agreement 99.16%, against
    99.00% unsplit ("Outlier channels on OpenVINO"); `None` gives the graph without the split.

    `fuse_layer_norm` (ONNX Runtime): False has our loader keep ONNX Runtime from fusing residual adds into LayerNorm
    and bias adds into GELU when it loads the graph (`backends/ort_norm_fusion.py`); True lets it. Same function.

    `head_token_only`: as in DynamicQuantConfig; calibration then measures the last layer on the first token's row.
    """

    requires_calibration: ClassVar[bool] = True
    default_exclude: ClassVar[tuple[str, ...]] = DEFAULT_EXCLUDE + STATIC_DEFAULT_EXCLUDE

    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    format: str = "qdq"
    symmetric: Union[bool, str] = "auto"
    smoothing_alpha: Union[float, str, None] = "auto"
    activation_matmuls: Union[bool, str] = "auto"
    outlier_channel_ratio: Union[float, str, None] = "auto"
    fuse_layer_norm: bool = False
    head_token_only: Union[bool, str] = "auto"

    def __post_init__(self):
        _check_field_types(self)
        _check_bool_or_auto("head_token_only", self.head_token_only)
        if isinstance(self.calibration, dict):
            self.calibration = _build(CalibrationConfig, self.calibration)
        elif isinstance(self.calibration, str):
            self.calibration = CalibrationConfig(method=self.calibration)
        if not isinstance(self.calibration, CalibrationConfig):
            raise ConfigError(f"`calibration` must be a CalibrationConfig, dict or method name, got {self.calibration!r}.")
        _check_choice("static format", self.format, STATIC_FORMATS)
        _check_bool_or_auto("symmetric", self.symmetric)
        _check_smoothing_alpha(self.smoothing_alpha)
        _check_bool_or_auto("activation_matmuls", self.activation_matmuls)
        if self.outlier_channel_ratio != "auto":
            _check_outlier_channel_ratio(self.outlier_channel_ratio)
        _check_bool("fuse_layer_norm", self.fuse_layer_norm)
        super().__post_init__()

    def calibration_samples(self) -> int | None:
        return self.calibration.num_samples

    def resolved_outlier_channel_ratio(self, backend_default: float | None) -> float | None:
        """`outlier_channel_ratio` as given, or for "auto" the backend's measured default (None: no split)."""
        return _or_default(self.outlier_channel_ratio, backend_default)

    def quantize_activation_matmuls(self, backend_default: bool) -> bool:
        """`activation_matmuls` as given, or for "auto" the backend's measured default."""
        return _or_default(self.activation_matmuls, backend_default)

    def symmetric_activations(self, backend_default: bool) -> bool:
        """`symmetric` as given, or for "auto" the backend's measured default."""
        return _or_default(self.symmetric, backend_default)


@dataclass
class WeightOnlyQuantConfig(_QuantConfigBase):
    """Weight-only blockwise quantization: weights stored in `bits` bits, activations stay FP32.

    Each block of `block_size` consecutive weights along the input dimension gets its own scale, which
    is finer than per-channel, and nothing depends on activation ranges: this is the recipe for decoders,
    where every INT8 activation scheme measured loses more than 3% perplexity (SmolLM2-135M: 8-bit,
    block 32, +0.7%; benchmarks/results/causal_lm_weight_only.md). `accuracy_level` is ONNX Runtime's MatMulNBits compute type: 0 unset, 1 fp32,
    2 fp16, 3 bf16, 4 int8 (activations quantized blockwise on the fly inside the kernel).

    The INT8-only fields of the shared base do not apply: `per_channel` (blocks replace channels),
    `reduce_range` (no u8 x s8 activation products) and `weight_type` (`bits` and `symmetric` say it);
    a non-default value for them is refused rather than silently ignored.

    `block_size` is NNCF's `group_size` (the OpenVINO backend uses it for 4-bit; NNCF's 8-bit weights are
    per-channel). `ratio` (OpenVINO, 4-bit only) is the share of weights stored in 4 bits, the rest in 8 bits.
    `head_token_only`: as in DynamicQuantConfig.
    """

    bits: int = 8
    block_size: int = 32
    symmetric: bool = True
    accuracy_level: int = 4
    ratio: float = 1.0
    head_token_only: Union[bool, str] = "auto"

    @property
    def group_size(self) -> int:
        """NNCF's name for `block_size`."""
        return self.block_size

    def __post_init__(self):
        _check_field_types(self)
        for name, default in (("per_channel", True), ("reduce_range", "auto"), ("weight_type", "int8")):
            if getattr(self, name) != default:
                raise ConfigError(
                    f"`{name}` does not apply to weight-only quantization (blockwise scales, FP32 activations); "
                    f"leave it at its default {default!r} and use `bits`, `block_size` and `symmetric` instead."
                )
        if isinstance(self.bits, bool) or self.bits not in WEIGHT_ONLY_BITS:
            raise ConfigError(f"`bits` must be 8 or 4 for weight-only quantization, got {self.bits!r}.")
        block = self.block_size
        if isinstance(block, bool) or not isinstance(block, int) or block < 16 or block & (block - 1):
            raise ConfigError(f"`block_size` must be a power of two >= 16 (16, 32, 64, 128, ...), got {block!r}.")
        if not isinstance(self.symmetric, bool):
            raise ConfigError(f"`symmetric` must be True or False, got {self.symmetric!r}.")
        if isinstance(self.accuracy_level, bool) or self.accuracy_level not in ACCURACY_LEVELS:
            raise ConfigError(
                f"`accuracy_level` must be one of 0..4 (0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8), got {self.accuracy_level!r}."
            )
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0.0 < self.ratio <= 1.0:
            raise ConfigError(f"`ratio` must be a number in (0, 1] (the share of weights in `bits` bits), got {self.ratio!r}.")
        if self.ratio != 1.0 and self.bits != 4:
            raise ConfigError("`ratio` below 1 mixes 4-bit and 8-bit weights: it needs bits=4.")
        _check_bool_or_auto("head_token_only", self.head_token_only)
        super().__post_init__()


@dataclass
class QATConfig(_QuantConfigBase):
    """Quantization-aware training: insert INT8 fake quant, calibrate on a few training batches, fine-tune.

    `method="fake_quant"` inserts symmetric INT8 fake quant with zero-point 0 (scale = amax / 127), per-tensor on
    the inputs of linear layers, per-channel on their weights, and on both inputs of the two attention matmuls
    (`quantize_matmul_inputs`). `recipe` names where else it goes:

    - "accurate" (default): residual adds stay FP32; everything above is INT8.
    - "tensorrt": the TensorRT quantization-toolkit recipe (as in QDQBERT), which also quantizes both inputs of
      every residual add.

    Measured by this project (MiniLM fine-tuned on SQuAD, F1 after QAT against FP32): "tensorrt" -1.27 F1
    (600 questions), "accurate" +0.14 F1 (all 1,589 held-out questions, 4,096 training windows); on those 1,589
    questions after the same 2,048-window run, -1.78 against -0.23. The residual-add quantizers cost most of the
    full recipe's accuracy. A recipe only fills the fields it names that are left at None
    (`quantize_residual_adds`); a value given explicitly wins, so `QATConfig(quantize_residual_adds=True)`
    quantizes the residual adds whatever the recipe, and `QATConfig(recipe="tensorrt")` equals the toolkit's
    placement. The saved config keeps both as given.
    Activation ranges come from `calibrator` ("max", "percentile" at `percentile`,
    "entropy", "mse") over `calibration_batches` training batches and stay fixed while training, or, with
    `learn_ranges=True`, are trained from there with the weights (LSQ gradient, at `range_learning_rate`;
    fake_quant only).
    `method="nncf"` hands the model to `nncf.quantize` (NNCF's own placement and ranges, `calibration_batches`
    batches), then fine-tunes it. `exclude` takes module-name patterns kept in FP32 (task heads by default).
    `reduce_range` ("auto": on CPUs without VNNI) trains 7-bit weights (-64..63), so the exported model gives the
    same results on ONNX Runtime's CPU INT8 kernels, whose 16-bit pair sums overflow with full-range weights there.
    `distillation_weight` > 0 mixes the task loss with a KL term towards the logits of the model's own FP32
    weights (a frozen copy taken before the quantizers go in), softened by `distillation_temperature`:
    loss = (1 - w) * task + w * T² * KL(teacher || student).
    """

    VERSION: ClassVar[int] = 2  # 2: `recipe`; residual adds FP32 unless a recipe or the field says otherwise

    method: str = "fake_quant"
    calibrator: str = "percentile"
    percentile: float = 99.99
    num_bins: int = 2048
    calibration_batches: int = 8
    recipe: str = "accurate"
    quantize_matmul_inputs: bool = True
    quantize_residual_adds: bool | None = None  # None: the recipe's choice
    learn_ranges: bool = False
    range_learning_rate: float = 1e-2
    distillation_weight: float = 0.0
    distillation_temperature: float = 2.0

    def __post_init__(self):
        _check_field_types(self)
        _check_choice("QAT method", self.method, QAT_METHODS)
        _check_choice("QAT recipe", self.recipe, QAT_RECIPES)
        if self.quantize_residual_adds is not None:
            _check_bool("quantize_residual_adds", self.quantize_residual_adds)
        if self.recipe != "accurate" and self.method != "fake_quant":
            raise ConfigError(f"`recipe` places method='fake_quant' quantizers; method={self.method!r} places its own: "
                              "leave `recipe` at 'accurate'.")
        _check_positive("range_learning_rate", self.range_learning_rate)
        if self.learn_ranges and self.method != "fake_quant":
            raise ConfigError("`learn_ranges` applies to method='fake_quant'; NNCF's QAT trains its own ranges.")
        if not 0.0 <= float(self.distillation_weight) <= 1.0:
            raise ConfigError(f"`distillation_weight` must be in [0, 1], got {self.distillation_weight}.")
        _check_positive("distillation_temperature", self.distillation_temperature)
        _check_choice("QAT calibrator", self.calibrator, QAT_CALIBRATORS)
        _check_percentile(self.percentile)
        for name in ("num_bins", "calibration_batches"):
            _check_int(name, getattr(self, name))
        if self.weight_type != "int8":
            raise ConfigError(
                "QAT quantizes symmetrically to signed 8 bits (TensorRT explicit precision): leave `weight_type` "
                "at 'int8'."
            )
        super().__post_init__()

    @property
    def residual_adds_quantized(self) -> bool:
        """`quantize_residual_adds` as given, or where it is None the recipe's choice."""
        if self.quantize_residual_adds is not None:
            return self.quantize_residual_adds
        return QAT_RECIPES[self.recipe]["quantize_residual_adds"]


QuantConfig = Union[DynamicQuantConfig, StaticQuantConfig, WeightOnlyQuantConfig, QATConfig]


def _describe(value) -> str:
    """A short, JSON-safe description of an object that is not serialised (a callable, a dataset)."""
    if value is None or isinstance(value, str):
        return value
    name = getattr(value, "__qualname__", None) or getattr(value, "__name__", None)
    if name is not None:
        return f"{getattr(value, '__module__', '')}.{name}".lstrip(".")
    if isinstance(value, dict):  # {"texts": [...], "labels": [...]} or {"examples": [...]}
        value = next((v for v in value.values() if isinstance(v, (list, tuple))), value)
        size = f", {len(value)} examples" if isinstance(value, (list, tuple)) else ""
        return f"dict{size}"
    size = f", {len(value)} examples" if hasattr(value, "__len__") else ""
    return f"{type(value).__name__}{size}"


@dataclass
class AutoQuantConfig:
    """Accuracy-aware search: the fastest quantized model whose metric stays within `tolerance` of FP32.

    `metric` is a callable `metric(model) -> float` (higher is better) or a metric name scored on
    `eval_dataset` ("accuracy"/"f1" for classification, "f1"/"exact_match" for question answering; None:
    the task's first). `tolerance` is the largest drop allowed, in the metric's own units (points for the
    percent metrics). The callable and the dataset are not serialised: the saved form keeps their names.
    The search itself is `optimum.quantization.autoquant`; see its docstring for the order of trials.
    """

    VERSION: ClassVar[int] = 1
    requires_calibration: ClassVar[bool] = False  # static candidates use calibration data when it is given
    _NOT_SERIALISED: ClassVar[tuple[str, ...]] = ("metric", "eval_dataset")  # a name-valued metric is kept

    metric: Any = None
    tolerance: float = 0.3
    eval_dataset: Any = None
    backends: list[str] = field(default_factory=lambda: ["onnxruntime"])
    candidates: list[str] | None = None  # names from autoquant's candidate table; None: all of each backend's
    max_trials: int = 40
    time_budget_s: float | None = None
    max_fallback_units: int = 8  # most quantized units kept in FP32 before giving up on a candidate
    latency_batch_size: int = 1
    latency_sequence_length: int = 128
    latency_noise: float = 0.10  # relative latency differences below this are noise: expected speed order decides
    # Untimed pause before each timed call. 0: calls back to back, as a busy service sees them; e.g. 0.1: each call
    # after an idle gap, as a service with sparse requests does. Runtimes rank differently (benchmarks/RESULTS.md,
    # "Call pattern": on MiniLM 1 x 128 ONNX Runtime's dynamic INT8 won after gaps, OpenVINO's static INT8 in bursts).
    latency_pause_s: float = 0.0
    seed: int = 0
    work_dir: str | None = None  # trial log + best model so far; a rerun with the same folder resumes
    show_progress: bool = True
    metric_name: str | None = None  # recorded name of the metric (set from `metric` when it is a name)
    eval_dataset_description: str | None = None

    def __post_init__(self):
        if isinstance(self.work_dir, os.PathLike):
            self.work_dir = os.fspath(self.work_dir)
        _check_field_types(self)
        if isinstance(self.metric, str):
            self.metric_name = self.metric_name or self.metric
        elif self.metric is not None and not callable(self.metric):
            raise ConfigError(f"`metric` must be a metric name or a callable metric(model) -> float, got {self.metric!r}.")
        if isinstance(self.tolerance, bool) or not isinstance(self.tolerance, (int, float)) or self.tolerance < 0:
            raise ConfigError(f"`tolerance` must be a number >= 0 (the largest metric drop allowed), got {self.tolerance!r}.")
        self.backends = _check_patterns("backends", self.backends)
        if not self.backends:
            raise ConfigError("`backends` must name at least one backend, e.g. ['onnxruntime'].")
        if self.candidates is not None:
            self.candidates = _check_patterns("candidates", self.candidates)
        for name in ("max_trials", "latency_batch_size", "latency_sequence_length"):
            _check_int(name, getattr(self, name))
        _check_int("max_fallback_units", self.max_fallback_units, minimum=0)
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ConfigError(f"`time_budget_s` must be a positive number of seconds or None, got {self.time_budget_s!r}.")
        if not 0 <= float(self.latency_noise) < 1:
            raise ConfigError(f"`latency_noise` must be in [0, 1), got {self.latency_noise!r}.")
        if isinstance(self.latency_pause_s, bool) or not isinstance(self.latency_pause_s, (int, float)) \
                or not 0 <= self.latency_pause_s <= 10:
            raise ConfigError(
                f"`latency_pause_s` must be a number of seconds in [0, 10], got {self.latency_pause_s!r}.")
        if self.eval_dataset is not None and self.eval_dataset_description is None:
            self.eval_dataset_description = _describe(self.eval_dataset)
        if callable(self.metric) and self.metric_name is None:
            self.metric_name = _describe(self.metric)

    def to_dict(self) -> dict[str, Any]:
        """The searchable settings; the metric callable and the dataset are kept out (their names stay)."""
        data = {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in self._NOT_SERIALISED}
        data["metric"] = self.metric if isinstance(self.metric, str) else None
        return {"_type": type(self).__name__, "_version": self.VERSION, "_data": data}

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **changes) -> "AutoQuantConfig":
        """A copy with some fields changed; the dataset and metric callable are shared, never copied."""
        return dataclasses.replace(self, **changes)


# Allow-list of classes a serialised config may name.
CONFIG_TYPES: dict[str, type] = {
    cls.__name__: cls for cls in (DynamicQuantConfig, StaticQuantConfig, WeightOnlyQuantConfig, AutoQuantConfig, QATConfig)
}


def _build(cls: type, data: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"Unknown field(s) {sorted(unknown)} for {cls.__name__}. Valid fields: {sorted(names)}.")
    return cls(**data)


def config_from_dict(data: dict) -> QuantConfig:
    """Rebuild a config from `to_dict()` output. Only allow-listed classes load."""
    if not isinstance(data, dict) or "_type" not in data:
        raise ConfigError("A serialised config must be a dict with `_type`, `_version` and `_data` keys.")
    cls = CONFIG_TYPES.get(data["_type"])
    if cls is None:
        raise unknown_name("config type", data["_type"], CONFIG_TYPES)
    if int(data.get("_version", 1)) > cls.VERSION:
        raise ConfigError(
            f"{data['_type']} version {data['_version']} is newer than this library understands ({cls.VERSION}): "
            "upgrade optimum-quantization."
        )
    return _build(cls, dict(data.get("_data", {})))


def config_from_json_string(text: str) -> QuantConfig:
    return config_from_dict(json.loads(text))


def resolve_quant_config(quantize, task: str | None = None) -> QuantConfig | AutoQuantConfig | None:
    """Turn what a user passes as `quantize=` (None, a preset name, a dict or a config) into a config.

    With `task`, a generic preset may mean the task's own recipe (`presets.TASK_PRESETS`: "int8" is weight-only
    8-bit for text generation).
    """
    if isinstance(quantize, str) and task is not None:
        quantize = TASK_PRESETS.get(task, {}).get(quantize, quantize)
    if quantize is None or isinstance(quantize, tuple(CONFIG_TYPES.values())):
        return quantize
    if isinstance(quantize, dict):
        return config_from_dict(quantize)
    if isinstance(quantize, str):
        if quantize in PLANNED_PRESETS:
            raise ConfigError(
                f"Preset {quantize!r} is not available in this version. Available presets: {', '.join(sorted(PRESETS))}."
            )
        if quantize not in PRESETS:
            raise unknown_name("quantization preset", quantize, PRESETS)
        class_name, kwargs = PRESETS[quantize]
        return CONFIG_TYPES[class_name](**kwargs)
    raise ConfigError(f"`quantize` must be None, a preset name, a dict or a config object, got {type(quantize).__name__}.")
