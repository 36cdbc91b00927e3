"""The small contract every backend implements, and the mixin its model classes share."""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, ClassVar, Sequence

from ..configuration import QuantConfig
from ..errors import ConfigError, UnsupportedModelError
from ..files import atomic_output_dir
from ..recipe import QuantizationRecipe

logger = logging.getLogger(__name__)


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


class Backend(abc.ABC):
    """A runtime that can quantize a transformers checkpoint, save the result and load it back."""

    name: ClassVar[str] = ""
    supported_configs: ClassVar[tuple[type, ...]] = ()
    model_classes: ClassVar[dict[str, type]] = {}

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

    @abc.abstractmethod
    def quantize(self, request: QuantizationRequest):
        """Build the (optionally quantized) model object for `request`."""

    @abc.abstractmethod
    def load(self, path: Path, recipe: QuantizationRecipe, **load_kwargs):
        """Load a folder written by `save_pretrained` of this backend's models, without quantizing again."""


class QuantizedModelMixin:
    """Shared by every backend model class: holds the recipe, saves atomically with it.

    Put it first in the bases so `save_pretrained` wraps the runtime class's own saving.
    """

    quantization_recipe: QuantizationRecipe
    quantization_preprocessors: Sequence[Any] = ()

    @property
    def quantization_config(self):
        return self.quantization_recipe.quantization

    def _save_model_files(self, directory: Path) -> None:
        """Hook: write the runtime's files (weights, graph, config) into `directory`."""
        super().save_pretrained(directory)

    def save_pretrained(self, save_directory, **kwargs):
        """Write the model, its config, its tokenizer and `quantization_config.json`.

        The folder is built beside `save_directory` and moved into place at the end, so a failure
        leaves an existing folder as it was.
        """
        if kwargs.get("push_to_hub"):
            raise NotImplementedError("push_to_hub from save_pretrained is not supported yet; save, then upload the folder.")
        with atomic_output_dir(save_directory) as staging:
            self._save_model_files(staging)
            for preprocessor in self.quantization_preprocessors:
                preprocessor.save_pretrained(staging)
            self.quantization_recipe.save(staging)
        return str(save_directory)


def matches_any(name: str, patterns: Sequence[str]) -> str | None:
    """The first fnmatch pattern that matches `name`, or None."""
    return next((p for p in patterns if fnmatchcase(name, p)), None)


def check_patterns_used(user_patterns: Sequence[str], used: set[str], what: str) -> list[str]:
    """Warn about exclusion patterns that matched nothing: a silent no-op is how accuracy gets lost."""
    unused = [p for p in user_patterns if p not in used]
    for pattern in unused:
        logger.warning("exclude pattern %r matched no %s: nothing was kept in FP32 because of it.", pattern, what)
    return unused

