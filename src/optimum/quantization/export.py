"""PyTorch checkpoint -> ONNX through optimum's exporters. No quantization logic here."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from .errors import UnsupportedModelError

logger = logging.getLogger(__name__)

# Our task name -> the exporter's task name (decoders are exported with their KV cache).
EXPORT_TASKS = {
    "text-classification": "text-classification",
    "question-answering": "question-answering",
    "token-classification": "token-classification",
    "feature-extraction": "feature-extraction",
    "text-generation": "text-generation-with-past",
}


def check_exportable(model_type: str, task: str, exporter: str = "onnx") -> None:
    """Raise UnsupportedModelError when optimum's `exporter` ("onnx" or "openvino") cannot export this model for `task`."""
    import importlib

    importlib.import_module(f"optimum.exporters.{exporter}")  # fills the TasksManager tables
    from optimum.exporters.tasks import TasksManager

    shown = {"onnx": "ONNX", "openvino": "OpenVINO"}.get(exporter, exporter)
    try:
        tasks = TasksManager.get_supported_tasks_for_model_type(model_type, exporter, library_name="transformers")
    except KeyError as err:
        raise UnsupportedModelError(
            f"Model type {model_type!r} cannot be exported to {shown} by optimum's exporter. "
            "Use a supported architecture (BERT, RoBERTa, DistilBERT, GPT-2, LLaMA, ...) or the 'torch' backend."
        ) from err
    if EXPORT_TASKS[task] not in tasks:
        raise UnsupportedModelError(
            f"Model type {model_type!r} supports the {shown} export tasks {sorted(tasks)}, not {EXPORT_TASKS[task]!r}."
        )


def export_onnx(model_path: str, output_dir: Path, task: str, *, model_type: str, **hub_kwargs) -> Path:
    """Export `model_path` to `output_dir/model.onnx` (plus config and preprocessor files); return the ONNX path."""
    import torch
    from optimum.exporters.onnx import main_export

    check_exportable(model_type, task)
    with warnings.catch_warnings():
        # The tracer warns about constants in transformers' mask helpers on every export: noise to a user.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        main_export(
            model_path,
            output=output_dir,
            task=EXPORT_TASKS[task],
            library_name="transformers",
            do_validation=False,  # we compare outputs ourselves, against the quantized model too
            **hub_kwargs,
        )
    onnx_path = Path(output_dir) / "model.onnx"
    if not onnx_path.is_file():
        raise UnsupportedModelError(f"The ONNX export of {model_path} produced no model.onnx: {sorted(p.name for p in Path(output_dir).iterdir())}.")
    return onnx_path
