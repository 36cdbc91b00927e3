"""The models a benchmark or evaluation compares, built by name: ours, the FP32 baselines, and the peers'.

A variant is a `VariantSpec` (name, builder kind, options) that round-trips through JSON, so a fresh
process can load a variant by itself (cold start and peak memory are measured that way). Builders are
registered by kind, like backends: `register_variant_kind("kind")(BuilderClass)`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .configuration import DynamicQuantConfig, StaticQuantConfig, config_from_dict
from .errors import BackendUnavailableError, ConfigError, unknown_name
from .modeling import QUANT_MODEL_CLASSES, fp32_reference
from .recipe import RECIPE_FILE, QuantizationRecipe
from .tasks import TASKS

logger = logging.getLogger(__name__)

SPEC_FILE = "benchmark_variant.json"


@dataclass
class VariantSpec:
    name: str
    kind: str
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "VariantSpec":
        return cls(name=data["name"], kind=data["kind"], options=dict(data.get("options") or {}))


@dataclass
class BuildContext:
    """What every builder gets: the FP32 task checkpoint all variants start from, calibration texts, and the
    threads the variants will run with."""

    source_dir: Path
    task: str
    calibration_file: Path | None = None
    threads: int | None = None


class VariantBuilder:
    """Builds a variant's folder once, and loads it (in any process) as a model with the transformers call API."""

    requires: ClassVar[tuple[str, ...]] = ()  # importable modules the builder needs
    extra: ClassVar[str] = ""  # the pip extra that provides them
    torch_free: ClassVar[bool] = False  # its model runs in a process that imports neither torch nor transformers

    def check_available(self) -> None:
        import importlib.util

        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            raise BackendUnavailableError(
                f"needs {', '.join(missing)}: pip install \"optimum-quantization[{self.extra}]\""
            )

    def build(self, spec: VariantSpec, context: BuildContext, folder: Path) -> None:
        raise NotImplementedError

    def load(self, spec: VariantSpec, folder: Path, task: str, threads: int | None):
        raise NotImplementedError

    def runtime_details(self, spec: VariantSpec, model) -> dict:
        """What the runtime decided when it loaded `model` and a report should show (e.g. OpenVINO running an
        FP32 IR in bf16 on AMX CPUs); {} when nothing is worth recording."""
        return {}


VARIANT_KINDS: dict[str, VariantBuilder] = {}


def register_variant_kind(kind: str):
    def decorator(cls):
        VARIANT_KINDS[kind] = cls()
        return cls

    return decorator


def builder_for(spec: VariantSpec) -> VariantBuilder:
    if spec.kind not in VARIANT_KINDS:
        raise unknown_name("variant kind", spec.kind, VARIANT_KINDS)
    return VARIANT_KINDS[spec.kind]


def _ort_session_options(threads: int | None):
    if threads is None:
        return None
    from .backends.ort_session import with_intra_op_threads

    options = with_intra_op_threads(None, threads)
    options.inter_op_num_threads = 1
    return options


def _transformers_class(task: str):
    import transformers

    return getattr(transformers, TASKS[task])


@register_variant_kind("pytorch")
class PyTorchFP32(VariantBuilder):
    """The transformers model in eager PyTorch FP32: what users run before they quantize."""

    def build(self, spec, context, folder):
        _transformers_class(context.task).from_pretrained(context.source_dir).save_pretrained(folder)

    def load(self, spec, folder, task, threads):
        return _transformers_class(task).from_pretrained(folder).eval()


class OpenVINORuntimeDetails:
    """Records the compiled model's inference precision: on CPUs with AMX/AVX512-BF16 OpenVINO runs an FP32 IR
    in bf16 unless told otherwise, which a row named "fp32" must say."""

    def runs_on_openvino(self, spec: VariantSpec) -> bool:
        return True

    def runtime_details(self, spec, model) -> dict:
        if not self.runs_on_openvino(spec):  # never import openvino into another backend's worker
            return {}
        from .backends.openvino_precision import inference_precision

        precision = inference_precision(model)
        return {"inference_precision": precision} if precision else {}


