"""Damaged, missing, unreadable or unsafe files, and inputs the runtimes would fail on: each raises a typed error
whose one-line message names the file (or input) and the fix, never the runtime's own error.

Saved folders are copied without the recipe's list of files, as folders saved before that list existed (or put
together by hand) are: the runtime then reads the damaged file itself, and its failure is what is checked.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest

from optimum.quantization import QuantModelForSequenceClassification
from optimum.quantization.calibration import load_calibration_examples
from optimum.quantization.commands import cli
from optimum.quantization.errors import ConfigError, ModelFileError, ModelNotFoundError
from optimum.quantization.recipe import RECIPE_FILE

LONG_TEXT = "boring " * 300  # 302 tokens with [CLS] and [SEP]; the tiny BERT has 128 positions



def _modes_enforced() -> bool:
    """Whether this process is refused a file of mode 000 (root, or a process with CAP_DAC_OVERRIDE, is not)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe"
        probe.write_text("x")
        probe.chmod(0)
        try:
            probe.read_text()
        except PermissionError:
            return True
        finally:
            probe.chmod(0o600)
    return False


as_root = pytest.mark.skipif(not _modes_enforced(), reason="this process reads files whatever their mode (root)")


@pytest.fixture(scope="session")
def saved_models(tiny_dir, tmp_path_factory):
    """Factory: saved_models(backend) -> a saved tiny text classifier of that backend (built once per session)."""
    root = tmp_path_factory.mktemp("saved-models")
    built: dict[str, Path] = {}
    quantize = {"onnxruntime": "dynamic", "torch": "dynamic", "openvino": "w8"}

    def build(backend: str) -> Path:
        if backend not in built:
            folder = root / backend
            with contextlib.chdir(root):
                QuantModelForSequenceClassification.from_pretrained(
                    tiny_dir("text-classification"), backend=backend, quantize=quantize[backend]
                ).save_pretrained(folder)
            built[backend] = folder
        return built[backend]

    return build


