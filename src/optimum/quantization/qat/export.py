"""Write a QAT (or calibrate-only) model as Q/DQ ONNX for ONNX Runtime / TensorRT, or as OpenVINO IR.

The folder gets the runtime's files, config.json, the tokenizer and `quantization_config.json` (the QATConfig,
the quantizer counts, the Q/DQ census), so `QuantModelFor<Task>.from_pretrained(dir)` loads it back.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

import onnx
import torch

from ..backends.onnxruntime import MODEL_FILE
from ..backends.tensorrt import validate_explicit_precision
from ..configuration import QATConfig
from ..errors import ConfigError, UnsupportedModelError, unknown_name
from ..evaluation.census import int8_op_counts, openvino_quantized_counts
from ..export import EXPORT_TASKS
from ..hardware import cpu_info
from ..recipe import QuantizationRecipe, quantized_folder
from . import nncf as qat_nncf
from .prepare import is_prepared, quantizer_counts, uncalibrated

OPENVINO_MODEL_FILE = "openvino_model.xml"
ONNX_OPSET = 17
# Model class name suffix -> task (the head decides what the exported graph returns).
_TASK_BY_CLASS_SUFFIX = {
    "ForSequenceClassification": "text-classification",
    "ForQuestionAnswering": "question-answering",
    "ForTokenClassification": "token-classification",
    "Model": "feature-extraction",
}
# Decoders export with a KV cache that ORTModelForCausalLM drives; QAT export covers the encoder-style tasks.
EXPORTABLE_TASKS = ("text-classification", "question-answering", "token-classification", "feature-extraction")


def infer_task(model) -> str:
    name = type(model).__name__
    for suffix, task in _TASK_BY_CLASS_SUFFIX.items():
        if name.endswith(suffix):
            return task
    raise UnsupportedModelError(
        f"Cannot tell the task of {name}; pass `task=` (one of {', '.join(EXPORTABLE_TASKS)})."
    )


def _check_model(model, config: QATConfig) -> None:
    if config.method == "nncf":
        if not qat_nncf.is_nncf_model(model):
            raise ConfigError("The model holds no NNCF quantizers: run it through QATTrainer (method='nncf') first.")
        return
    if not is_prepared(model):
        raise ConfigError("The model holds no fake quantizers: prepare it (QATTrainer does) before saving it quantized.")
    missing = uncalibrated(model)
    if missing:
        raise ConfigError(f"{len(missing)} quantizer(s) were never calibrated (first: {missing[0]}); calibrate first.")


def export_qdq_onnx(model, output_dir: Path, task: str, tokenizer=None, config: QATConfig | None = None) -> Path:
    """Trace the fake-quant model (TorchScript exporter: `dynamo=False`) into `output_dir/model.onnx` with Q/DQ pairs."""
    from optimum.exporters.onnx import onnx_export_from_model

    if task not in EXPORTABLE_TASKS:
        raise UnsupportedModelError(f"QAT export supports the tasks {', '.join(EXPORTABLE_TASKS)}, not {task!r}.")
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), qat_nncf.onnx_export_mode(model, config):
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            onnx_export_from_model(
                model,
                output_dir,
                task=EXPORT_TASKS[task],
                opset=ONNX_OPSET,  # per-channel QuantizeLinear needs 13+
                do_validation=False,
                preprocessors=[tokenizer] if tokenizer is not None else None,
            )
    finally:
        model.train(was_training)
    path = output_dir / MODEL_FILE
    if not path.is_file():
        raise UnsupportedModelError(f"The ONNX export produced no {MODEL_FILE}: {sorted(p.name for p in output_dir.iterdir())}.")
    return path


def _write_onnx(model, staging: Path, task: str, tokenizer, config, backend: str) -> dict:
    path = export_qdq_onnx(model, staging, task, tokenizer, config)
    graph = onnx.load(str(path))  # parsed once for both the census and the TensorRT check
    details = {"int8_ops": int8_op_counts(graph), "int8_size_bytes": path.stat().st_size}
    if backend == "tensorrt":
        details["tensorrt_validation"] = validate_explicit_precision(graph)
    return details


def _write_openvino(model, staging: Path, task: str, tokenizer, config, backend: str) -> dict:
    """Q/DQ ONNX converted by OpenVINO: each Q/DQ pair becomes an INT8 FakeQuantize (optimum-intel's layout)."""
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="optimum-quantization-qat-") as tmp:
        onnx_path = export_qdq_onnx(model, Path(tmp), task, tokenizer, config)
        ov_model = ov.convert_model(str(onnx_path))
        ov.save_model(ov_model, str(staging / OPENVINO_MODEL_FILE), compress_to_fp16=False)
        for item in Path(tmp).iterdir():
            if item.is_file() and item.name != MODEL_FILE:
                shutil.copy2(item, staging / item.name)
    return {"openvino_fake_quantize_nodes": openvino_quantized_counts(ov_model).get("FakeQuantize", 0)}


WRITERS = {"onnxruntime": _write_onnx, "tensorrt": _write_onnx, "openvino": _write_openvino}


def save_quantized(model, save_directory, backend: str, config: QATConfig, *, task: str | None = None,
                   tokenizer=None, source_model: str = "", metrics: dict | None = None) -> Path:
    """Export the trained fake-quant / NNCF model for `backend` into `save_directory`.

    Only the model's files are written, each atomically; other files there (a Trainer's checkpoints) stay.
    """
    if backend not in WRITERS:
        raise unknown_name("QAT export backend", backend, WRITERS)
    _check_model(model, config)
    task = task or infer_task(model)
    with quantized_folder(save_directory) as staging:
        details = WRITERS[backend](model, staging, task, tokenizer, config, backend)
        if config.method == "fake_quant":
            details["quantizers"] = quantizer_counts(model)
        QuantizationRecipe(
            backend=backend,
            task=task,
            quantization=config,
            source_model=source_model or str(getattr(model.config, "_name_or_path", "")),
            details=details,
            metrics=dict(metrics or {}),
            hardware=cpu_info().to_dict(),
        ).save(staging)
    return Path(save_directory)
