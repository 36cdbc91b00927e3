"""The common path says what it does: the CLI infers the task, FP32 exports are announced, misspelled keyword
arguments fail before any export, and a randomly initialised head is pointed out in the FP32-vs-INT8 report."""

from __future__ import annotations

import json
import logging

import pytest
from conftest import SENTENCES

from optimum.quantization import QuantModelForSequenceClassification
from optimum.quantization.commands.cli import main
from optimum.quantization.errors import ConfigError
from optimum.quantization.recipe import QuantizationRecipe
from optimum.quantization.tasks import task_from_architectures

FP32_NOTICE = "exported in FP32, unquantized"


# ----------------------------------------------------------------------------------------- task inference

@pytest.mark.parametrize(
    "architectures,task",
    [
        (["BertForSequenceClassification"], "text-classification"),
        (["BertForQuestionAnswering"], "question-answering"),
        (["BertForTokenClassification"], "token-classification"),
        (["BertModel"], "feature-extraction"),
        (["GPT2LMHeadModel"], "text-generation"),
        (["LlamaForCausalLM"], "text-generation"),
    ],
)
def test_task_from_architectures(architectures, task):
    assert task_from_architectures(architectures, "m") == task


@pytest.mark.parametrize(
    "architectures,reason",
    [
        (None, "names no `architectures`"),
        (["BertForMaskedLM"], "'fill-mask' model, a task this library does not quantize"),
        (["NoSuchModelClass"], "not a model class known for a task"),
        (["BertForSequenceClassification", "BertForQuestionAnswering"], "mean different tasks"),
    ],
)
def test_task_that_cannot_be_inferred_says_to_pass_task(architectures, reason):
    with pytest.raises(ConfigError, match=reason) as info:
        task_from_architectures(architectures, "some/folder")
    assert "Pass --task" in str(info.value) and "some/folder" in str(info.value)


def test_cli_infers_the_task_from_config_json(tiny_dir, tmp_path):
    out = tmp_path / "out"
    assert main(["--model", str(tiny_dir("text-classification")), "--output", str(out), "--no-compare"]) == 0
    assert QuantizationRecipe.load(out).task == "text-classification"  # the classifier head is kept


def test_cli_refuses_a_checkpoint_of_an_unsupported_task(tiny_dir, tmp_path, capsys):
    folder = tmp_path / "masked-lm"
    folder.mkdir()
    config = json.loads((tiny_dir("text-classification") / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["BertForMaskedLM"]}))
    assert main(["--model", str(folder), "--output", str(tmp_path / "o")]) == 2
    assert "Pass --task" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_demo_model_is_inferred_as_feature_extraction(minilm_dir):
    from optimum.quantization.commands.quantize import infer_task

    assert infer_task(str(minilm_dir)) == "feature-extraction"


# ----------------------------------------------------------------------------------------- FP32 notice

@pytest.fixture
def no_export(monkeypatch):
    """Stop before the ONNX export: what from_pretrained checks and logs first is all these tests look at."""
    from optimum.quantization.backends import onnxruntime as ort_backend

    def refuse(*args, **kwargs):
        raise RuntimeError("export reached")

    monkeypatch.setattr(ort_backend, "export_onnx", refuse)


def test_fp32_export_logs_one_warning(tiny_dir, no_export, caplog):
    caplog.set_level(logging.WARNING, logger="optimum.quantization.modeling")
    for kwargs in ({}, {"quantize": None}):
        caplog.clear()
        with pytest.raises(RuntimeError, match="export reached"):
            QuantModelForSequenceClassification.from_pretrained(tiny_dir("text-classification"), **kwargs)
        notices = [r for r in caplog.records if FP32_NOTICE in r.getMessage()]
        assert len(notices) == 1 and notices[0].levelno == logging.WARNING
        assert "quantize=" in notices[0].getMessage()
    from optimum.quantization.modeling import fp32_reference

    caplog.clear()
    with fp32_reference(), pytest.raises(RuntimeError, match="export reached"):  # a comparison's own reference
        QuantModelForSequenceClassification.from_pretrained(tiny_dir("text-classification"), quantize=None)
    with pytest.raises(RuntimeError, match="export reached"):
        QuantModelForSequenceClassification.from_pretrained(tiny_dir("text-classification"), quantize="dynamic")
    assert FP32_NOTICE not in caplog.text


# ----------------------------------------------------------------------------------------- keyword arguments

