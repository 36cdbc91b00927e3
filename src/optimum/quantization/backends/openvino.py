"""OpenVINO backend: export to IR -> NNCF (static INT8, weight-only 8/4-bit) -> optimum-intel's OVModel classes.

The INT8 precision it stores depends on the CPU (`precision="auto"`, the default): with VNNI/AMX the CPU
plugin runs static INT8 GEMMs on dot-product kernels (seed 002: 2.95x over FP32). Without them (AVX2 only)
oneDNN falls back to its legacy `jit_gemm_i8` kernels, which we profiled no faster than the FP32 brgemm/MLAS
kernels while the u8 x s8 products saturate in 16 bits; there the backend stores INT8 weights and computes in
FP32 (same speed as FP32, a quarter of the size, FP32 accuracy). `precision="int8"` forces static INT8.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import openvino as ov
from optimum.intel import (
    OVModelForCausalLM,
    OVModelForFeatureExtraction,
    OVModelForQuestionAnswering,
    OVModelForSequenceClassification,
    OVModelForTokenClassification,
)

from ..accuracy_control import AccuracyControl
from ..calibration import load_calibration_examples, tokenize_examples
from ..configuration import DynamicQuantConfig, StaticQuantConfig, WeightOnlyQuantConfig
from ..errors import ConfigError
from ..evaluation.census import openvino_quantized_counts
from ..export import check_exportable
from ..hardware import CpuInfo, cpu_info, resolve_reduce_range
from ..recipe import QuantizationRecipe
from .base import Backend, QuantizationRequest, QuantizedModelMixin, runtime_model_class
from . import nncf_ptq

logger = logging.getLogger(__name__)

MODEL_XML = "openvino_model.xml"
PRECISIONS = ("auto", "int8", "int8-weights")
# OpenVINO-only options of from_pretrained, taken out before the rest goes to the OVModel class.
BACKEND_OPTIONS = ("precision", "accuracy_control")


class OVQuantModelForSequenceClassification(QuantizedModelMixin, OVModelForSequenceClassification):
    pass


class OVQuantModelForQuestionAnswering(QuantizedModelMixin, OVModelForQuestionAnswering):
    pass


class OVQuantModelForTokenClassification(QuantizedModelMixin, OVModelForTokenClassification):
    pass


class OVQuantModelForFeatureExtraction(QuantizedModelMixin, OVModelForFeatureExtraction):
    pass


class OVQuantModelForCausalLM(QuantizedModelMixin, OVModelForCausalLM):
    pass


def optimum_model_class(task: str) -> type:
    """optimum-intel's `OVModelFor<Task>` that our class for `task` extends."""
    return runtime_model_class(OpenVINOBackend.model_classes[task])


def choose_precision(requested: str, cpu: CpuInfo) -> tuple[str, str]:
    """(precision to store, why) for a static INT8 request on `cpu`."""
    if requested not in PRECISIONS:
        raise ConfigError(f"`precision` must be one of {PRECISIONS}, got {requested!r}.")
    if requested != "auto":
        return requested, "requested"
    if cpu.has_vnni:
        return "int8", "the CPU has INT8 dot-product instructions (VNNI/AMX): OpenVINO runs static INT8 GEMMs on them"
    return "int8-weights", (
        "the CPU has no VNNI/AMX: OpenVINO's INT8 GEMMs fall back to oneDNN jit_gemm_i8 kernels (and u8 x s8 "
        "products saturate in 16 bits); measured on an AVX2 CPU, static INT8 ran at 0.67x and INT8 weights with FP32 "
        "compute at 0.89x of FP32 speed (benchmarks/results/openvino_squad_speed.md), so INT8 weights are stored "
        "for a 4x smaller file, not for speed; pass precision='int8' to force static INT8"
    )


def export_openvino(request: QuantizationRequest, folder: Path) -> Path:
    """The FP32 OpenVINO IR of the checkpoint (+ config, generation config) in `folder`; returns the .xml."""
    check_exportable(request.model_type, request.task, exporter="openvino")
    model = optimum_model_class(request.task).from_pretrained(
        request.model_path, export=True, compile=False, load_in_8bit=False, **request.hub_kwargs
    )
    model.save_pretrained(folder)
    return folder / MODEL_XML


