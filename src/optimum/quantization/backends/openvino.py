"""OpenVINO backend: export to IR -> NNCF (static INT8, weight-only 8/4-bit) -> optimum-intel's OVModel classes.

A static INT8 request stores static INT8 on every CPU (`precision="int8"`, the default). Without VNNI it likely runs
slower than FP32 there (our AVX2 benchmark: 0.67x-0.80x), and a warning says so unless `precision="int8"` was passed
explicitly. `precision="int8-weights"` stores INT8 weights with FP32 compute; `precision="auto"` builds static INT8,
INT8 weights and FP32, times the three on this CPU, keeps the fastest (openvino_precision.py) and says which in a
warning, the recipe and the model card: where FP32 wins the FP32 IR is stored. Accuracy control forces static INT8.
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
from ..errors import ConfigError, ModelFileError, damaged_file
from ..evaluation.census import openvino_quantized_counts
from ..export import EXPORT_TASKS, check_exportable
from ..hardware import cpu_info, resolve_reduce_range
from ..recipe import QuantizationRecipe
from .base import Backend, QuantizationRequest, QuantizedModelMixin, runtime_model_class
from .generate_threads import RuntimeGenerateThreadsMixin
from . import nncf_ptq, openvino_precision

logger = logging.getLogger(__name__)

MODEL_XML = "openvino_model.xml"
MODEL_BIN = "openvino_model.bin"
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


class OVQuantModelForCausalLM(QuantizedModelMixin, RuntimeGenerateThreadsMixin, OVModelForCausalLM):
    """optimum-intel's `OVModelForCausalLM`; `generate()` runs with one PyTorch thread (see `generate_threads`)."""


def optimum_model_class(task: str) -> type:
    """optimum-intel's `OVModelFor<Task>` that our class for `task` extends."""
    return runtime_model_class(OpenVINOBackend.model_classes[task])


def export_openvino(request: QuantizationRequest, folder: Path, source=None) -> Path:
    """The FP32 OpenVINO IR of the checkpoint (+ config, generation config) in `folder`; returns the .xml.

    `source`: the checkpoint already loaded and changed (`QuantizationRequest.model_to_export`), exported instead."""
    check_exportable(request.model_type, request.task, exporter="openvino")
    if source is not None:
        from optimum.exporters.openvino import export_from_model
        from optimum.intel import OVConfig

        # dtype fp32: what from_pretrained(export=True, load_in_8bit=False) asks for, so no weight compression here.
        export_from_model(source, folder, task=EXPORT_TASKS[request.task], ov_config=OVConfig(dtype="fp32"))
        return folder / MODEL_XML
    model = optimum_model_class(request.task).from_pretrained(
        request.model_path, export=True, compile=False, load_in_8bit=False, **request.hub_kwargs
    )
    model.save_pretrained(folder)
    return folder / MODEL_XML


