"""The saved recipe, `quantization_config.json`: how a model was quantized, with what, and what it measured."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from .configuration import QuantConfig, config_from_dict
from .errors import ConfigError, ModelFileError, unreadable_file
from .files import check_output_folder, publish_files, staging_folder
from .registry import config_handler

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
    # Every other file the save wrote: {relative path: {"size": bytes, "sha256": hex}}. It says which files of a
    # folder this library owns (a later save replaces only those) and lets a load detect an interrupted save.
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["quantization"] = None if self.quantization is None else self.quantization.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QuantizationRecipe":
        if not isinstance(data, dict):
            raise ConfigError(f"{RECIPE_FILE} must hold a JSON object, not a {type(data).__name__}: save the model again.")
        data = dict(data)
        version = data.get("format_version", 1)
        if isinstance(version, bool) or not isinstance(version, int):
            raise ConfigError(f"{RECIPE_FILE} has format_version {version!r}, not an integer: save the model again.")
        if version > FORMAT_VERSION:
            raise ConfigError(
                f"{RECIPE_FILE} has format version {version}, newer than this library "
                f"understands ({FORMAT_VERSION}): upgrade optimum-quantization."
            )
        known = {f.name for f in dataclasses.fields(cls)}
        missing = {"backend", "task"} - set(data)
        if missing:
            raise ConfigError(f"{RECIPE_FILE} lacks the required key(s) {sorted(missing)}.")
        for key in ("backend", "task", "source_model"):
            if key in data and not isinstance(data[key], str):
                raise ConfigError(f"{RECIPE_FILE} has {key} {data[key]!r}, not a string: save the model again.")
        for key in ("details", "metrics", "hardware", "versions", "files"):
            if key in data and not isinstance(data[key], dict):
                raise ConfigError(f"{RECIPE_FILE} has {key} of type {type(data[key]).__name__}, not an object.")
        quantization = data.get("quantization")
        data["quantization"] = None if quantization is None else config_from_dict(quantization)
        if config_handler(data["quantization"]) is not None:
            raise ConfigError(
                f"{RECIPE_FILE} names {type(data['quantization']).__name__}, a search over recipes, which cannot "
                "describe a saved model: a saved model's recipe names the config it was quantized with."
            )
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, directory: str | Path) -> Path:
        """Write the recipe into `directory`, listing every other file there as the model's own (`files`).

        Call it last, in a folder that holds only the model's files (the staging folder of `quantized_folder`).
        """
        directory = Path(directory)
        self.files = file_manifest(directory, exclude=(RECIPE_FILE,))
        path = directory / RECIPE_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "QuantizationRecipe":
        path = Path(directory) / RECIPE_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} is not valid JSON ({err}): save the model again.") from err
        except UnicodeDecodeError as err:
            raise ConfigError(f"{path} is not UTF-8 text ({err.reason}): save the model again.") from err
        except PermissionError as err:
            raise ModelFileError(f"{path} is not readable: check its permissions.") from err
        try:
            return cls.from_dict(data)
        except ConfigError as err:  # name the file, not just the file name
            message = str(err)
            raise ConfigError(message.replace(RECIPE_FILE, str(path), 1) if message.startswith(RECIPE_FILE) else message) from None

    def check_files(self, directory: str | Path) -> None:
        """Raise ModelFileError when a file the recipe lists is missing or differs from what was saved.

        A save replaces files one by one and writes the recipe last, so a save interrupted part-way leaves the
        previous recipe beside some new files: this check is what refuses such a mix. Folders saved before the
        recipe listed its files have nothing to check.
        """
        directory = Path(directory)
        for relative, expected in self.files.items():
            path = directory / relative
            if not path.is_file():
                raise ModelFileError(
                    f"{path} is missing, but {RECIPE_FILE} lists it: the folder is incomplete; save or download "
                    "the model again."
                )
            size = path.stat().st_size
            try:
                digest = _sha256(path) if size == expected.get("size", size) else None
            except PermissionError:
                raise unreadable_file(path) from None
            if digest is None or digest != expected.get("sha256"):
                raise ModelFileError(
                    f"{path} differs from the file saved with {RECIPE_FILE} (a save interrupted part-way, or the file "
                    "was changed or truncated): save or download the model again."
                )

    def owned_files(self) -> list[str]:
        """The folder's files this library wrote: the model's own files and the recipe."""
        return [*self.files, RECIPE_FILE]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(16 * 1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def file_manifest(directory: str | Path, exclude=()) -> dict[str, dict[str, Any]]:
    """{relative path: {"size", "sha256"}} of every file under `directory`, except the names in `exclude`."""
    directory = Path(directory)
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    return {
        p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in files
        if p.relative_to(directory).as_posix() not in exclude
    }


def _previously_owned(target: Path) -> list[str]:
    """Files an earlier save of ours wrote into `target`, read from its recipe; none when there is no readable one."""
    try:
        recipe = find_recipe(target)
    except (ConfigError, ModelFileError):
        return []  # an unreadable recipe owns nothing we could name: leave every file as it is
    return [] if recipe is None else recipe.owned_files()


@contextlib.contextmanager
def quantized_folder(save_directory: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder to write a model into; on success its files go into `save_directory`.

    Only this library's files are touched, as transformers' `save_pretrained` does: each file written is moved
    into place atomically, the recipe last; files a previous save of ours wrote and this one did not are then
    removed; every other file in the folder stays. A failure or interruption before the end changes nothing in
    `save_directory`. The staging folder lives in the system's temporary folder, so a killed process leaves
    nothing in `save_directory` but at most one `*.optimum-quantization-partial` file; the next save removes that
    file and the killed process's staging folder.
    The block must write the recipe (`QuantizationRecipe.save`) last.
    """
    try:
        target = check_output_folder(save_directory)
    except NotADirectoryError as err:
        raise ConfigError(f"Cannot save into {save_directory}: {err} Pass a folder path.") from None
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"Cannot save into {save_directory}: {existing} is not writable. Pass a folder you can write.")
    with staging_folder() as staging:
        yield staging
        publish_files(staging, target, last=RECIPE_FILE, obsolete=_previously_owned(target))


def find_recipe(directory: str | Path) -> QuantizationRecipe | None:
    """The recipe of a local quantized model folder, or None when the folder holds no quantized model."""
    if (Path(directory) / RECIPE_FILE).is_file():
        return QuantizationRecipe.load(directory)
    return None
