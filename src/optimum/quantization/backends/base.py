"""The small contract every backend implements, and the mixin its model classes share."""

from __future__ import annotations

import abc
import difflib
import inspect
import json
import logging
import re
import tempfile
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, ClassVar, Sequence

from ..configuration import QuantConfig
from ..errors import (
    ConfigError, ModelFileError, QuantizationError, UnsupportedModelError, damaged_file, unreadable_file,
)
from ..export import head_token_model
from ..recipe import RECIPE_FILE, QuantizationRecipe, quantized_folder

logger = logging.getLogger(__name__)

# save_pretrained(push_to_hub=True, ...) options passed on to the push.
HUB_PUSH_OPTIONS = ("private", "token", "commit_message", "revision")


@dataclass
class QuantizationRequest:
    """Everything a backend needs to build a quantized model from a transformers checkpoint."""

    model_path: str
    task: str
    config: QuantConfig | None
    model_type: str
    tokenizer: Any = None
    calibration_examples: list | None = None
    hub_kwargs: dict[str, Any] = field(default_factory=dict)
    load_kwargs: dict[str, Any] = field(default_factory=dict)

    def model_to_export(self):
        """(the PyTorch model to export in place of the checkpoint, or None; the recipe's `head_token_only` detail,
        or None): the config's `head_token_only` applied (`export.head_token_model`). FP32 exports keep every token."""
        setting = getattr(self.config, "head_token_only", False)
        return head_token_model(self.model_path, self.task, self.model_type, setting, self.hub_kwargs)


class Backend(abc.ABC):
    """A runtime that can quantize a transformers checkpoint, save the result and load it back."""

    name: ClassVar[str] = ""
    supported_configs: ClassVar[tuple[type, ...]] = ()
    model_classes: ClassVar[dict[str, type]] = {}
    # from_pretrained keyword arguments the backend takes itself, beside those of its runtime's model class.
    backend_load_kwargs: ClassVar[tuple[str, ...]] = ()

    def model_class(self, task: str) -> type:
        if task not in self.model_classes:
            raise UnsupportedModelError(
                f"Backend {self.name!r} has no model class for task {task!r}; it supports {sorted(self.model_classes)}."
            )
        return self.model_classes[task]

    def check_supports(self, task: str, config: QuantConfig | None) -> None:
        self.model_class(task)
        if config is not None and not isinstance(config, self.supported_configs):
            raise ConfigError(
                f"Backend {self.name!r} does not support {type(config).__name__}; it supports "
                f"{', '.join(c.__name__ for c in self.supported_configs)}."
            )

    def accepted_load_kwargs(self, task: str) -> set[str]:
        """The from_pretrained keyword arguments this backend passes on for `task` (to its runtime's model class)
        or takes itself (`backend_load_kwargs`)."""
        return keyword_parameters(runtime_model_class(self.model_class(task))) | set(self.backend_load_kwargs)

    @abc.abstractmethod
    def quantize(self, request: QuantizationRequest):
        """Build the (optionally quantized) model object for `request`."""

    @abc.abstractmethod
    def load(self, path: Path, recipe: QuantizationRecipe, **load_kwargs):
        """Load a folder written by `save_pretrained` of this backend's models, without quantizing again."""

    def saved_files(self, recipe: QuantizationRecipe) -> list[str]:
        """The files `load` reads from a saved folder, relative to it (`load_saved` checks each)."""
        return ["config.json"]

    def file_problem(self, file: Path) -> ModelFileError | None:
        """The error saying why the runtime cannot read the saved `file` (naming it and the fix); None when it can.

        Asked only after `load` failed, so it may read the whole file. Backends add the checks of their formats."""
        try:
            with open(file, "rb") as stream:
                data = stream.read() if file.suffix == ".json" else b""
        except PermissionError:
            return unreadable_file(file)
        except OSError as err:
            return damaged_file(file, err.strerror or str(err))
        if file.suffix == ".json":
            try:
                json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as err:
                return damaged_file(file, f"not valid JSON: {err}")
        return None

    def load_saved(self, path: Path, recipe: QuantizationRecipe, **load_kwargs):
        """`load`, with a missing, unreadable or damaged file of the folder reported as ModelFileError naming the file
        and the fix, instead of the runtime's own error."""
        path = Path(path)
        files = [path / name for name in self.saved_files(recipe)]
        for file in files:
            if not file.is_file():
                raise ModelFileError(
                    f"{file} is missing: {path} holds the {RECIPE_FILE} of a model saved with backend {self.name!r}, "
                    "which loads from this file. Save or download the model again (copy the whole folder)."
                )
        try:
            return self.load(path, recipe, **load_kwargs)
        except QuantizationError:
            raise
        except Exception as err:
            problem = next(filter(None, map(self.file_problem, files)), None)
            if problem is None:
                raise
            raise problem from err


