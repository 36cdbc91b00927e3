"""Saving writes and replaces only this library's files, each atomically, and a load refuses a half-saved folder."""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path

import pytest

from optimum.quantization import QuantModelForSequenceClassification
from optimum.quantization.errors import ConfigError, ModelFileError
from optimum.quantization.files import PARTIAL_SUFFIX
from optimum.quantization.recipe import RECIPE_FILE, QuantizationRecipe


@pytest.fixture(scope="module")
def dynamic_model(tiny_dir, tmp_path_factory):
    with contextlib.chdir(tmp_path_factory.mktemp("ort-work")):
        return QuantModelForSequenceClassification.from_pretrained(tiny_dir("text-classification"), quantize="dynamic")


@pytest.fixture(scope="module")
def fp32_model(tiny_dir, tmp_path_factory):
    with contextlib.chdir(tmp_path_factory.mktemp("ort-work")):
        return QuantModelForSequenceClassification.from_pretrained(tiny_dir("text-classification"), quantize=None)


def _user_files(folder: Path) -> dict[str, bytes]:
    """A user's own files in a folder they save into: notes, a Trainer checkpoint, a hidden file."""
    files = {
        "notes.txt": b"my notes",
        "checkpoint-500/trainer_state.json": b'{"global_step": 500}',
        "checkpoint-500/model.safetensors": b"\x00weights",
        ".env": b"SECRET=1",
    }
    for relative, content in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(content)
    return files


def _contents(folder: Path, names) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in names}


