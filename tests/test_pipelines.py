"""Every supported task runs in `transformers.pipeline()` from a quantized model, on both backends."""

from __future__ import annotations

import pytest
import transformers

from optimum.quantization import (
    QuantModelForCausalLM,
    QuantModelForFeatureExtraction,
    QuantModelForQuestionAnswering,
    QuantModelForSequenceClassification,
    QuantModelForTokenClassification,
)

CONTEXT = "the acting , costumes , music , cinematography and sound are all astounding ."


def check_text_classification(pipe):
    out = pipe(["one of the best films of the year", "boring , long and pointless"])
    assert len(out) == 2 and all(o["label"].startswith("LABEL_") and 0.0 <= o["score"] <= 1.0 for o in out)


def check_question_answering(pipe):
    out = pipe(question="what is astounding ?", context=CONTEXT)
    assert set(out) >= {"answer", "start", "end", "score"}
    assert CONTEXT[out["start"] : out["end"]] == out["answer"]


def check_token_classification(pipe):
    out = pipe("a good script , good actors and a great director")
    assert out and all({"entity", "score", "word"} <= set(o) for o in out)


def check_feature_extraction(pipe):
    out = pipe("a sometimes tedious film .")
    hidden = 64
    assert len(out[0]) > 2 and len(out[0][0]) == hidden


def check_text_generation(pipe):
    out = pipe("the movie is", max_new_tokens=5, do_sample=False)
    assert out[0]["generated_text"].startswith("the movie is") and len(out[0]["generated_text"]) > len("the movie is")


CASES = [
    ("text-classification", QuantModelForSequenceClassification, check_text_classification),
    ("question-answering", QuantModelForQuestionAnswering, check_question_answering),
    ("token-classification", QuantModelForTokenClassification, check_token_classification),
    ("feature-extraction", QuantModelForFeatureExtraction, check_feature_extraction),
    ("text-generation", QuantModelForCausalLM, check_text_generation),
]


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
@pytest.mark.parametrize("task,quant_class,check", CASES, ids=[c[0] for c in CASES])
def test_pipeline_from_quantized_model(tiny_dir, task, quant_class, check, backend):
    folder = tiny_dir(task)
    model = quant_class.from_pretrained(folder, backend=backend, quantize="dynamic")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    check(transformers.pipeline(task, model=model, tokenizer=tokenizer))


def test_pipeline_from_static_quantized_question_answering(tiny_dir):
    folder = tiny_dir("question-answering")
    model = QuantModelForQuestionAnswering.from_pretrained(
        folder, quantize="static", calibration_dataset=[("what is astounding ?", CONTEXT)] * 4
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    check_question_answering(transformers.pipeline("question-answering", model=model, tokenizer=tokenizer))
