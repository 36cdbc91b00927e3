"""Accuracy-aware search over OpenVINO candidates: backend options reach the build, NNCF's units fall back."""

from __future__ import annotations

import json

import pytest
from conftest import SENSITIVE, SENTENCES

ov = pytest.importorskip("openvino", reason="the openvino extra is not installed (pip install 'optimum-quantization[openvino,nncf]')")
pytest.importorskip("nncf", reason="the nncf extra is not installed (pip install 'optimum-quantization[openvino,nncf]')")

from optimum.quantization import AutoQuantConfig, QuantModelForSequenceClassification  # noqa: E402
from optimum.quantization.autoquant import candidates_for  # noqa: E402
from optimum.quantization.autoquant.trials import trial_key  # noqa: E402
from optimum.quantization.backends.nncf_ptq import excluded_but_compressed  # noqa: E402
from optimum.quantization.backends.openvino import MODEL_XML  # noqa: E402

TOLERANCE = 0.5  # cosine points: the sensitive layer costs ~19 with 8-bit weights, every other unit well under 1
QUIET = dict(latency_noise=0.99, show_progress=False, latency_sequence_length=16)
# Compare in f32: on CPUs with AVX512-BF16 OpenVINO computes the float parts in bf16 by default.
F32_COMPUTE = {"INFERENCE_PRECISION_HINT": "f32"}


def node_of(model: ov.Model, module: str) -> str:
    """The friendly name of `module`'s MatMul in an IR exported by optimum-intel."""
    return next(op.get_friendly_name() for op in model.get_ops()
                if op.get_type_name() == "MatMul" and op.get_friendly_name().startswith(f"__module.{module}/"))


def test_openvino_candidates_rank_and_skip_like_the_others():
    config = AutoQuantConfig(backends=["onnxruntime", "openvino"])
    chosen, skipped = candidates_for(config, has_calibration=False)
    assert "openvino-int8-weights" in [c.name for c in chosen]
    assert "openvino-static" in [c.name for c, _ in skipped]  # NNCF's static INT8 needs calibration data
    chosen = candidates_for(config, has_calibration=True)[0]
    assert [c.speed_rank for c in chosen] == sorted(c.speed_rank for c in chosen)
    static = next(c for c in chosen if c.name == "openvino-static")
    assert static.options == {"precision": "int8"}  # no precision timing inside the trial: the search times it
    # Options change a trial's identity, but no options keep the key logged before options existed.
    assert trial_key("openvino", {"a": 1}) == trial_key("openvino", {"a": 1}, {})
    assert trial_key("openvino", {"a": 1}, {"precision": "int8"}) != trial_key("openvino", {"a": 1})


def test_search_falls_back_through_nncf_units_on_openvino(sensitive_model, tmp_path):
    """8-bit weights without smoothing lose ~19 points on the planted layer; the search keeps just it float."""
    folder, metric = sensitive_model
    config = AutoQuantConfig(metric=metric, tolerance=TOLERANCE, backends=["openvino"],
                             candidates=["openvino-int8-weights"], work_dir=str(tmp_path / "work"), **QUIET)
    model = QuantModelForSequenceClassification.from_pretrained(folder, quantize=config, ov_config=F32_COMPUTE)
    report = model.auto_quantization_report
    plain = next(t for t in report["trials"] if t["name"] == "openvino-int8-weights")
    assert plain["status"] == "rejected" and plain["metric"] < report["fp32"]["metric"] - 10
    assert plain["quantized_units"] == 13  # 2 layers x 6 linears + the pooler; the classifier stays float
    assert report["sensitivity"][0]["unit"] == SENSITIVE
    assert report["chosen"]["fallback"] == [SENSITIVE] and report["chosen"]["backend"] == "openvino"
    assert report["chosen"]["metric"] >= report["fp32"]["metric"] - TOLERANCE
    # The chosen IR really computes that layer with its float weight, and its neighbour with an INT8 one.
    ir = ov.Core().read_model(str(tmp_path / "work" / "best" / MODEL_XML))
    sensitive, neighbour = node_of(ir, SENSITIVE), node_of(ir, "bert.encoder.layer.0.output.dense")
    assert excluded_but_compressed(ir, [sensitive, neighbour]) == [neighbour]


def test_static_candidate_passes_its_precision_and_resumes_from_the_log(sensitive_model, tmp_path):
    folder, metric = sensitive_model
    calibration = tmp_path / "calibration.txt"
    calibration.write_text("\n".join(SENTENCES), encoding="utf-8")
    work = tmp_path / "work"
    # Static INT8 calibrated on these 12 sentences padded to 128 tokens scores ~96.6: accepted without fallback.
    config = AutoQuantConfig(metric=metric, tolerance=5.0, backends=["openvino"], candidates=["openvino-static"],
                             work_dir=str(work), **QUIET)

    def search():
        return QuantModelForSequenceClassification.from_pretrained(
            folder, quantize=config, calibration_dataset=str(calibration), ov_config=F32_COMPUTE)

    model = search()
    report = model.auto_quantization_report
    chosen = report["chosen"]
    assert chosen["name"] == "openvino-static" and chosen["options"] == {"precision": "int8"}
    assert report["fp32"]["metric"] - 5.0 <= chosen["metric"] < report["fp32"]["metric"]
    # precision="int8" reached the backend: static INT8 built alone, not FP32 / INT8 weights timed against it.
    precision = model.quantization_recipe.details["precision"]
    assert precision == {"requested": "int8", "chosen": "int8", "reason": "requested"}
    assert model.quantization_recipe.details["quantized_nodes"]["FakeQuantize"] > 0
    logged = [json.loads(line) for line in (work / "trials.jsonl").read_text().splitlines()]
    assert [t["options"] for t in logged] == [{}, {"precision": "int8"}]
    again = search().auto_quantization_report
    assert again["trials_run_now"] == 0 and again["chosen"]["key"] == chosen["key"]