@register_variant_kind("quantized")
class OurQuantized(OpenVINORuntimeDetails, VariantBuilder):
    """`QuantModelFor<Task>.from_pretrained(..., backend=, quantize=)`: options {backend, quantize}, and
    `calibration: false` to build without the run's calibration texts (what a user who has none gets)."""

    @staticmethod
    def backend_of(spec: VariantSpec) -> str:
        return spec.options.get("backend", "onnxruntime")

    def runs_on_openvino(self, spec):
        return self.backend_of(spec) == "openvino"

    def build(self, spec, context, folder):
        quantize = spec.options.get("quantize")
        with fp32_reference():  # an FP32 variant is one of the models compared, built on purpose
            model = QUANT_MODEL_CLASSES[context.task].from_pretrained(
                str(context.source_dir),
                backend=self.backend_of(spec),
                quantize=config_from_dict(quantize) if isinstance(quantize, dict) else quantize,
                calibration_dataset=str(context.calibration_file)
                if context.calibration_file and spec.options.get("calibration", True) else None,
            )
        model.save_pretrained(folder)

    def load(self, spec, folder, task, threads):
        kwargs = runtime_load_kwargs(self.backend_of(spec), threads)
        model = QUANT_MODEL_CLASSES[task].from_pretrained(str(folder), **kwargs)
        return model.eval() if hasattr(model, "eval") else model


def runtime_load_kwargs(backend: str, threads: int | None) -> dict:
    """from_pretrained keyword arguments that run a saved model of `backend` on `threads` threads, as the harness
    times it (ONNX Runtime workers pinned, OpenVINO's latency hint); {} for threads=None or PyTorch."""
    if threads is None:
        return {}
    if backend in ("onnxruntime", "onnxruntime-openvino"):
        return {"session_options": _ort_session_options(threads)}
    if backend == "openvino":
        return {"ov_config": _ov_config(threads)}
    return {}


@register_variant_kind("onnxruntime-fused")
class OnnxRuntimeFusedFP32(OurQuantized):
    """ONNX Runtime FP32 with ORT's transformer fusions: the fair FP32 baseline for a fused INT8 graph."""

    requires = ("onnxruntime",)
    extra = "onnxruntime"

    def build(self, spec, context, folder):
        from transformers import AutoConfig

        from .backends.onnxruntime import MODEL_FILE, fuse_graph

        plain = VariantSpec(spec.name, "quantized", {"backend": "onnxruntime", "quantize": None})
        super().build(plain, context, folder)
        onnx_path = folder / MODEL_FILE
        fused = fuse_graph(onnx_path, folder / "fused.onnx", AutoConfig.from_pretrained(folder))
        if fused is None:
            raise ConfigError(f"ONNX Runtime has no transformer fusions for this architecture ({spec.name}).")
        (folder / "fused.onnx").replace(onnx_path)
        recipe = QuantizationRecipe.load(folder)
        recipe.details.update(graph_fused=True, fused_ops=fused)
        recipe.save(folder)


@register_variant_kind("optimum-ortquantizer")
class OptimumORTQuantizer(VariantBuilder):
    """optimum-onnx's `ORTQuantizer` with an `AutoQuantizationConfig` preset (options: preset, per_channel)."""

    requires = ("onnxruntime", "optimum.onnxruntime")
    extra = "onnxruntime"
    PRESETS = ("avx512_vnni", "avx512", "avx2", "arm64")
    QUANTIZED_FILE = "model_quantized.onnx"

    def build(self, spec, context, folder):
        import tempfile

        from optimum.onnxruntime import ORTQuantizer
        from optimum.onnxruntime.configuration import AutoQuantizationConfig

        from .backends.onnxruntime import optimum_model_class

        preset = spec.options.get("preset", "avx512_vnni")
        if preset not in self.PRESETS:
            raise unknown_name("ORTQuantizer preset", preset, self.PRESETS)
        config = getattr(AutoQuantizationConfig, preset)(is_static=False, per_channel=spec.options.get("per_channel", False))
        with tempfile.TemporaryDirectory() as exported:
            optimum_model_class(context.task).from_pretrained(context.source_dir, export=True).save_pretrained(exported)
            ORTQuantizer.from_pretrained(exported).quantize(quantization_config=config, save_dir=folder)

    def load(self, spec, folder, task, threads):
        from .backends.onnxruntime import optimum_model_class

        return optimum_model_class(task).from_pretrained(
            folder, file_name=self.QUANTIZED_FILE, session_options=_ort_session_options(threads)
        )