@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"calibraton_dataset": SENTENCES}, "`calibraton_dataset`.*did you mean `calibration_dataset`"),
        ({"use_io_bindng": True}, "`use_io_bindng`.*did you mean `use_io_binding`"),
        ({"session_option": None}, "`session_option`.*did you mean `session_options`"),
        ({"xyz_unrelated": 1}, "`xyz_unrelated`.*valid ones are .*calibration_dataset"),
    ],
)
def test_misspelled_keyword_argument_fails_before_export(tiny_dir, no_export, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        QuantModelForSequenceClassification.from_pretrained(tiny_dir("text-classification"), quantize="dynamic",
                                                            **kwargs)


def test_misspelled_openvino_option_fails_before_export(tiny_dir, monkeypatch):
    pytest.importorskip("optimum.intel")
    from optimum.quantization.backends import openvino as ov_backend

    monkeypatch.setattr(ov_backend, "export_openvino", lambda *a, **k: pytest.fail("exported before refusing"))
    with pytest.raises(ConfigError, match="`ov_confg`.*did you mean `ov_config`"):
        QuantModelForSequenceClassification.from_pretrained(
            tiny_dir("text-classification"), backend="openvino", quantize="w8", ov_confg={})


def test_misspelled_keyword_argument_on_a_saved_model(tiny_dir, tmp_path, monkeypatch):
    from optimum.quantization.backends.torch import TorchBackend

    QuantModelForSequenceClassification.from_pretrained(
        tiny_dir("text-classification"), backend="torch", quantize="dynamic").save_pretrained(tmp_path / "q")
    monkeypatch.setattr(TorchBackend, "load", lambda *a, **k: pytest.fail("loaded before refusing"))
    with pytest.raises(ConfigError, match="`tokenzer`.*did you mean `tokenizer`"):
        QuantModelForSequenceClassification.from_pretrained(tmp_path / "q", tokenzer=None)


def test_misspelled_search_setting_fails_before_the_search(tiny_dir, monkeypatch):
    from optimum.quantization.autoquant import search

    monkeypatch.setattr(search.Search, "run", lambda self: pytest.fail("searched before refusing"))
    with pytest.raises(ConfigError, match="`tolerence`.*did you mean `tolerance`"):
        QuantModelForSequenceClassification.from_pretrained(
            tiny_dir("text-classification"), quantize="auto", eval_dataset=SENTENCES, tolerence=0.5)


# ----------------------------------------------------------------------------------------- random head

def test_cli_warns_when_the_head_is_randomly_initialised(tiny_dir, tmp_path, capsys):
    report = tmp_path / "report.json"
    # A base checkpoint (BertModel) quantized as a classifier: transformers initialises the classifier at random.
    assert main(["--model", str(tiny_dir("feature-extraction")), "--task", "text-classification",
                 "--output", str(tmp_path / "fresh"), "--report", str(report)]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1, warnings
    assert "classifier.weight" in warnings[0] and "randomly initialised" in warnings[0]
    assert "classifier.weight" in json.loads(report.read_text())["randomly_initialised_weights"]
    # A checkpoint with its head: no warning.
    assert main(["--model", str(tiny_dir("text-classification")), "--output", str(tmp_path / "trained")]) == 0
    assert "WARNING" not in capsys.readouterr().out


# ----------------------------------------------------------------------------------------- QA calibration rows

QA_ROWS = [{"question": "what is slow ?", "context": sentence} for sentence in SENTENCES[:4]]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_qa_calibration_dicts_are_tokenized_as_question_context_pairs(tiny_dir, monkeypatch, backend):
    import importlib

    from optimum.quantization import QuantModelForQuestionAnswering, StaticQuantConfig

    if backend == "openvino":
        pytest.importorskip("optimum.intel")
    module = importlib.import_module(f"optimum.quantization.backends.{backend}")
    seen = []

    def spy(examples, *args, **kwargs):
        seen.extend(examples)
        return tokenize(examples, *args, **kwargs)

    tokenize = module.tokenize_examples
    monkeypatch.setattr(module, "tokenize_examples", spy)
    options = {"precision": "int8"} if backend == "openvino" else {}  # one candidate, no timing
    model = QuantModelForQuestionAnswering.from_pretrained(
        tiny_dir("question-answering"), backend=backend, calibration_dataset=QA_ROWS, **options,
        quantize=StaticQuantConfig(calibration={"sequence_length": 32}),
    )
    assert model.quantization_recipe.quantization.calibration.sequence_length == 32
    pairs = [(row["question"], row["context"]) for row in QA_ROWS]
    assert seen[: len(pairs)] == pairs
