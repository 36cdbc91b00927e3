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
ANY_METRIC = 200.0  # a tolerance every metric of 100 x cosine (-100..100) meets: the search accepts any trial
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


def test_an_nncf_unit_kept_float_by_name_recovers_the_planted_layer(sensitive_model):
    """What the search's fallback does on OpenVINO, in one build: NNCF's unit names (the modules' names) in `exclude`
    keep that MatMul float in the IR, while 8-bit weights on it lose >10 points. The search loop itself:
    test_autoquant.py and the slow test below."""
    from optimum.quantization import WeightOnlyQuantConfig

    folder, metric = sensitive_model
    # The same numerics on every CPU: f32 compute (not bf16 where the CPU has it), and no on-the-fly INT8 activations
    # for compressed-weight GEMMs (the CPU plugin's dynamic quantization on AVX-512/AMX CPUs): only the weights' 8-bit
    # rounding differs from FP32.
    kw = dict(backend="openvino", ov_config={**F32_COMPUTE, "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0})
    plain = QuantModelForSequenceClassification.from_pretrained(folder, quantize=WeightOnlyQuantConfig(bits=8), **kw)
    kept = QuantModelForSequenceClassification.from_pretrained(
        folder, quantize=WeightOnlyQuantConfig(bits=8, exclude=[SENSITIVE]), **kw)
    assert len(plain.quantization_recipe.details["quantized_units"]) == 13  # 2 x 6 linears + pooler
    assert SENSITIVE in plain.quantization_recipe.details["quantized_units"]
    assert SENSITIVE not in kept.quantization_recipe.details["quantized_units"]
    fp32 = 100.0  # the metric's FP32 score: the logits' cosine with themselves
    assert metric(plain) < fp32 - 10 and metric(kept) >= fp32 - TOLERANCE
    sensitive, neighbour = node_of(kept.model, SENSITIVE), node_of(kept.model, "bert.encoder.layer.0.output.dense")
    assert excluded_but_compressed(kept.model, [sensitive, neighbour]) == [neighbour]


@pytest.mark.slow  # 15 NNCF builds (~3 min on 2 cores); the fast test above builds the fallback's unit exclusion
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


def test_static_candidate_passes_its_precision_and_resumes_from_the_log(sensitive_model, tmp_path, monkeypatch):
    from optimum.quantization.backends.openvino import OpenVINOBackend

    folder, metric = sensitive_model
    # The backend's own record cannot tell an explicit precision="int8" from the default (also "int8" since static
    # stores static INT8 by default): record what each build was passed.
    passed, real_quantize = [], OpenVINOBackend.quantize
    monkeypatch.setattr(OpenVINOBackend, "quantize", lambda self, request: passed.append(
        request.load_kwargs.get("precision", "not passed")) or real_quantize(self, request))
    calibration = tmp_path / "calibration.txt"
    calibration.write_text("\n".join(SENTENCES), encoding="utf-8")
    work = tmp_path / "work"
    # What static INT8 scores here depends on the CPU: without VNNI reduce_range="auto" means NNCF's overflow fix
    # (7-bit weights), and the planted layer costs more than with VNNI's 8-bit weights (~96.6 on a Zen 5). This test
    # is about the option and the log, not the accuracy: a tolerance no metric of 100 x cosine can miss (|metric| <=
    # 100) accepts the static trial on every CPU, so no fallback runs. The fallback has its own tests.
    config = AutoQuantConfig(metric=metric, tolerance=ANY_METRIC, backends=["openvino"], candidates=["openvino-static"],
                             work_dir=str(work), **QUIET)

    def search():
        return QuantModelForSequenceClassification.from_pretrained(
            folder, quantize=config, calibration_dataset=str(calibration), ov_config=F32_COMPUTE)

    model = search()
    report = model.auto_quantization_report
    chosen = report["chosen"]
    assert chosen["name"] == "openvino-static" and chosen["options"] == {"precision": "int8"}
    assert chosen["fallback"] == [] and [t["phase"] for t in report["trials"]] == ["baseline", "candidate"]
    # The logged metric is the returned model's, measured on this CPU; INT8 moves it off FP32's.
    assert metric(model) == pytest.approx(chosen["metric"], abs=1e-3)
    assert chosen["metric"] < report["fp32"]["metric"]
    # precision="int8" reached the backend: static INT8 built alone, not FP32 / INT8 weights timed against it.
    assert passed.count("int8") == 1, passed
    precision = model.quantization_recipe.details["precision"]
    assert precision == {"requested": "int8", "chosen": "int8", "reason": "requested"}
    assert model.quantization_recipe.details["quantized_nodes"]["FakeQuantize"] > 0
    logged = [json.loads(line) for line in (work / "trials.jsonl").read_text().splitlines()]
    assert [t["options"] for t in logged] == [{}, {"precision": "int8"}]
    again = search().auto_quantization_report
    assert again["trials_run_now"] == 0 and again["chosen"]["key"] == chosen["key"]
    assert passed.count("int8") == 1, passed  # resumed: nothing static was built again