def _ov_config(threads: int | None) -> dict:
    return {"PERFORMANCE_HINT": "LATENCY", **({"INFERENCE_NUM_THREADS": threads} if threads else {})}


@register_variant_kind("openvino")
class OpenVINOQuantized(OurQuantized):
    """Ours on OpenVINO: options {quantize, precision, ov_config} (precision "auto", "int8" or "int8-weights";
    ov_config is added to the compile settings, e.g. {"INFERENCE_PRECISION_HINT": "bf16"})."""

    requires = ("openvino", "nncf", "optimum.intel")
    extra = "openvino,nncf"

    @staticmethod
    def backend_of(spec):
        return "openvino"

    def build(self, spec, context, folder):
        quantize = spec.options.get("quantize")
        extra = {"precision": spec.options["precision"]} if "precision" in spec.options else {}
        model = QUANT_MODEL_CLASSES[context.task].from_pretrained(
            str(context.source_dir),
            backend=self.backend_of(spec),
            quantize=config_from_dict(quantize) if isinstance(quantize, dict) else quantize,
            calibration_dataset=str(context.calibration_file) if context.calibration_file else None,
            ov_config=self._compile_settings(spec, context.threads),  # "auto" times candidates as they will load
            **extra,
        )
        model.save_pretrained(folder)

    def load(self, spec, folder, task, threads):
        return QUANT_MODEL_CLASSES[task].from_pretrained(str(folder), ov_config=self._compile_settings(spec, threads))

    @staticmethod
    def _compile_settings(spec, threads: int | None) -> dict:
        return {**_ov_config(threads), **(spec.options.get("ov_config") or {})}


@register_variant_kind("optimum-intel-ovquantizer")
class OptimumIntelOVQuantizer(OpenVINORuntimeDetails, VariantBuilder):
    """optimum-intel's `OVQuantizer` with its default `OVQuantizationConfig()` (static INT8), fed our calibration data."""

    requires = ("openvino", "nncf", "optimum.intel")
    extra = "openvino,nncf"
    NUM_SAMPLES = 128

    def build(self, spec, context, folder):
        import nncf
        from optimum.intel import OVConfig, OVQuantizationConfig, OVQuantizer
        from transformers import AutoTokenizer

        from .backends.openvino import optimum_model_class
        from .calibration import load_calibration_examples, tokenize_examples

        if context.calibration_file is None:
            raise ConfigError(f"{spec.name}: OVQuantizer's static INT8 needs calibration data.")
        model = optimum_model_class(context.task).from_pretrained(context.source_dir, export=True, compile=False)
        tokenizer = AutoTokenizer.from_pretrained(context.source_dir)
        examples = load_calibration_examples(str(context.calibration_file), num_samples=self.NUM_SAMPLES)
        feeds = tokenize_examples(examples, tokenizer, sequence_length=128, input_names=list(model.input_names))
        OVQuantizer(model).quantize(
            calibration_dataset=nncf.Dataset(feeds), save_directory=folder,
            ov_config=OVConfig(quantization_config=OVQuantizationConfig(num_samples=len(feeds))),
        )
        tokenizer.save_pretrained(folder)

    def load(self, spec, folder, task, threads):
        from .backends.openvino import optimum_model_class

        return optimum_model_class(task).from_pretrained(folder, ov_config=_ov_config(threads))