class QuantizedModelMixin:
    """Shared by every backend model class: holds the recipe, saves atomically with it.

    Put it first in the bases so `save_pretrained` wraps the runtime class's own saving.
    """

    quantization_recipe: QuantizationRecipe
    quantization_preprocessors: Sequence[Any] = ()

    @property
    def quantization_config(self):
        return self.quantization_recipe.quantization

    def __call__(self, *args, **kwargs):
        """The runtime's call; an input longer than the model's position table raises ConfigError saying how to
        truncate it, where the runtime's own error would only name an index out of range."""
        try:
            return super().__call__(*args, **kwargs)
        except QuantizationError:
            raise
        except Exception as err:
            generates = callable(getattr(self, "can_generate", None)) and self.can_generate()
            too_long = input_too_long(getattr(self, "config", None), args, kwargs, generates)
            if too_long is None:
                raise
            raise ConfigError(too_long) from err

    def _save_model_files(self, directory: Path) -> None:
        """Hook: write the runtime's files (weights, graph, config) into `directory`."""
        super().save_pretrained(directory)

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """Write the model, its config, its tokenizer and `quantization_config.json` into `save_directory`.

        As transformers does, only these files are written or replaced, each atomically, and every other file in
        the folder is left in place; a failure leaves the folder as it was (`recipe.quantized_folder`). With
        `push_to_hub=True` the saved model is then published (transformers' convention: `repo_id` defaults to the
        folder's name; `private`, `token`, `commit_message`, `revision` as in `push_to_hub`).
        """
        with quantized_folder(save_directory) as staging:
            self._save_model_files(staging)
            for preprocessor in self.quantization_preprocessors:
                preprocessor.save_pretrained(staging)
            self.quantization_recipe.save(staging)
        if push_to_hub:
            from ..hub import push_folder_to_hub  # huggingface_hub is only imported by those who publish

            repo_id = kwargs.pop("repo_id", None) or Path(save_directory).resolve().name
            options = {k: kwargs[k] for k in HUB_PUSH_OPTIONS if k in kwargs}
            push_folder_to_hub(save_directory, repo_id, only_model_files=True, **options)
        return str(save_directory)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str | None = None,
        revision: str | None = None,
    ):
        """Publish this model to the Hub as one commit: every saved file plus a model card built from its recipe.

        Returns huggingface_hub's `CommitInfo`. A failure publishes nothing (the commit is all-or-nothing).
        """
        from ..hub import push_folder_to_hub

        with tempfile.TemporaryDirectory(prefix="optimum-quantization-push-") as tmp:
            folder = Path(tmp) / "model"
            self.save_pretrained(folder)
            return push_folder_to_hub(
                folder, repo_id, private=private, token=token, commit_message=commit_message, revision=revision
            )


# Model types whose position ids start after the padding index (RoBERTa's scheme): pad_token_id + 1 rows are unused.
POSITIONS_AFTER_PADDING = ("roberta", "xlm-roberta", "camembert", "data2vec-text")


def input_too_long(config, args, kwargs, generates: bool = False) -> str | None:
    """The message for inputs longer than `config`'s position table (prompt and past tokens together), else None."""
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int) or limit <= 0:
        return None
    if getattr(config, "model_type", None) in POSITIONS_AFTER_PADDING:
        limit -= (getattr(config, "pad_token_id", None) or 0) + 1
    tensors = (kwargs.get("input_ids", args[0] if args else None), kwargs.get("attention_mask"))
    length = max((t.shape[-1] for t in tensors if len(getattr(t, "shape", ())) > 0), default=0)
    if length <= limit:
        return None
    if generates:
        return (
            f"The prompt and the tokens generated so far make {length} tokens, more than the {limit} positions of this "
            f"model (max_position_embeddings in its config.json): keep the prompt's length plus max_new_tokens within "
            f"{limit}, e.g. tokenizer(text, truncation=True, max_length={limit} - max_new_tokens)."
        )
    return (
        f"The input has {length} tokens, more than the {limit} positions of this model (max_position_embeddings in "
        f"its config.json): truncate it, e.g. tokenizer(text, truncation=True, max_length={limit}), or pass "
        "truncation=True to the pipeline."
    )


def runtime_model_class(quant_class: type) -> type:
    """The runtime's own model class (optimum's ORTModelFor<Task>, OVModelFor<Task>) that `quant_class` extends."""
    # Our own bases are mixins (the recipe, IO-binding buffers); the runtime's class is the one from elsewhere.
    return next(base for base in quant_class.__bases__ if not base.__module__.startswith("optimum.quantization."))


def keyword_parameters(cls: type) -> set[str]:
    """The keyword arguments that loading `cls` takes: the named parameters of `from_pretrained`, `_from_pretrained`
    and `__init__` of `cls` and its bases, and the names those methods read from their `**kwargs`."""
    names: set[str] = set()
    for klass in cls.__mro__:
        for method in ("from_pretrained", "_from_pretrained", "__init__"):
            if method not in vars(klass):
                continue
            function = getattr(klass, method)
            try:
                parameters = inspect.signature(function).parameters.values()
                source = inspect.getsource(function)
            except (TypeError, ValueError, OSError):  # a builtin, or no source shipped
                continue
            names.update(p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
            names.update(re.findall(r"\bkwargs\.(?:get|pop)\(\s*[\"'](\w+)[\"']", source))
    return names - {"self", "cls"}


def check_keyword_arguments(given, accepted, what: str) -> None:
    """ConfigError for the first name in `given` that is not in `accepted`, with the closest accepted name."""
    for name in given:
        if name not in accepted:
            close = difflib.get_close_matches(name, sorted(accepted), n=1)
            fix = f"did you mean `{close[0]}`?" if close else f"valid ones are {', '.join(sorted(accepted))}."
            raise ConfigError(f"Unknown keyword argument `{name}` for {what}: {fix}")


def matches_any(name: str, patterns: Sequence[str]) -> str | None:
    """The first fnmatch pattern that matches `name`, or None."""
    return next((p for p in patterns if fnmatchcase(name, p)), None)


def check_patterns_used(user_patterns: Sequence[str], used: set[str], what: str) -> list[str]:
    """Warn about exclusion patterns that matched nothing: a silent no-op is how accuracy gets lost."""
    unused = [p for p in user_patterns if p not in used]
    for pattern in unused:
        logger.warning("exclude pattern %r matched no %s: nothing was kept in FP32 because of it.", pattern, what)
    return unused

