"""The catalogue of bad inputs: each raises its typed error with one line naming the file or option and the fix.

The table in docs/errors.md is generated from this catalogue: `UPDATE_DOCS=1 pytest tests/test_bad_inputs.py`
rewrites it, and the test fails while it is out of date.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from optimum.quantization import (
    QuantModelForQuestionAnswering,
    QuantModelForSequenceClassification,
)
from optimum.quantization import errors
from optimum.quantization.recipe import RECIPE_FILE

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
BEGIN, END = "<!-- bad-inputs:begin -->", "<!-- bad-inputs:end -->"


@dataclass
class Context:
    tmp: Path  # an empty folder of the case's own
    model: Path  # a tiny FP32 text classifier with its tokenizer (shared: never modify it)
    saved: Path  # a fresh copy of a saved dynamic INT8 ONNX Runtime text classifier (cases may damage it)


@dataclass
class BadInput:
    what: str  # the input, as the docs table shows it
    call: Callable[[Context], object]
    error: type


def _recipe(ctx: Context, text: str) -> Path:
    (ctx.saved / RECIPE_FILE).write_text(text)
    return ctx.saved


def _edit_recipe(ctx: Context, **changes) -> Path:
    recipe = json.loads((ctx.saved / RECIPE_FILE).read_text())
    recipe.update(changes)
    return _recipe(ctx, json.dumps(recipe))


def _load(folder: Path):
    return QuantModelForSequenceClassification.from_pretrained(folder)


def _truncated_onnx(ctx: Context):
    onnx = ctx.saved / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:200])
    return _load(ctx.saved)


def _missing_model_file(ctx: Context):
    (ctx.saved / "model.onnx").unlink()
    return _load(ctx.saved)


def _save_onto_a_file(ctx: Context):
    model = _load(ctx.saved)
    (ctx.tmp / "model.onnx").write_bytes(b"user file")
    return model.save_pretrained(ctx.tmp / "model.onnx")


def _garbage_onnx_of_an_older_save(ctx: Context):
    _edit_recipe(ctx, files={})  # folders saved before the recipe listed its files
    (ctx.saved / "model.onnx").write_bytes(b"not an onnx graph")
    return _load(ctx.saved)


def _pickle_checkpoint(ctx: Context):
    source = ctx.tmp / "checkpoint"
    shutil.copytree(ctx.model, source)
    (source / "model.safetensors").unlink()
    (source / "pytorch_model.bin").write_bytes(b"\x80\x04not a tensor pickle")
    return QuantModelForSequenceClassification.from_pretrained(source, quantize="dynamic")


def _relative_folder_offline(ctx: Context):  # the suite runs with HF_HUB_OFFLINE=1 (conftest)
    return QuantModelForSequenceClassification.from_pretrained("mydir", quantize="dynamic")


def _input_too_long(ctx: Context):
    from transformers import AutoTokenizer

    model = _load(ctx.saved)
    inputs = AutoTokenizer.from_pretrained(ctx.saved)(" ".join(["good"] * 300), return_tensors="pt")
    return model(**inputs)


def _latin1_calibration_file(ctx: Context):
    path = ctx.tmp / "calibration.txt"
    path.write_bytes("un film tr\xe8s r\xe9ussi\n".encode("latin-1"))
    return QuantModelForSequenceClassification.from_pretrained(ctx.model, quantize="static", calibration_dataset=str(path))


def _static(ctx: Context, calibration_dataset):
    return QuantModelForSequenceClassification.from_pretrained(
        ctx.model, quantize="static", calibration_dataset=calibration_dataset
    )


CASES = [
    BadInput("`backend=\"tensorflow\"`",
             lambda ctx: QuantModelForSequenceClassification.from_pretrained(ctx.model, backend="tensorflow"),
             errors.ConfigError),
    BadInput("`quantize=\"int3\"`",
             lambda ctx: QuantModelForSequenceClassification.from_pretrained(ctx.model, quantize="int3"),
             errors.ConfigError),
    BadInput("`quantize=\"static\"` without `calibration_dataset=`",
             lambda ctx: QuantModelForSequenceClassification.from_pretrained(ctx.model, quantize="static"),
             errors.ConfigError),
    BadInput("a model folder that does not exist",
             lambda ctx: QuantModelForSequenceClassification.from_pretrained(ctx.tmp / "nowhere", quantize="dynamic"),
             errors.ModelNotFoundError),
    BadInput("a folder without `config.json`",
             lambda ctx: QuantModelForSequenceClassification.from_pretrained(ctx.tmp),
             errors.ModelNotFoundError),
    BadInput("a saved model loaded with the class of another task",
             lambda ctx: QuantModelForQuestionAnswering.from_pretrained(ctx.saved),
             errors.ConfigError),
    BadInput("`quantize=` on a folder that is already quantized",
             lambda ctx: QuantModelForSequenceClassification.from_pretrained(ctx.saved, quantize="dynamic"),
             errors.ConfigError),
    BadInput("a truncated `model.onnx` in a saved folder", _truncated_onnx, errors.ModelFileError),
    BadInput("a saved folder whose model file was deleted", _missing_model_file, errors.ModelFileError),
    BadInput("`quantization_config.json` holding a JSON list", lambda ctx: _load(_recipe(ctx, "[1, 2]")),
             errors.ConfigError),
    BadInput("`quantization_config.json` that is not JSON", lambda ctx: _load(_recipe(ctx, "{not json")),
             errors.ConfigError),
    BadInput("`quantization_config.json` with `format_version: \"one\"`",
             lambda ctx: _load(_edit_recipe(ctx, format_version="one")), errors.ConfigError),
    BadInput("`quantization_config.json` naming an `AutoQuantConfig`",
             lambda ctx: _load(_edit_recipe(ctx, quantization={"_type": "AutoQuantConfig", "_version": 1, "_data": {}})),
             errors.ConfigError),
    BadInput("`save_pretrained(path)` where `path` is a file", _save_onto_a_file, errors.ConfigError),
    BadInput("a garbage `model.onnx` in a folder saved before recipes listed their files",
             _garbage_onnx_of_an_older_save, errors.ModelFileError),
    BadInput("a `pytorch_model.bin` that is not plain tensors, as the checkpoint to export", _pickle_checkpoint,
             errors.ModelFileError),
    BadInput("a relative folder name that does not exist, with `HF_HUB_OFFLINE=1`", _relative_folder_offline,
             errors.ModelNotFoundError),
    BadInput("an input longer than the model's position table", _input_too_long, errors.ConfigError),
    BadInput("a calibration file that is not UTF-8", _latin1_calibration_file, errors.ConfigError),
    BadInput("a misspelled keyword argument (`calibraton_dataset=`)",
             lambda ctx: QuantModelForSequenceClassification.from_pretrained(ctx.model, calibraton_dataset=["a"]),
             errors.ConfigError),
    BadInput("`DynamicQuantConfig(per_channel=\"yes\")`",
             lambda ctx: QuantModelForSequenceClassification.from_pretrained(
                 ctx.model, quantize={"_type": "DynamicQuantConfig", "_version": 1, "_data": {"per_channel": "yes"}}),
             errors.ConfigError),
    BadInput("calibration texts given as bytes (`[b\"...\"]`)", lambda ctx: _static(ctx, [b"a good film"]),
             errors.ConfigError),
    BadInput("calibration rows that are neither texts, pairs nor question/context dicts",
             lambda ctx: _static(ctx, [{"text": "a good film", "label": 1}]), errors.ConfigError),
]


@pytest.fixture(scope="module")
def saved_model(tiny_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("saved") / "model"
    with contextlib.chdir(folder.parent):
        QuantModelForSequenceClassification.from_pretrained(tiny_dir("text-classification"), quantize="dynamic") \
            .save_pretrained(folder)
    return folder


def _run(case: BadInput, tmp_path: Path, model: Path, saved_model: Path) -> str:
    tmp = tmp_path / "case"
    tmp.mkdir()
    saved = tmp_path / "saved"
    shutil.copytree(saved_model, saved)
    with pytest.raises(errors.QuantizationError) as raised, contextlib.chdir(tmp):
        case.call(Context(tmp=tmp, model=model, saved=saved))
    assert type(raised.value) is case.error, f"{case.what}: {type(raised.value).__name__}: {raised.value}"
    message = str(raised.value)
    assert "\n" not in message.strip(), f"{case.what}: the message is not one line: {message!r}"
    assert "Traceback" not in message
    for folder, name in ((tmp, "DIR"), (saved, "MODEL_DIR"), (model, "MODEL_DIR")):
        message = message.replace(str(folder.resolve()), name).replace(str(folder), name)
    return re.sub(r"/tmp/\S+", "PATH", message)


def _table(rows) -> str:
    lines = ["| input | error | message |", "|---|---|---|"]
    escape = str.maketrans({"|": "\\|"})
    lines += [f"| {what} | `{error}` | {message.translate(escape)} |" for what, error, message in rows]
    return "\n".join(lines)


def test_every_bad_input_raises_its_typed_error_in_one_line_and_the_docs_table_is_current(
    tiny_dir, saved_model, tmp_path
):
    rows = []
    for number, case in enumerate(CASES):
        case_dir = tmp_path / str(number)
        case_dir.mkdir()
        rows.append((case.what, case.error.__name__, _run(case, case_dir, tiny_dir("text-classification"), saved_model)))
    table = _table(rows)
    text = DOC.read_text(encoding="utf-8")
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    current = text[start:end].strip()
    if os.environ.get("UPDATE_DOCS") == "1":
        DOC.write_text(text[:start] + "\n" + table + "\n" + text[end:], encoding="utf-8")
    else:
        assert current == table, "docs/errors.md is out of date: run UPDATE_DOCS=1 pytest tests/test_bad_inputs.py"