def _copy(saved: Path, destination: Path) -> Path:
    """A copy of the saved folder whose recipe lists no files (so the loader cannot compare them first)."""
    shutil.copytree(saved, destination)
    recipe = json.loads((destination / RECIPE_FILE).read_text())
    recipe.pop("files", None)
    (destination / RECIPE_FILE).write_text(json.dumps(recipe))
    return destination


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message.strip(), message
    return message


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_damaged_model_onnx_names_the_file(saved_models, tmp_path, damage):
    folder = _copy(saved_models("onnxruntime"), tmp_path / "model")
    onnx_file = folder / "model.onnx"
    data = onnx_file.read_bytes()
    damaged = {"garbage": b"not an onnx graph" * 8, "truncated": data[: len(data) // 2], "empty": b""}
    onnx_file.write_bytes(damaged[damage])
    with pytest.raises(ModelFileError, match=r"model\.onnx is damaged or truncated \(.*\): save or download") as err:
        QuantModelForSequenceClassification.from_pretrained(folder)
    assert str(onnx_file) in _one_line(err)


@pytest.mark.parametrize(
    "backend, model_file",
    [("onnxruntime", "model.onnx"), ("torch", "model.safetensors"), ("openvino", "openvino_model.xml"),
     ("openvino", "openvino_model.bin")],
)
def test_recipe_without_its_model_file(saved_models, tmp_path, backend, model_file):
    folder = _copy(saved_models(backend), tmp_path / "model")
    (folder / model_file).unlink()
    match = rf"{model_file} is missing: .*backend '{backend}'.*Save or download"
    with pytest.raises(ModelFileError, match=match) as err:
        QuantModelForSequenceClassification.from_pretrained(folder)
    _one_line(err)


def test_openvino_xml_garbage(saved_models, tmp_path):
    folder = _copy(saved_models("openvino"), tmp_path / "model")
    (folder / "openvino_model.xml").write_text("garbage, not XML")
    with pytest.raises(ModelFileError, match=r"openvino_model\.xml is damaged or truncated \(not an OpenVINO IR"):
        QuantModelForSequenceClassification.from_pretrained(folder)


def test_openvino_bin_truncated(saved_models, tmp_path):
    folder = _copy(saved_models("openvino"), tmp_path / "model")
    weights = folder / "openvino_model.bin"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelFileError, match=r"openvino_model\.bin is damaged or truncated \(1000 bytes, openvino_model"
                                             r"\.xml reads up to byte \d+\)"):
        QuantModelForSequenceClassification.from_pretrained(folder)


def test_torch_safetensors_truncated(saved_models, tmp_path):
    folder = _copy(saved_models("torch"), tmp_path / "model")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(ModelFileError, match=r"model\.safetensors is damaged or truncated"):
        QuantModelForSequenceClassification.from_pretrained(folder)


class _MakesAFolder:
    """Unpickling this runs os.mkdir: what a malicious checkpoint would do."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_pickle_checkpoint_is_refused_and_never_run(tiny_dir, tmp_path):
    source = tmp_path / "checkpoint"
    shutil.copytree(tiny_dir("text-classification"), source)
    (source / "model.safetensors").unlink()
    marker = tmp_path / "code-ran"
    with open(source / "pytorch_model.bin", "wb") as stream:
        pickle.dump({"bert.embeddings.word_embeddings.weight": _MakesAFolder(marker)}, stream)
    with pytest.raises(ModelFileError, match=r"pytorch_model\.bin does not load as plain tensors with "
                                             r"torch\.load\(weights_only=True\).*safetensors") as err:
        QuantModelForSequenceClassification.from_pretrained(source, quantize="dynamic")
    _one_line(err)
    assert not marker.exists()


def test_relative_folder_that_does_not_exist_says_so_and_that_offline_mode_is_on(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError, match=r"No folder .*mydir exists, and offline mode is on "
                                                 r"\(HF_HUB_OFFLINE=1\).*unset HF_HUB_OFFLINE") as err:
        QuantModelForSequenceClassification.from_pretrained("mydir", quantize="dynamic")
    assert str(tmp_path / "mydir") in _one_line(err)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_input_longer_than_the_position_table_says_to_truncate(saved_models, backend):
    from transformers import AutoTokenizer, pipeline

    folder = saved_models(backend)
    classifier = pipeline("text-classification", model=QuantModelForSequenceClassification.from_pretrained(folder),
                          tokenizer=AutoTokenizer.from_pretrained(folder))
    with pytest.raises(ConfigError, match=r"302 tokens, more than the 128 positions.*truncation=True") as err:
        classifier(LONG_TEXT)
    _one_line(err)
    assert classifier(LONG_TEXT, truncation=True, max_length=128)[0]["label"]


def test_generation_past_the_position_table_says_to_shorten_the_prompt(tiny_dir):
    from transformers import AutoTokenizer

    from optimum.quantization import QuantModelForCausalLM

    folder = tiny_dir("text-generation")  # GPT-2 with 128 positions, byte-level tokens
    model = QuantModelForCausalLM.from_pretrained(folder, quantize="w8")
    inputs = AutoTokenizer.from_pretrained(folder)("a" * 120, return_tensors="pt")
    with pytest.raises(ConfigError, match=r"make 129 tokens, more than the 128 positions.*max_new_tokens") as err:
        model.generate(**inputs, max_new_tokens=20, do_sample=False)
    _one_line(err)


def test_folder_that_cannot_be_listed_is_model_not_found(tiny_dir, tmp_path, monkeypatch):
    folder = tmp_path / "locked"
    shutil.copytree(tiny_dir("text-classification"), folder)
    is_file = Path.is_file

    def denied(path):  # what a folder without read/search permission does for a process that is not root
        if path.parent == folder:
            raise PermissionError(13, "Permission denied", str(path))
        return is_file(path)

    monkeypatch.setattr(Path, "is_file", denied)
    with pytest.raises(ModelNotFoundError, match=r"locked/config\.json is not readable \(permission denied\): check "
                                                 r"the permissions of"):
        QuantModelForSequenceClassification.from_pretrained(folder)


@as_root
def test_folder_without_permissions_is_model_not_found(tiny_dir, tmp_path):
    folder = tmp_path / "locked"
    shutil.copytree(tiny_dir("text-classification"), folder)
    folder.chmod(0)
    try:
        with pytest.raises(ModelNotFoundError, match="not readable"):
            QuantModelForSequenceClassification.from_pretrained(folder)
    finally:
        folder.chmod(0o755)


@as_root
def test_unreadable_model_onnx_names_the_file(saved_models, tmp_path):
    folder = _copy(saved_models("onnxruntime"), tmp_path / "model")
    (folder / "model.onnx").chmod(0)
    with pytest.raises(ModelFileError, match=r"model\.onnx is not readable \(permission denied\)"):
        QuantModelForSequenceClassification.from_pretrained(folder)


@pytest.mark.parametrize("name, text, offset", [
    ("latin.txt", b"caf\xe9 cr\xe8me\nna\xefve\n", 3),
    ("latin.csv", b"text\ncaf\xe9 cr\xe8me\n", 8),
    ("latin.jsonl", b'{"text": "caf\xe9"}\n', 13),
])
def test_calibration_file_that_is_not_utf8(tmp_path, name, text, offset):
    path = tmp_path / name
    path.write_bytes(text)
    with pytest.raises(ConfigError, match=rf"{name} is not UTF-8 text \(byte 0xe9 at offset {offset}\): save it in "
                                          "the UTF-8 encoding"):
        load_calibration_examples(path)


def _fail_if_called(*args, **kwargs):
    raise AssertionError("the model was loaded before the command line was checked")


def test_cli_output_that_is_a_file_is_refused_before_any_work(tiny_dir, tmp_path, monkeypatch, capsys):
    from optimum.quantization import modeling

    monkeypatch.setattr(modeling, "load_or_quantize", _fail_if_called)
    output = tmp_path / "report.txt"
    output.write_text("keep me")
    code = cli.main(["quantize", "--model", str(tiny_dir("text-classification")), "--task", "text-classification",
                     "--output", str(output)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --output {output}: {output} exists and is not a folder.")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert output.read_text() == "keep me"


def test_cli_report_that_is_a_folder_is_refused_before_any_work(tiny_dir, tmp_path, monkeypatch, capsys):
    from optimum.quantization import modeling

    monkeypatch.setattr(modeling, "load_or_quantize", _fail_if_called)
    code = cli.main(["quantize", "--model", str(tiny_dir("text-classification")), "--task", "text-classification",
                     "--output", str(tmp_path / "out"), "--report", str(tmp_path)])
    assert code == 2
    assert capsys.readouterr().err == f"error: --report {tmp_path} is a folder: pass the path of the JSON file to write.\n"


def test_cli_ctrl_c_exits_130_with_one_line_and_leaves_nothing(tiny_dir, tmp_path, monkeypatch, capsys):
    from optimum.quantization.recipe import QuantizationRecipe

    def interrupted(self, directory):
        raise KeyboardInterrupt

    monkeypatch.setattr(QuantizationRecipe, "save", interrupted)  # Ctrl-C while the model is being saved
    output = tmp_path / "out" / "int8"
    try:
        code = cli.main(["quantize", "--model", str(tiny_dir("text-classification")), "--task", "text-classification",
                         "--no-compare", "--output", str(output)])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main(): the user sees a traceback")
    assert code == 130
    assert capsys.readouterr().err == "interrupted\n"
    assert not output.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cli_relative_folder_that_does_not_exist_is_one_line(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    code = cli.main(["quantize", "--model", "mydir", "--task", "text-classification", "--output", "out"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No folder ") and "HF_HUB_OFFLINE" in err and err.count("\n") == 1