def test_save_keeps_every_file_it_does_not_own(dynamic_model, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    user = _user_files(folder)
    dynamic_model.save_pretrained(folder)
    assert _contents(folder, user) == user
    recipe = QuantizationRecipe.load(folder)
    assert "model.onnx" in recipe.files and "config.json" in recipe.files
    assert not set(user) & set(recipe.files)  # the user's files are not listed as the model's own
    dynamic_model.save_pretrained(folder)  # saving again replaces the model, still nothing else
    assert _contents(folder, user) == user
    assert QuantModelForSequenceClassification.from_pretrained(folder).quantization_config is not None


def test_save_into_the_working_directory_keeps_it(dynamic_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    user = _user_files(tmp_path)
    dynamic_model.save_pretrained(".")
    assert _contents(tmp_path, user) == user
    assert (tmp_path / "model.onnx").is_file() and (tmp_path / RECIPE_FILE).is_file()


def test_saving_another_model_removes_only_files_the_previous_save_wrote(dynamic_model, tmp_path):
    folder = tmp_path / "out"
    dynamic_model.save_pretrained(folder)
    recipe = json.loads((folder / RECIPE_FILE).read_text())
    (folder / "old_weights.bin").write_bytes(b"from an earlier save")  # pretend an earlier save of ours wrote it
    recipe["files"]["old_weights.bin"] = {"size": 20, "sha256": "0" * 64}
    recipe["files"]["../outside.txt"] = {"size": 1, "sha256": "0" * 64}  # a hostile name never reaches outside
    (folder / RECIPE_FILE).write_text(json.dumps(recipe))
    (tmp_path / "outside.txt").write_text("x")
    user = _user_files(folder)
    dynamic_model.save_pretrained(folder)
    assert not (folder / "old_weights.bin").exists()
    assert (tmp_path / "outside.txt").read_text() == "x"
    assert _contents(folder, user) == user


def test_save_leaves_no_staging_or_backup_folder_and_keeps_the_folder_itself(dynamic_model, tmp_path):
    parent = tmp_path / "parent"
    folder = parent / "out"
    folder.mkdir(parents=True)
    inode = folder.stat().st_ino
    (folder / f"model.onnx{PARTIAL_SUFFIX}").write_bytes(b"left by a killed save")
    dynamic_model.save_pretrained(folder)
    # The folder is written into, never renamed or replaced: saving into a mount point works the same.
    assert folder.stat().st_ino == inode
    assert sorted(p.name for p in parent.iterdir()) == ["out"]
    assert not [p for p in folder.rglob("*") if p.name.startswith(".") or PARTIAL_SUFFIX in p.name]


def test_saved_files_get_the_users_umask_permissions(dynamic_model, tmp_path):
    old = os.umask(0o022)
    try:
        dynamic_model.save_pretrained(tmp_path / "new" / "out")
    finally:
        os.umask(old)
    folder = tmp_path / "new" / "out"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir() if p.is_file()} == {0o644}


def test_a_save_that_fails_leaves_the_previous_model_as_it_was(dynamic_model, fp32_model, tmp_path, monkeypatch):
    folder = tmp_path / "out"
    dynamic_model.save_pretrained(folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(fp32_model), "_save_model_files", fail)
    with pytest.raises(KeyboardInterrupt):
        fp32_model.save_pretrained(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert QuantModelForSequenceClassification.from_pretrained(folder).quantization_config is not None


def test_a_save_interrupted_while_replacing_files_is_refused_on_load(dynamic_model, fp32_model, tmp_path, monkeypatch):
    from optimum.quantization import files

    folder = tmp_path / "out"
    dynamic_model.save_pretrained(folder)
    place = files._place_file

    def interrupted_before_the_recipe(source, destination):
        if destination.name == RECIPE_FILE:
            raise KeyboardInterrupt
        place(source, destination)

    monkeypatch.setattr(files, "_place_file", interrupted_before_the_recipe)
    with pytest.raises(KeyboardInterrupt):
        fp32_model.save_pretrained(folder)  # new model files are in place, the recipe is the old one
    with pytest.raises(ModelFileError, match=r"model\.onnx differs from the file saved"):
        QuantModelForSequenceClassification.from_pretrained(folder)
    monkeypatch.undo()
    (folder / "model.onnx").unlink()
    with pytest.raises(ModelFileError, match=r"model\.onnx is missing"):
        QuantModelForSequenceClassification.from_pretrained(folder)


def test_save_to_a_path_that_is_a_file_is_a_config_error(dynamic_model, tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"user file")
    with pytest.raises(ConfigError, match="not a folder"):
        dynamic_model.save_pretrained(target)
    assert target.read_bytes() == b"user file"


@pytest.mark.parametrize(
    "text, message",
    [
        ("[1, 2]", "must hold a JSON object"),
        ('{"backend": "onnxruntime", "task": "text-classification", "format_version": "one"}', "not an integer"),
        ('{"backend": 3, "task": "text-classification"}', "not a string"),
    ],
)
def test_a_malformed_recipe_is_a_config_error(tmp_path, text, message):
    (tmp_path / RECIPE_FILE).write_text(text)
    with pytest.raises(ConfigError, match=message):
        QuantizationRecipe.load(tmp_path)


def test_a_recipe_naming_a_search_config_is_refused(tmp_path):
    from optimum.quantization.configuration import AutoQuantConfig

    recipe = {"backend": "onnxruntime", "task": "text-classification", "quantization": AutoQuantConfig().to_dict()}
    (tmp_path / RECIPE_FILE).write_text(json.dumps(recipe))
    with pytest.raises(ConfigError, match="cannot describe a saved model"):
        QuantizationRecipe.load(tmp_path)


# A save through the same path as save_pretrained (quantized_folder), of small stand-in files so that the process
# starts in a fraction of a second; it hangs right after placing its first file, and is killed there.
KILLED_SAVE = """
import sys, time
from pathlib import Path
from optimum.quantization import files
from optimum.quantization.recipe import QuantizationRecipe, quantized_folder

target, marker = map(Path, sys.argv[1:])
place = files._place_file

def place_then_hang(src, dst):
    place(src, dst)
    marker.write_text(dst.name)
    time.sleep(120)

files._place_file = place_then_hang
with quantized_folder(target) as staging:
    for name in ("config.json", "model.onnx", "tokenizer.json"):
        (staging / name).write_bytes(name.encode() * 1000)
    QuantizationRecipe(backend="onnxruntime", task="text-classification", quantization=None).save(staging)
"""


def test_a_killed_save_leaves_no_staging_folder_behind(dynamic_model, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    parent, marker = tmp_path / "parent", tmp_path / "marker"
    target = parent / "out"
    target.mkdir(parents=True)
    user = _user_files(target)
    process = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(target), str(marker)])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), "the save never started placing files"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert sorted(p.name for p in parent.iterdir()) == ["out"]
    assert _contents(target, user) == user
    ours = {p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()} - set(user)
    assert ours == {marker.read_text()}  # the one file placed before the kill, nothing half-written or staged
    # The killed process's staging folder (in the system's temporary folder) goes with the next save.
    import tempfile

    from optimum.quantization.files import STAGING_PREFIX

    left = list(Path(tempfile.gettempdir()).glob(f"{STAGING_PREFIX}{process.pid}-*"))
    assert left, "the killed save had a staging folder"
    dynamic_model.save_pretrained(target)
    assert not any(folder.exists() for folder in left)
    assert _contents(target, user) == user