def _quantized(backend: str, quantize) -> dict:
    return {"backend": backend, "quantize": quantize}


# Variants by name, in the order a report lists them: FP32 baselines first, then ours, then the peers'.
NAMED_VARIANTS: dict[str, VariantSpec] = {
    spec.name: spec
    for spec in (
        VariantSpec("pytorch-fp32", "pytorch"),
        VariantSpec("pytorch-int8-dynamic", "quantized", _quantized("torch", "dynamic")),
        VariantSpec("ort-fp32", "quantized", _quantized("onnxruntime", None)),
        VariantSpec("ort-fp32-fused", "onnxruntime-fused"),
        VariantSpec("ort-int8-dynamic", "quantized", _quantized("onnxruntime", "dynamic")),
        VariantSpec("ort-int8-static", "quantized", _quantized("onnxruntime", "static")),
        # Our defaults before text classifiers' last layer was cut to the head's token (`head_token_only`).
        VariantSpec("ort-int8-dynamic-all-tokens", "quantized",
                    _quantized("onnxruntime", DynamicQuantConfig(head_token_only=False).to_dict())),
        VariantSpec("ort-int8-static-all-tokens", "quantized",
                    _quantized("onnxruntime", StaticQuantConfig(head_token_only=False).to_dict())),
        VariantSpec("ort-int8-weight-only", "quantized", _quantized("onnxruntime", "w8")),
        VariantSpec("optimum-avx512_vnni", "optimum-ortquantizer", {"preset": "avx512_vnni"}),
        VariantSpec("optimum-avx2", "optimum-ortquantizer", {"preset": "avx2"}),
        VariantSpec("ov-fp32", "openvino", {"quantize": None}),
        VariantSpec("ov-int8-nncf", "openvino", {"quantize": "static", "precision": "int8"}),
        # The same model with what is not INT8 computed in bf16, OpenVINO's own choice on AMX/AVX512-BF16 CPUs
        # (ours computes it in f32 unless told otherwise).
        VariantSpec("ov-int8-bf16-compute", "openvino", {"quantize": "static", "precision": "int8",
                                                         "ov_config": {"INFERENCE_PRECISION_HINT": "bf16"}}),
        VariantSpec("ov-int8-all-tokens", "openvino", {
            "quantize": StaticQuantConfig(head_token_only=False).to_dict(), "precision": "int8"}),
        VariantSpec("ov-int8-auto", "openvino", {"quantize": "static", "precision": "auto"}),
        VariantSpec("ov-int8-weights", "openvino", {"quantize": "static", "precision": "int8-weights"}),
        VariantSpec("ov-int8-symmetric", "openvino", {"quantize": StaticQuantConfig(symmetric=True).to_dict(),
                                                      "precision": "int8"}),
        # NNCF's mixed preset, our OpenVINO static default before symmetric="auto" (and optimum-intel's scheme).
        VariantSpec("ov-int8-asymmetric", "openvino", {"quantize": StaticQuantConfig(symmetric=False).to_dict(),
                                                       "precision": "int8"}),
        # Our OpenVINO static default before it split the FFN output GEMMs' outlier channels off.
        VariantSpec("ov-int8-no-outlier-split", "openvino", {
            "quantize": StaticQuantConfig(outlier_channel_ratio=None).to_dict(), "precision": "int8"}),
        VariantSpec("ov-w8", "openvino", {"quantize": "w8"}),
        VariantSpec("ov-w4", "openvino", {"quantize": "w4"}),
        VariantSpec("optimum-intel-int8", "optimum-intel-ovquantizer"),
        VariantSpec("ort-ovep-fp32", "quantized", _quantized("onnxruntime-openvino", None)),
        VariantSpec("ort-ovep-int8-static", "quantized", _quantized("onnxruntime-openvino", "static")),
    )
}
DEFAULT_BASELINE = "ort-fp32-fused"