class OpenVINOBackend(Backend):
    supported_configs = (StaticQuantConfig, WeightOnlyQuantConfig)
    backend_load_kwargs = BACKEND_OPTIONS
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
        requested = options.get("precision", openvino_precision.DEFAULT_PRECISION)
        fixed = None
        if isinstance(config, StaticQuantConfig):  # a bad precision fails here, before the slow export
            fixed = openvino_precision.fixed_precision(requested, accuracy is not None)
        elif "precision" in options:
            raise ConfigError("`precision` chooses between static INT8 and INT8 weights: it needs quantize='static'.")

        work = tempfile.TemporaryDirectory(prefix="optimum-quantization-ov-")
        work_dir = Path(work.name)
        export_dir = work_dir / "fp32"
        source, head_token = request.model_to_export()
        xml = export_openvino(request, export_dir, source)
        del source
        details: dict = {"fp32_size_bytes": (export_dir / MODEL_BIN).stat().st_size}
        if head_token is not None:
            details["head_token_only"] = head_token
        model_dir = export_dir
        if isinstance(config, StaticQuantConfig):
            model_dir, details["precision"], quantized, more = self._static(
                ov.Core().read_model(str(xml)), export_dir, request, requested, fixed, accuracy, validation_examples,
                load_kwargs, cpu.isa,
            )
            notice = openvino_precision.notice(details["precision"], cpu.has_vnni, explicit="precision" in options)
            if notice is not None:
                logger.warning(notice)
        elif config is not None:
            quantized, more = nncf_ptq.compress_weights(ov.Core().read_model(str(xml)), config)
            model_dir = _save_ir(quantized, export_dir, work_dir / "quantized")
        if config is not None:
            details.update(more)
            details["quantized_nodes"] = openvino_quantized_counts(quantized)
            del quantized
            if model_dir != export_dir:
                details["int8_size_bytes"] = (model_dir / MODEL_BIN).stat().st_size
        recipe = QuantizationRecipe(
            backend=self.name, task=request.task, quantization=config, source_model=str(request.model_path),
            details=details, hardware=cpu.to_dict(),
        )
        model = self._load_model(model_dir, recipe, **load_kwargs)
        model._quantization_workdir = work  # the IR files live as long as the model
        if request.tokenizer is not None:
            model.quantization_preprocessors = [request.tokenizer]
        return model

    def _static(self, model: ov.Model, export_dir: Path, request: QuantizationRequest, requested: str, fixed,
                accuracy, validation_examples, load_kwargs: dict, isa):
        """Build the precision asked for (`fixed`: fixed_precision's answer), or for "auto" every candidate, timed
        as it will be loaded; keep one.

        Returns (folder of the kept IR, details["precision"], the kept ov.Model, the details of how it was built)."""
        config = request.config
        feeds = self._feeds(model, request.calibration_examples, request, config)
        validation = None if accuracy is None else self._feeds(model, validation_examples, request, config)
        names = openvino_precision.CANDIDATES if fixed is None else (fixed[0],)
        built = {name: _build_candidate(name, model, feeds, config, accuracy, validation) for name in names}
        folders = {
            name: export_dir if name == "fp32" else _save_ir(candidate, export_dir, export_dir.parent / name)
            for name, (candidate, _) in built.items()
        }
        if fixed is None:
            precision = openvino_precision.choose_by_measurement(
                {name: candidate for name, (candidate, _) in built.items()}, feeds,
                {name: (folder / MODEL_BIN).stat().st_size for name, folder in folders.items()}, load_kwargs, isa,
            )
        else:
            precision = {"requested": requested, "chosen": fixed[0], "reason": fixed[1]}
        chosen = precision["chosen"]
        return folders[chosen], precision, *built[chosen]

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

    def saved_files(self, recipe: QuantizationRecipe) -> list[str]:
        return [*super().saved_files(recipe), MODEL_XML, MODEL_BIN]

    def file_problem(self, file: Path) -> ModelFileError | None:
        problem = super().file_problem(file)
        if problem is None and file.suffix in (".xml", ".bin"):
            problem = ir_file_problem(file.with_suffix(".xml"), file.suffix)
        return problem

    def _load_model(self, path: Path, recipe: QuantizationRecipe, **load_kwargs):
        cls = self.model_class(recipe.task)
        if recipe.task == "text-generation":
            load_kwargs.setdefault("use_cache", True)
        stored = (recipe.details.get("precision") or {}).get("chosen")
        if stored is not None:
            load_kwargs["ov_config"] = openvino_precision.load_config(
                stored, load_kwargs.get("ov_config"), load_kwargs.get("device"))
        # A str: optimum-intel's check for IR files calls str methods on the id and warns on a Path.
        model = cls.from_pretrained(str(path), **load_kwargs)
        model.quantization_recipe = recipe
        return model


def ir_file_problem(xml: Path, part: str) -> ModelFileError | None:
    """The error saying why OpenVINO cannot read the IR's graph (`part` ".xml") or its weights (".bin", beside the
    .xml); None when the graph parses and the weights hold every byte its constants read."""
    import xml.etree.ElementTree as ElementTree

    try:
        root = ElementTree.parse(xml).getroot()
        reason = None if root.tag == "net" else f"its root element is <{root.tag}>, not <net>"
    except (ElementTree.ParseError, OSError) as err:
        root, reason = None, str(err)
    if part == ".xml":
        return None if reason is None else damaged_file(xml, f"not an OpenVINO IR graph: {reason}")
    if root is None or reason is not None:  # the graph's own problem, reported for the .xml
        return None
    weights = xml.with_suffix(".bin")
    end = 0
    for data in root.iterfind(".//layer[@type='Const']/data"):
        try:
            end = max(end, int(data.get("offset", 0)) + int(data.get("size", 0)))
        except ValueError:
            continue
    size = weights.stat().st_size if weights.is_file() else 0  # load_saved reports a missing file first
    if size < end:
        return damaged_file(weights, f"{size} bytes, {xml.name} reads up to byte {end}")
    return None


def _build_candidate(name: str, model: ov.Model, feeds, config: StaticQuantConfig, accuracy, validation):
    """(ov.Model, details) of one precision for a static request; "fp32" is the export itself."""
    if name == "fp32":
        return model, {}
    if name == "int8":
        return nncf_ptq.quantize_static(
            model.clone(), feeds, config, resolve_reduce_range(config.reduce_range), accuracy, validation
        )
    weights = WeightOnlyQuantConfig(
        bits=8, exclude=list(config.exclude), keep_default_exclusions=config.keep_default_exclusions
    )
    return nncf_ptq.compress_weights(model.clone(), weights)


def _save_ir(model: ov.Model, export_dir: Path, folder: Path) -> Path:
    """`model` as the IR of a copy of the export folder (config, generation config); returns the folder."""
    shutil.copytree(export_dir, folder, ignore=shutil.ignore_patterns("openvino_model.*"))
    ov.save_model(model, str(folder / MODEL_XML), compress_to_fp16=False)
    return folder
