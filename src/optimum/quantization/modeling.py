"""`QuantModelFor<Task>.from_pretrained`: load a quantized folder, or export and quantize a checkpoint.

This module finds backends by name through the registry and imports none of them directly.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import logging
import os
from pathlib import Path
from typing import ClassVar

from .calibration import load_calibration_examples
from .configuration import resolve_quant_config
from .errors import ConfigError, ModelNotFoundError, QuantizationError, UnsupportedModelError
from .export import checkpoint_problem
from .recipe import RECIPE_FILE, find_recipe
from .registry import config_handler, get_backend
from .backends.base import QuantizationRequest, check_keyword_arguments

logger = logging.getLogger(__name__)

DEFAULT_BACKEND = "onnxruntime"

# Logged when from_pretrained exports without quantizing (quantize=None, the default).
FP32_NOTICE = (
    "%s is exported in FP32, unquantized (quantize=None): pass quantize= a preset ('dynamic', 'static', 'w8', ...) "
    "or a config to quantize it."
)
_fp32_notice = contextvars.ContextVar("fp32_notice", default=True)


@contextlib.contextmanager
def fp32_reference():
    """Within this block FP32 exports are built on purpose, as the reference of a comparison: no FP32 notice."""
    token = _fp32_notice.set(False)
    try:
        yield
    finally:
        _fp32_notice.reset(token)


def _check_load_kwargs(load_kwargs: dict, accepted: set[str], backend: str) -> None:
    """ConfigError for a keyword argument of from_pretrained that neither it nor the backend takes (a misspelling),
    raised before any export."""
    own = set(inspect.signature(load_or_quantize).parameters) - {"task", "model_id_or_path", "load_kwargs"}
    check_keyword_arguments(load_kwargs, accepted | own, f"from_pretrained with backend {backend!r}")


def _looks_like_path(model_id: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else is meant as a local path.
    return model_id.startswith((".", "/", "~")) or model_id.count("/") > 1


def _local_folder(model_id: str | os.PathLike, subfolder: str) -> Path | None:
    """The local folder to read, None for a Hub id; raises for a path that is missing or not a folder."""
    path = Path(model_id).expanduser()
    try:
        if path.exists():
            if not path.is_dir():
                raise ModelNotFoundError(f"{path} is a file; pass the folder that holds the model's config.json.")
            folder = path / subfolder
            if not (folder / "config.json").is_file():
                raise ModelNotFoundError(
                    f"{folder} holds no config.json: pass a folder written by save_pretrained (transformers or ours)."
                )
            if not os.access(folder / "config.json", os.R_OK):
                raise ModelNotFoundError(f"{folder / 'config.json'} is not readable: check its permissions.")
            return folder
    except PermissionError as err:  # a folder on the way that this process may not open or list
        raise ModelNotFoundError(
            f"{err.filename or path} is not readable (permission denied): check the permissions of {path} and of the "
            "folders above it."
        ) from err
    if isinstance(model_id, os.PathLike) or _looks_like_path(str(model_id)):
        raise ModelNotFoundError(f"Model folder {path} does not exist.")
    return None


def _published_quantized_folder(repo_id: str, subfolder: str, revision, token, cache_dir) -> Path | None:
    """The cached snapshot folder of a quantized model published at `repo_id`; None for any other repo."""
    from .hub import download_quantized_model  # huggingface_hub is only imported when a Hub id is given

    snapshot = download_quantized_model(repo_id, subfolder=subfolder, revision=revision, token=token, cache_dir=cache_dir)
    return None if snapshot is None else _local_folder(snapshot, "")


def _load_model_config(model_id: str, hub_kwargs: dict):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_id, **hub_kwargs)
    except ValueError as err:  # unrecognised model_type
        raise UnsupportedModelError(f"transformers does not recognise the model in {model_id}: {err}") from err
    except OSError as err:
        if not Path(model_id).expanduser().exists():  # a Hub id, or a relative path that names no folder here
            raise _not_found(model_id, err) from err
        raise ModelNotFoundError(
            f"Could not load {model_id!r}: {err}. Pass a local folder, or a Hub id when the Hub is reachable."
        ) from err


def _not_found(model_id: str, err: Exception) -> ModelNotFoundError:
    """The error for a name that is neither a local folder nor a Hub repo this process could load."""
    from huggingface_hub import constants

    folder = Path(model_id).expanduser().absolute()
    if constants.HF_HUB_OFFLINE:
        hub = f"offline mode is on (HF_HUB_OFFLINE=1) and the Hub repo {model_id!r} is not in the local cache"
        fix = "unset HF_HUB_OFFLINE to download from the Hub"
    else:
        reason = (str(err).strip().splitlines() or ["not found"])[0]
        hub, fix = f"the Hub repo {model_id!r} could not be loaded ({reason})", "check the Hub id"
    return ModelNotFoundError(
        f"No folder {folder} exists, and {hub}: pass the path of an existing folder (e.g. ./{model_id}), or {fix}."
    )


def _load_tokenizer(model_id: str, hub_kwargs: dict, required: bool):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_id, **hub_kwargs)
    except (OSError, ValueError, TypeError) as err:
        if required:
            raise ConfigError(
                f"Static quantization tokenizes the calibration data, but no tokenizer loads from {model_id}: "
                f"{err}. Pass `tokenizer=`."
            ) from err
        logger.info("No tokenizer found in %s; the saved model will not include one.", model_id)
        return None


def load_or_quantize(
    task: str,
    model_id_or_path,
    *,
    export: bool | None = None,
    backend: str | None = None,
    quantize=None,
    calibration_dataset=None,
    tokenizer=None,
    text_column: str | None = None,
    subfolder: str = "",
    revision: str | None = None,
    token=None,
    cache_dir=None,
    trust_remote_code: bool = False,
    **load_kwargs,
):
    """Load a saved quantized model, or export + quantize a transformers checkpoint for `task`."""
    folder = _local_folder(model_id_or_path, subfolder)
    where = folder
    if folder is None:  # a Hub id: a published quantized model loads as saved, any other repo is exported below
        folder = _published_quantized_folder(str(model_id_or_path), subfolder, revision, token, cache_dir)
        where = model_id_or_path
    recipe = find_recipe(folder) if folder is not None else None
    if recipe is not None:
        if quantize is not None or export:
            raise ConfigError(
                f"{where} already holds a model quantized by optimum-quantization ({RECIPE_FILE}); load it "
                "without `quantize=`/`export=`, or start again from the FP32 checkpoint."
            )
        if backend is not None and backend != recipe.backend:
            raise ConfigError(f"{where} was saved by backend {recipe.backend!r}, not {backend!r}.")
        if recipe.task != task:
            raise ConfigError(f"{where} holds a {recipe.task!r} model; load it with the class for that task.")
        recipe.check_files(folder)  # refuses a folder whose files are not the ones its recipe was saved with
        saved_backend = get_backend(recipe.backend)
        _check_load_kwargs(load_kwargs, saved_backend.accepted_load_kwargs(task), recipe.backend)
        model = saved_backend.load_saved(folder, recipe, **load_kwargs)
        # Keep the saved tokenizer with the model, so saving a reloaded model writes a complete folder again.
        saved_tokenizer = tokenizer or _load_tokenizer(str(folder), {}, required=False)
        if saved_tokenizer is not None:
            model.quantization_preprocessors = [saved_tokenizer]
        return model

    if export is False:
        raise ConfigError(
            f"{model_id_or_path} holds no {RECIPE_FILE}, so it is not a quantized model: pass export=True "
            "(the default) to export and quantize it."
        )
    config = resolve_quant_config(quantize, task)
    # A local source is recorded absolute, so the recipe never mistakes a folder name for a Hub id (model card).
    source = str(folder.resolve()) if folder is not None else str(model_id_or_path)
    hub_kwargs = {"revision": revision, "token": token, "cache_dir": cache_dir, "trust_remote_code": trust_remote_code}
    hub_kwargs = {k: v for k, v in hub_kwargs.items() if v is not None}
    handler = config_handler(config)
    if handler is not None:  # e.g. quantize="auto": a search that calls back into this function per trial
        if backend is not None:
            raise ConfigError(f"{type(config).__name__} chooses among backends itself: pass `backends=[...]` in it, not `backend=`.")
        own = getattr(handler, "keyword_arguments", None)
        if own is not None:
            accepted = set(own)
            for name in config.backends:
                try:
                    accepted |= get_backend(name).accepted_load_kwargs(task)
                except QuantizationError:  # not installed, or no model class for the task: the search reports it
                    pass
            _check_load_kwargs(load_kwargs, accepted, ", ".join(config.backends))
        return handler(
            task, source, config, calibration_dataset=calibration_dataset, tokenizer=tokenizer,
            text_column=text_column, hub_kwargs=hub_kwargs, load_kwargs=load_kwargs,
        )
    quant_backend = get_backend(backend or DEFAULT_BACKEND)
    quant_backend.check_supports(task, config)
    _check_load_kwargs(load_kwargs, quant_backend.accepted_load_kwargs(task), quant_backend.name)
    if config is None and _fp32_notice.get():
        logger.warning(FP32_NOTICE, model_id_or_path)
    needs_calibration = config is not None and config.requires_calibration
    # Dynamic INT8 uses calibration data when it is given (activation smoothing), and needs none.
    uses_calibration = needs_calibration or (
        config is not None and calibration_dataset is not None and config.calibration_samples() is not None
    )
    calibration_examples = None
    if uses_calibration:  # read it before the slow export so a bad file fails fast
        calibration_examples = load_calibration_examples(
            calibration_dataset, num_samples=config.calibration_samples(), text_column=text_column
        )
    model_config = _load_model_config(source, hub_kwargs)
    if tokenizer is None:
        tokenizer = _load_tokenizer(source, hub_kwargs, required=uses_calibration)
    request = QuantizationRequest(
        model_path=source,
        task=task,
        config=config,
        model_type=model_config.model_type,
        tokenizer=tokenizer,
        calibration_examples=calibration_examples,
        hub_kwargs=hub_kwargs,
        load_kwargs=load_kwargs,
    )
    try:
        return quant_backend.quantize(request)
    except QuantizationError:
        raise
    except Exception as err:  # the runtime failed reading the checkpoint: say which file and what to do
        problem = checkpoint_problem(source)
        if problem is None:
            raise
        raise problem from err


class _QuantModel:
    """Factory base: `from_pretrained` returns the backend's model object; instances are never made."""

    task: ClassVar[str] = ""

    def __init__(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__} is a factory: use {type(self).__name__}.from_pretrained(...).")

    @classmethod
    def from_pretrained(cls, model_id_or_path, **kwargs):
        """Load a quantized model, or export and quantize a transformers checkpoint.

        Args:
            model_id_or_path: a local folder or a Hub id. A Hub repo holding `quantization_config.json` (published
                with `push_to_hub`) loads as saved; `revision`, `subfolder`, `token` and `cache_dir` apply.
            export: export the PyTorch checkpoint (default when the folder holds no quantized model).
            backend: a registered backend name (default "onnxruntime"); see `available_backends()`.
            quantize: None (FP32 export, unquantized; a warning says so), a preset ("dynamic", "static", "int8",
                "w8", "w4", "auto"), a config object or its dict. "auto" / `AutoQuantConfig` searches for the fastest
                model within a metric tolerance of FP32 (`optimum.quantization.autoquant`); pass `eval_dataset=` and
                `metric=` with it.
            calibration_dataset: texts, a `datasets.Dataset`, a .txt/.csv/.json file or a local dataset name;
                required by static quantization.
            tokenizer: the tokenizer to calibrate with and save beside the model (default: the model's own).
            **kwargs: passed to the backend's model class (e.g. `use_io_binding`, `provider`); a name that neither
                this method nor the backend takes raises ConfigError, before any export.
        """
        return load_or_quantize(cls.task, model_id_or_path, **kwargs)


class QuantModelForSequenceClassification(_QuantModel):
    task = "text-classification"


class QuantModelForQuestionAnswering(_QuantModel):
    task = "question-answering"


class QuantModelForTokenClassification(_QuantModel):
    task = "token-classification"


class QuantModelForFeatureExtraction(_QuantModel):
    task = "feature-extraction"


class QuantModelForCausalLM(_QuantModel):
    task = "text-generation"


QUANT_MODEL_CLASSES = {cls.task: cls for cls in _QuantModel.__subclasses__()}