class OpenVINOBackend(Backend):
    supported_configs = (StaticQuantConfig, WeightOnlyQuantConfig)
    model_classes = {
        "text-classification": OVQuantModelForSequenceClassification,
        "question-answering": OVQuantModelForQuestionAnswering,
        "token-classification": OVQuantModelForTokenClassification,
        "feature-extraction": OVQuantModelForFeatureExtraction,
        "text-generation": OVQuantModelForCausalLM,
    }

    def check_supports(self, task, config) -> None:
        if isinstance(config, DynamicQuantConfig):
            raise ConfigError(
                "OpenVINO has no dynamic INT8 recipe here: use quantize='static' (NNCF, with calibration data) "
                "or weight-only 'w8'/'w4'."
            )
        super().check_supports(task, config)
        if isinstance(config, StaticQuantConfig):
            nncf_ptq.check_static(config)
        if isinstance(config, WeightOnlyQuantConfig):
            if config.bits == 4 and task != "text-generation":
                raise ConfigError(
                    f"4-bit weight-only quantization is for causal LMs (memory-bound decoding); a {task!r} encoder "
                    "computes with its weights at every token and loses accuracy for no speed: use quantize='static' "
                    "or 'w8'."
                )
            if config.accuracy_level != 4:
                raise ConfigError("`accuracy_level` is ONNX Runtime's MatMulNBits option: leave it at 4 with backend='openvino'.")

    def quantize(self, request: QuantizationRequest):
        load_kwargs = dict(request.load_kwargs)
        options = {name: load_kwargs.pop(name) for name in BACKEND_OPTIONS if name in load_kwargs}
        config = request.config
        accuracy = options.get("accuracy_control")
        if accuracy is not None and not isinstance(accuracy, AccuracyControl):
            raise ConfigError("`accuracy_control` must be an optimum.quantization.AccuracyControl.")
        if accuracy is not None and not isinstance(config, StaticQuantConfig):
            raise ConfigError("Accuracy control applies to static INT8: pass quantize='static' with calibration data.")
        # Read before the slow export, like the calibration data, so a bad file fails fast.
        validation_examples = None if accuracy is None else load_calibration_examples(
            accuracy.validation_data, text_column=accuracy.text_column
        )
        cpu = cpu_info()
        details: dict = {}
        precision = None
        if isinstance(config, StaticQuantConfig):
            precision, why = choose_precision(options.get("precision", "auto"), cpu)
            if accuracy is not None and precision != "int8":
                precision, why = "int8", "accuracy control needs static INT8"
            details["precision"] = {"requested": options.get("precision", "auto"), "chosen": precision, "reason": why}
            if why != "requested":
                logger.info("OpenVINO precision: %s (%s).", precision, why)
        elif "precision" in options:
            raise ConfigError("`precision` chooses between static INT8 and INT8 weights: it needs quantize='static'.")

        work = tempfile.TemporaryDirectory(prefix="optimum-quantization-ov-")
        work_dir = Path(work.name)
        export_dir = work_dir / "fp32"
        xml = export_openvino(request, export_dir)
        details["fp32_size_bytes"] = (export_dir / "openvino_model.bin").stat().st_size
        model_dir = export_dir
        if config is not None:
            core = ov.Core()
            model = core.read_model(str(xml))
            if precision == "int8":
                feeds = self._feeds(model, request.calibration_examples, request, config)
                validation = None if accuracy is None else self._feeds(model, validation_examples, request, config)
                quantized, more = nncf_ptq.quantize_static(
                    model, feeds, config, resolve_reduce_range(config.reduce_range), accuracy, validation
                )
            elif precision == "int8-weights":
                weights = WeightOnlyQuantConfig(
                    bits=8, exclude=list(config.exclude), keep_default_exclusions=config.keep_default_exclusions
                )
                quantized, more = nncf_ptq.compress_weights(model, weights)
            else:
                quantized, more = nncf_ptq.compress_weights(model, config)
            details.update(more)
            model_dir = work_dir / "quantized"
            shutil.copytree(export_dir, model_dir, ignore=shutil.ignore_patterns("openvino_model.*"))
            ov.save_model(quantized, str(model_dir / MODEL_XML), compress_to_fp16=False)
            details["quantized_nodes"] = openvino_quantized_counts(quantized)
            del model, quantized
            details["int8_size_bytes"] = (model_dir / "openvino_model.bin").stat().st_size
        recipe = QuantizationRecipe(
            backend=self.name, task=request.task, quantization=config, source_model=str(request.model_path),
            details=details, hardware=cpu.to_dict(),
        )
        model = self._load_model(model_dir, recipe, **load_kwargs)
        model._quantization_workdir = work  # the IR files live as long as the model
        if request.tokenizer is not None:
            model.quantization_preprocessors = [request.tokenizer]
        return model

    @staticmethod
    def _feeds(model: ov.Model, examples, request: QuantizationRequest, config) -> list[dict]:
        """Tokenized examples shaped for the IR's inputs (decoders also get position ids and beam indices).

        `examples` is never None: static configs require calibration data, which modeling checks first."""
        names = [i.get_any_name() for i in model.inputs]
        feeds = tokenize_examples(
            examples, request.tokenizer, sequence_length=config.calibration.sequence_length, input_names=names
        )
        for feed in feeds:
            if "position_ids" in names and "position_ids" not in feed:
                mask = feed["attention_mask"]
                feed["position_ids"] = np.clip(np.cumsum(mask, -1) - 1, 0, None).astype("int64")
            if "beam_idx" in names:
                feed["beam_idx"] = np.arange(feed["input_ids"].shape[0], dtype="int32")
        return feeds

    def load(self, path: Path, recipe: QuantizationRecipe, **load_kwargs):
        """Load an OpenVINO IR folder (ours, or another tool's in optimum-intel's layout) as saved."""
        if not (Path(path) / MODEL_XML).is_file():
            raise ConfigError(f"{path} has a recipe for backend 'openvino' but no {MODEL_XML}: the folder is incomplete.")
        for name in BACKEND_OPTIONS:
            if name in load_kwargs:
                raise ConfigError(f"`{name}` applies when quantizing; {path} is already quantized.")
        return self._load_model(path, recipe, **load_kwargs)

    def _load_model(self, path: Path, recipe: QuantizationRecipe, **load_kwargs):
        cls = self.model_class(recipe.task)
        if recipe.task == "text-generation":
            load_kwargs.setdefault("use_cache", True)
        model = cls.from_pretrained(path, **load_kwargs)
        model.quantization_recipe = recipe
        return model