def _json_file(path: Path, what: str):
    if not path.is_file():
        raise ConfigError(f"{what}: file {path} does not exist.")
    return json.loads(path.read_text(encoding="utf-8"))


def parse_variant(value) -> VariantSpec:
    """A `VariantSpec` from a spec, its dict, a registered name, `NAME=BACKEND:QUANTIZE`, or a JSON file holding a
    spec's dict (`{"name", "kind", "options"}`: any kind with its options, e.g. an OpenVINO variant with a fixed
    precision).

    QUANTIZE is a preset name, `none`, or a path to a JSON file holding a quantization config.
    """
    if isinstance(value, VariantSpec):
        return value
    if isinstance(value, dict):
        return VariantSpec.from_dict(value)
    if value in NAMED_VARIANTS:
        return NAMED_VARIANTS[value]
    if str(value).endswith(".json") and "=" not in str(value):
        data = _json_file(Path(value), "Variant spec")
        if not isinstance(data, dict) or not {"name", "kind"} <= set(data):
            raise ConfigError(f"Variant spec file {value} must hold a JSON object with 'name', 'kind' and 'options'.")
        spec = VariantSpec.from_dict(data)
        builder_for(spec)  # an unknown kind fails here, with the kinds there are
        return spec
    name, sep, rest = str(value).partition("=")
    backend, colon, quantize = rest.partition(":")
    if not (sep and colon and name and backend and quantize):
        raise ConfigError(
            f"Unknown variant {value!r}: use one of {', '.join(NAMED_VARIANTS)}, or NAME=BACKEND:QUANTIZE "
            "(a preset, 'none', or a JSON config file), e.g. mine=onnxruntime:static, or a JSON file holding a "
            "variant spec {name, kind, options}."
        )
    if quantize.endswith(".json"):
        quantize = _json_file(Path(quantize), f"Variant {name!r}: config")
    elif quantize == "none":
        quantize = None
    return VariantSpec(name, "quantized", _quantized(backend, quantize))


def parse_variants(values) -> list[VariantSpec]:
    specs = [parse_variant(v) for v in values]
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"Variant names must be unique; repeated: {', '.join(duplicates)}.")
    if not specs:
        raise ConfigError("Name at least one variant.")
    return specs


def prepare_source(model_path: str, task: str, folder: Path) -> Path:
    """Save the FP32 task checkpoint every variant is built from.

    A base encoder gets a freshly initialised task head here; saving it once gives every variant the same head.
    """
    import torch

    if (Path(model_path) / RECIPE_FILE).is_file():
        raise ConfigError(f"{model_path} is already quantized: benchmark from the FP32 checkpoint.")
    torch.manual_seed(0)
    model = _transformers_class(task).from_pretrained(model_path)
    model.save_pretrained(folder)
    try:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(model_path).save_pretrained(folder)
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(f"No tokenizer loads from {model_path}: {err}") from err
    return folder


def build_variant(spec: VariantSpec, context: BuildContext, folder: Path) -> Path:
    """Build `spec` into `folder` and leave its spec beside it, so another process can load it."""
    builder = builder_for(spec)
    builder.check_available()
    folder.mkdir(parents=True, exist_ok=True)
    builder.build(spec, context, folder)
    (folder / SPEC_FILE).write_text(json.dumps(spec.to_dict(), indent=2), encoding="utf-8")
    return folder


def _stored_spec(folder: Path) -> VariantSpec:
    return VariantSpec.from_dict(json.loads((Path(folder) / SPEC_FILE).read_text(encoding="utf-8")))


def load_variant(folder: Path, task: str, threads: int | None = None):
    """Load a built variant folder (in this process) as a model callable like a transformers model."""
    spec = _stored_spec(folder)
    return builder_for(spec).load(spec, Path(folder), task, threads)


def runtime_details(folder: Path, model) -> dict:
    """The builder's `runtime_details` of a model loaded from a built variant folder."""
    spec = _stored_spec(folder)
    return builder_for(spec).runtime_details(spec, model)

