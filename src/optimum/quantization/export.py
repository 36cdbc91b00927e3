"""PyTorch checkpoint -> ONNX through optimum's exporters. No quantization logic here."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from .errors import ConfigError, ModelFileError, UnsupportedModelError, damaged_file

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


def safetensors_file_problem(path: Path) -> ModelFileError | None:
    """The error saying why `path` is not a readable safetensors file, or None when its header and data are whole."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as weights:
            weights.keys()
    except Exception as err:  # safetensors raises its own SafetensorError, or OSError
        return damaged_file(path, err)
    return None


def checkpoint_problem(model_path: str) -> ModelFileError | None:
    """The error saying why the weights of the local checkpoint folder `model_path` cannot be loaded, or None when
    they load (or it is not a local folder). Asked after an export failed: it reads the weight files.

    transformers reads `*.safetensors` when there are any, else `pytorch_model*.bin` with
    `torch.load(weights_only=True)`, which loads tensors only and runs no code from the file; a .bin that needs
    more than that is refused here as it is there."""
    import zipfile

    import torch

    folder = Path(model_path)
    if not folder.is_dir():
        return None
    safetensors = sorted(folder.glob("*.safetensors"))
    for path in safetensors:
        problem = safetensors_file_problem(path)
        if problem is not None:
            return problem
    for path in [] if safetensors else sorted(folder.glob("pytorch_model*.bin")):
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        except Exception as err:  # UnpicklingError, RuntimeError, EOFError, ...; torch's text suggests unsafe loading
            return ModelFileError(
                f"{path} does not load as plain tensors with torch.load(weights_only=True) ({type(err).__name__}): it "
                "is damaged, or a pickle that holds more than tensors, which is not run here. Re-save the model as "
                "safetensors where you trust its source (save_pretrained writes model.safetensors), or download its "
                ".safetensors."
            )
    return None


def head_token_model(model_path: str, task: str, model_type: str, setting, hub_kwargs: dict):
    """`head_token_only` of a config ("auto", True, False) applied: (the PyTorch model to export instead of the
    checkpoint, cut or as loaded, or None to export the checkpoint; what happened, for the recipe, or None where the
    option does not concern the task).

    "auto" cuts a text classifier's last layer to the head's token where the architecture is registered and the
    logits stay the same (`head_token.py`); True insists (ConfigError otherwise); False keeps every token."""
    if setting is False or (setting == "auto" and task != "text-classification"):
        return None, None
    from optimum.exporters.tasks import TasksManager

    from .head_token import keep_head_token_only, unregistered_reason

    if task != "text-classification":
        raise ConfigError(f"head_token_only=True is for text classifiers; task {task!r} reads every token's output.")
    reason = unregistered_reason(model_type)  # checked before loading the model
    if reason is not None:
        if setting is True:
            raise ConfigError(f"head_token_only=True: {reason}.")
        return None, {"applied": False, "reason": reason}

    model = TasksManager.get_model_from_task(
        EXPORT_TASKS[task], model_path, framework="pt", library_name="transformers", **hub_kwargs
    ).eval()
    if getattr(model.config, "pad_token_id", None) is None:
        # main_export takes a classifier's missing pad token id from its tokenizer (and fails without one); so here.
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_path, **hub_kwargs)
        model.config.pad_token_id = getattr(tokenizer, "pad_token_id", None)
    if model.config.pad_token_id is None:
        details = {"applied": False, "reason": "neither the config nor the tokenizer has a pad token id"}
        model = None  # main_export gives its own error for that
    else:
        details = keep_head_token_only(model)
        if details["applied"]:
            return model, details
    if setting is True:
        raise ConfigError(f"head_token_only=True: {details['reason']}.")
    logger.warning("Exporting every token's last layer: %s.", details["reason"])
    return model, details  # as loaded (its own forward back): exported without loading it twice


def export_onnx(model_path: str, output_dir: Path, task: str, *, model_type: str, model=None, **hub_kwargs) -> Path:
    """Export `model_path` to `output_dir/model.onnx` (plus config and preprocessor files); return the ONNX path.

    `model`: the checkpoint already loaded and changed (`head_token_model`), exported in its place."""
    import torch
    from optimum.exporters.onnx import main_export, onnx_export_from_model
    from optimum.utils.save_utils import maybe_load_preprocessors

    check_exportable(model_type, task)
    with warnings.catch_warnings():
        # The tracer warns about constants in transformers' mask helpers on every export: noise to a user.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        common = {"task": EXPORT_TASKS[task], "do_validation": False}  # we compare outputs ourselves, INT8 too
        if model is None:
            main_export(model_path, output=output_dir, library_name="transformers", **common, **hub_kwargs)
        else:
            onnx_export_from_model(
                model, output_dir, **common,  # main_export saves the same preprocessors
                preprocessors=maybe_load_preprocessors(
                    model_path, trust_remote_code=hub_kwargs.get("trust_remote_code", False)
                ),
            )
    onnx_path = Path(output_dir) / "model.onnx"
    if not onnx_path.is_file():
        raise UnsupportedModelError(f"The ONNX export of {model_path} produced no model.onnx: {sorted(p.name for p in Path(output_dir).iterdir())}.")
    return onnx_path
