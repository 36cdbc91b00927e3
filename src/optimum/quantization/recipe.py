"""The saved recipe, `quantization_config.json`: how a model was quantized, with what, and what it measured."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from .configuration import QuantConfig, config_from_dict
from .errors import ConfigError

RECIPE_FILE = "quantization_config.json"
FORMAT_VERSION = 1

# Libraries whose versions decide what a saved model contains and how it runs.
RECORDED_PACKAGES = (
    "optimum-quantization",
    "torch",
    "transformers",
    "optimum",
    "optimum-onnx",
    "onnx",
    "onnxruntime",
)


def library_versions(packages=RECORDED_PACKAGES) -> dict[str, str]:
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


@dataclass
class QuantizationRecipe:
    backend: str
    task: str
    quantization: QuantConfig | None
    source_model: str = ""
    details: dict[str, Any] = field(default_factory=dict)  # what the backend resolved: fusion, op types, node counts
    metrics: dict[str, Any] = field(default_factory=dict)
    hardware: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=library_versions)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["quantization"] = None if self.quantization is None else self.quantization.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QuantizationRecipe":
        data = dict(data)
        if int(data.get("format_version", 1)) > FORMAT_VERSION:
            raise ConfigError(
                f"{RECIPE_FILE} has format version {data['format_version']}, newer than this library "
                f"understands ({FORMAT_VERSION}): upgrade optimum-quantization."
            )
        known = {f.name for f in dataclasses.fields(cls)}
        missing = {"backend", "task"} - set(data)
        if missing:
            raise ConfigError(f"{RECIPE_FILE} lacks the required key(s) {sorted(missing)}.")
        quantization = data.get("quantization")
        data["quantization"] = None if quantization is None else config_from_dict(quantization)
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / RECIPE_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "QuantizationRecipe":
        path = Path(directory) / RECIPE_FILE
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} is not valid JSON: {err}") from err


def find_recipe(directory: str | Path) -> QuantizationRecipe | None:
    """The recipe of a local quantized model folder, or None when the folder holds no quantized model."""
    if (Path(directory) / RECIPE_FILE).is_file():
        return QuantizationRecipe.load(directory)
    return None
