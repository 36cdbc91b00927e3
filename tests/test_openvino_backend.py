"""OpenVINO backend on tiny models: INT8 really in the IR and in the kernels that run, outputs close to FP32,
pipelines, generate, round trips, accuracy control, measured precision choice, and clear errors."""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import pytest
import torch
import transformers
from conftest import SENTENCES

pytest.importorskip("openvino", reason="the openvino extra is not installed (pip install 'optimum-quantization[openvino,nncf]')")
pytest.importorskip("nncf", reason="the nncf extra is not installed (pip install 'optimum-quantization[openvino,nncf]')")

from optimum.quantization import (  # noqa: E402
    AccuracyControl,
    CalibrationConfig,
    ConfigError,
    QuantModelForCausalLM,
    QuantModelForQuestionAnswering,
    QuantModelForSequenceClassification,
    StaticQuantConfig,
    WeightOnlyQuantConfig,
)
from optimum.quantization.backends import openvino_precision  # noqa: E402
from optimum.quantization.evaluation.census import openvino_quantized_counts, openvino_runtime_precisions  # noqa: E402
from optimum.quantization.hardware import cpu_info  # noqa: E402
from optimum.quantization.recipe import QuantizationRecipe  # noqa: E402

STATIC = StaticQuantConfig(calibration=CalibrationConfig(sequence_length=32))
# Numeric comparisons with PyTorch FP32 compile in f32: on CPUs with AMX/AVX512-BF16 OpenVINO computes an IR's
# non-INT8 parts in bf16 by default, an error that is OpenVINO's choice, not the quantization's.
F32_COMPUTE = {"INFERENCE_PRECISION_HINT": "f32"}
# Random-init 2-layer model, logits spread over a few units: same bounds as the ONNX Runtime static tests.
MIN_LOGIT_COSINE, MIN_MEAN_LOGIT_COSINE, MAX_ABS_LOGIT_DIFF = 0.90, 0.99, 1.0
QA_PAIRS = [("what is slow ?", s) for s in SENTENCES]


def torch_logits(folder, cls=transformers.AutoModelForSequenceClassification, **inputs):
    with torch.no_grad():
        return cls.from_pretrained(folder).eval()(**inputs)


def assert_close(reference, candidate):
    cosine = (reference * candidate).sum(-1) / (np.linalg.norm(reference, axis=-1) * np.linalg.norm(candidate, axis=-1))
    assert cosine.min() > MIN_LOGIT_COSINE and cosine.mean() > MIN_MEAN_LOGIT_COSINE, cosine
    assert np.abs(reference - candidate).max() < MAX_ABS_LOGIT_DIFF
    assert (reference.argmax(-1) == candidate.argmax(-1)).mean() >= 0.9


def forced_timing(winner: str, seen: list):
    """A `time_candidates` that really compiles and runs every candidate, then reports `winner` the fastest."""
    real = openvino_precision.time_candidates

    def time_candidates(models, feeds, device, ov_config):
        measured = real(models, feeds, device, ov_config)
        seen.append({"models": sorted(models), "feeds": len(feeds), "device": device, "ov_config": ov_config,
                     "measured": measured})
        return {name: 10.0 if name == winner else 20.0 for name in measured}

    return time_candidates


def no_timing(*args):
    raise AssertionError("an explicit precision (or accuracy control) must not time candidates")


@contextlib.contextmanager
def backend_warnings(monkeypatch, caplog):
    """Collect the OpenVINO backend's WARNING-or-higher messages: yields a function returning them."""
    # optimum's logging setup stops propagation at the "optimum" logger: listen on the backend's own logger.
    backend_logger = logging.getLogger("optimum.quantization.backends.openvino")
    monkeypatch.setattr(backend_logger, "handlers", [caplog.handler])
    monkeypatch.setattr(backend_logger, "propagate", False)
    with caplog.at_level(logging.INFO, logger=backend_logger.name):
        yield lambda: [r.getMessage() for r in caplog.records
                       if r.name == backend_logger.name and r.levelno >= logging.WARNING]


@pytest.fixture(scope="module")
def static_classifier(tiny_dir):
    """precision="auto" with static INT8 measured fastest."""
    folder = tiny_dir("text-classification")
    seen: list = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(openvino_precision, "time_candidates", forced_timing("int8", seen))
        model = QuantModelForSequenceClassification.from_pretrained(
            folder, backend="openvino", quantize=STATIC, calibration_dataset=SENTENCES, precision="auto"
        )
    return folder, model, seen


@pytest.fixture(scope="module")
def static_options_off(tiny_dir):
    """One static INT8 build with every default the option tests below turn off (asymmetric activations, attention
    inputs float, no smoothing): one NNCF build for three options instead of three (each option acts on its own
    part of the recipe: the preset, the ignored scope, SmoothQuant's alpha)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(openvino_precision, "time_candidates", no_timing)
        return QuantModelForSequenceClassification.from_pretrained(
            tiny_dir("text-classification"), backend="openvino", calibration_dataset=SENTENCES, precision="int8",
            quantize=STATIC.replace(symmetric=False, activation_matmuls=False, smoothing_alpha=None),
        )


def test_static_int8_ir_and_kernels_are_int8_and_match_fp32(static_classifier, tmp_path):
    folder, model, _ = static_classifier
    from optimum.intel import OVModelForSequenceClassification

    assert isinstance(model, OVModelForSequenceClassification)
    counts = openvino_quantized_counts(model.model)
    # 2 layers x (Q, K, V, attention output, FFN in, FFN out) + pooler = 13 weights in 8 bits (or more: NNCF
    # also stores constant operands it quantizes); the classifier head stays FP32.
    assert counts["weights_i8"] >= 13 and counts["FakeQuantize"] >= 13, counts
    details = model.quantization_recipe.details
    assert details["precision"]["chosen"] == "int8" and details["algorithm"] == "nncf.quantize"
    assert details["excluded_nodes"] == ["__module.classifier/aten::linear/Add"]
    assert details["quantized_nodes"] == counts and details["int8_size_bytes"] < details["fp32_size_bytes"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer(SENTENCES, return_tensors="pt", padding=True)
    model(**inputs)
    model.save_pretrained(tmp_path / "saved")
    f32 = QuantModelForSequenceClassification.from_pretrained(tmp_path / "saved", ov_config=F32_COMPUTE)
    assert_close(torch_logits(folder, **inputs).logits.numpy(), f32(**inputs).logits.numpy())
    # The CPU plugin really runs the GEMMs in 8 bits (read after the first inference: dynamic shapes).
    kernels = openvino_runtime_precisions(model.request)
    assert any(k.startswith("FullyConnected") and k.split()[1] in ("i8", "u8") for k in kernels), kernels


def activation_ranges(model) -> list[tuple[float, float]]:
    """(input_low, input_high) of every FakeQuantize on an activation (not on a constant weight)."""
    ranges = []
    for op in model.get_ops():
        if op.get_type_name() == "FakeQuantize" and op.input_value(0).get_node().get_type_name() != "Constant":
            low, high = (op.input_value(i).get_node().get_data() for i in (1, 2))
            ranges.append((float(low.min()), float(high.max())))
    return ranges


def test_static_activations_are_symmetric_by_default(static_classifier, static_options_off):
    """symmetric="auto" on OpenVINO is NNCF's performance preset: every activation range is centred on zero (or
    starts at zero, for a non-negative tensor); symmetric=False (the mixed preset) has shifted ranges."""
    _, model, _ = static_classifier
    assert model.quantization_recipe.details["preset"] == "performance"
    ranges = activation_ranges(model.model)
    assert ranges and all(low == 0 or np.isclose(-low / high, 128 / 127, rtol=1e-3) for low, high in ranges), ranges
    asymmetric = static_options_off  # symmetric=False
    assert asymmetric.quantization_recipe.details["preset"] == "mixed"
    assert any(low != 0 and not np.isclose(-low / high, 128 / 127, rtol=1e-3)
               for low, high in activation_ranges(asymmetric.model))


def attention_inputs_quantized(model) -> list[bool]:
    """For each ScaledDotProductAttention's Q and K input: whether a FakeQuantize feeds it (through reshapes)."""
    def quantized(value) -> bool:
        node = value.get_node()
        while node.get_type_name() in ("Transpose", "Reshape"):
            node = node.input_value(0).get_node()
        return node.get_type_name() == "FakeQuantize"

    return [quantized(op.input_value(port)) for op in model.get_ops()
            if op.get_type_name() == "ScaledDotProductAttention" for port in (0, 1)]


def test_attention_inputs_are_quantized_by_default_and_kept_float_on_request(static_classifier, static_options_off):
    """activation_matmuls="auto" on OpenVINO is NNCF's transformer scheme (Q and K of attention quantized)."""
    _, model, _ = static_classifier
    assert model.quantization_recipe.details["activation_matmuls"] == {"quantized": True, "kept_float": []}
    assert attention_inputs_quantized(model.model) == [True] * 4  # 2 layers x (Q, K)
    kept = static_options_off  # activation_matmuls=False
    attention = [f"__module.bert.encoder.layer.{i}.attention.self/aten::scaled_dot_product_attention/"
                 "ScaledDotProductAttention" for i in range(2)]
    details = kept.quantization_recipe.details
    assert details["activation_matmuls"] == {"quantized": False, "kept_float": attention}
    assert details["excluded_nodes"] == ["__module.classifier/aten::linear/Add", *attention]
    assert attention_inputs_quantized(kept.model) == [False] * 4


def smooth_quant_nodes(model) -> int:
    return sum(op.get_friendly_name().endswith("/nncf_smooth_quant") for op in model.get_ops())


def test_static_smoothing_auto_is_nncfs_none_turns_it_off_and_a_float_is_passed_on(
        static_classifier, static_options_off, tiny_dir, monkeypatch):
    _, model, _ = static_classifier
    assert model.quantization_recipe.details["smooth_quant_matmul_alpha"] == 0.95  # NNCF's transformer default
    assert smooth_quant_nodes(model.model) > 0
    monkeypatch.setattr(openvino_precision, "time_candidates", no_timing)
    built = {None: static_options_off}  # smoothing_alpha=None
    built[0.5] = QuantModelForSequenceClassification.from_pretrained(
        tiny_dir("text-classification"), backend="openvino", quantize=STATIC.replace(smoothing_alpha=0.5),
        calibration_dataset=SENTENCES, precision="int8",
    )
    assert built[None].quantization_recipe.details["smooth_quant_matmul_alpha"] == -1.0
    assert smooth_quant_nodes(built[None].model) == 0
    assert built[0.5].quantization_recipe.details["smooth_quant_matmul_alpha"] == 0.5
    assert smooth_quant_nodes(built[0.5].model) > 0


def test_static_round_trip_and_pipeline(static_classifier, tmp_path):
    folder, model, _ = static_classifier
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer(SENTENCES, return_tensors="np", padding=True)
    model.save_pretrained(tmp_path / "saved")
    assert {"openvino_model.xml", "openvino_model.bin", "quantization_config.json", "tokenizer.json"} <= {
        p.name for p in (tmp_path / "saved").iterdir()
    }
    reloaded = QuantModelForSequenceClassification.from_pretrained(tmp_path / "saved")
    assert type(reloaded) is type(model)
    assert reloaded.quantization_recipe.to_dict()["details"] == model.quantization_recipe.to_dict()["details"]
    np.testing.assert_allclose(reloaded(**inputs).logits, model(**inputs).logits, atol=1e-5)
    classifier = transformers.pipeline("text-classification", model=reloaded, tokenizer=tokenizer)
    assert len(classifier(SENTENCES[:3])) == 3


def test_question_answering_static_with_pairs_in_pipeline(tiny_dir, monkeypatch):
    monkeypatch.setattr(openvino_precision, "time_candidates", no_timing)
    folder = tiny_dir("question-answering")
    model = QuantModelForQuestionAnswering.from_pretrained(
        folder, backend="openvino", quantize=STATIC, calibration_dataset=QA_PAIRS, precision="int8"
    )
    precision = model.quantization_recipe.details["precision"]
    assert precision == {"requested": "int8", "chosen": "int8", "reason": "requested"}
    assert openvino_quantized_counts(model.model)["FakeQuantize"] >= 12
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer(*zip(*QA_PAIRS), return_tensors="pt", padding=True)
    reference = torch_logits(folder, transformers.AutoModelForQuestionAnswering, **inputs)
    out = model(**inputs)
    mask = inputs["attention_mask"].numpy().astype(bool)
    for name in ("start_logits", "end_logits"):
        diff = np.abs(getattr(out, name).numpy() - getattr(reference, name).numpy())[mask]
        assert diff.max() < MAX_ABS_LOGIT_DIFF, (name, diff.max())
    answer = transformers.pipeline("question-answering", model=model, tokenizer=tokenizer)(
        question="what is slow ?", context=SENTENCES[3]
    )
    assert answer["answer"] in SENTENCES[3]


def test_auto_times_all_three_candidates_and_records_the_choice(static_classifier):
    _, model, seen = static_classifier
    assert len(seen) == 1  # measured once, with every candidate compiled and run on the calibration feeds
    assert seen[0]["models"] == sorted(openvino_precision.CANDIDATES) and seen[0]["feeds"] == len(SENTENCES)
    assert seen[0]["device"] == "CPU" and seen[0]["ov_config"] == {"PERFORMANCE_HINT": "LATENCY"}
    assert all(ms > 0 for ms in seen[0]["measured"].values()), seen[0]["measured"]
    precision = model.quantization_recipe.details["precision"]
    assert (precision["requested"], precision["chosen"]) == ("auto", "int8")
    assert precision["measured_ms"] == {"int8": 10.0, "int8-weights": 20.0, "fp32": 20.0}
    assert precision["isa"] == list(cpu_info().isa) and "int8 10.00 ms" in precision["reason"]
    sizes = precision["size_bytes"]
    assert set(sizes) == set(openvino_precision.CANDIDATES)
    assert sizes["fp32"] > max(sizes["int8"], sizes["int8-weights"])
    timing = precision["timing"]
    assert timing["rounds"] == openvino_precision.TIMING_ROUNDS and timing["input_shape"] == [1, 32]


@pytest.mark.parametrize("winner", ["fp32", "int8-weights"])
def test_auto_stores_the_measured_fastest(tiny_dir, tmp_path, monkeypatch, caplog, winner):
    folder = tiny_dir("text-classification")
    seen: list = []
    monkeypatch.setattr(openvino_precision, "time_candidates", forced_timing(winner, seen))
    with backend_warnings(monkeypatch, caplog) as records:
        model = QuantModelForSequenceClassification.from_pretrained(
            folder, backend="openvino", quantize=STATIC, calibration_dataset=SENTENCES, precision="auto",
            ov_config={"INFERENCE_NUM_THREADS": 1, **F32_COMPUTE},
        )
    # Timed as it will be loaded: the user's ov_config over optimum-intel's default hint.
    assert seen[0]["ov_config"] == {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 1, **F32_COMPUTE}
    # The measured choice is announced in one visible line, with static INT8's measured speed against FP32.
    reason = model.quantization_recipe.details["precision"]["reason"]
    assert records() == [f'OpenVINO precision="auto" stored {winner}; static INT8 ran at '
                         f'{1.0 if winner == "int8-weights" else 0.5:.2f}x of FP32 speed here: {reason}.']
    details = model.quantization_recipe.details
    assert details["precision"]["chosen"] == winner and details["precision"]["measured_ms"][winner] == 10.0
    counts = openvino_quantized_counts(model.model)
    assert details["quantized_nodes"] == counts and "FakeQuantize" not in counts
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer(SENTENCES, return_tensors="pt", padding=True)
    reference = torch_logits(folder, **inputs).logits.numpy()
    if winner == "fp32":  # the export itself: no INT8 anywhere, FP32 outputs
        assert counts == {} and "int8_size_bytes" not in details and "algorithm" not in details
        assert "FP32 IR is stored" in details["precision"]["reason"]
        np.testing.assert_allclose(model(**inputs).logits.numpy(), reference, atol=1e-4)
    else:  # INT8 weights, FP32 compute
        assert details["algorithm"] == "nncf.compress_weights" and counts["weights_i8"] >= 13, counts
        assert details["int8_size_bytes"] == details["precision"]["size_bytes"]["int8-weights"]
        assert_close(reference, model(**inputs).logits.numpy())
    model.save_pretrained(tmp_path / "saved")
    assert openvino_quantized_counts(tmp_path / "saved" / "openvino_model.xml") == counts
    reloaded = QuantModelForSequenceClassification.from_pretrained(tmp_path / "saved", ov_config=F32_COMPUTE)
    assert reloaded.quantization_recipe.details == details and reloaded.quantization_recipe.quantization == STATIC
    np.testing.assert_allclose(reloaded(**inputs).logits.numpy(), model(**inputs).logits.numpy(), atol=1e-5)


def test_benchmark_variant_ov_int8_auto_times_with_the_benchmark_threads_and_reports_its_choice(tiny_dir, monkeypatch):
    from optimum.quantization.evaluation.report import evaluation_markdown
    from optimum.quantization.side_by_side import run_evaluation

    seen: list = []
    monkeypatch.setattr(openvino_precision, "time_candidates", forced_timing("fp32", seen))
    threads = torch.get_num_threads()  # run_evaluation sets torch's threads: keep them as they are for later tests
    result = run_evaluation(str(tiny_dir("text-classification")), "text-classification",
                            {"texts": SENTENCES, "labels": None}, variants=["ov-int8-auto", "mine=openvino:static"],
                            threads=threads)
    row, mine = result["variants"]
    assert "error" not in mine and "inference_precision" in mine  # `NAME=openvino:...` rows record it too
    assert "error" not in row, row
    assert seen[0]["ov_config"] == {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    assert row["precision"]["chosen"] == "fp32" and row["precision"]["requested"] == "auto"
    assert '- `ov-int8-auto`: precision="auto" stored **fp32**: measured fastest' in evaluation_markdown(result)
    # The FP32 IR computes in bf16 where the CPU plugin can (AMX/AVX512-BF16): the row and the report say which.
    expected = "bf16" if bf16_capable() else "f32"
    assert row["inference_precision"] == expected
    assert ("OpenVINO computed in **bf16**" in evaluation_markdown(result)) == (expected == "bf16")


def test_inference_precision_reads_the_compiled_model(static_classifier, tmp_path):
    _, model, _ = static_classifier
    assert openvino_precision.inference_precision(model) == str(
        model.request.get_property("INFERENCE_PRECISION_HINT").to_string()
    )
    model.save_pretrained(tmp_path / "saved")
    forced = QuantModelForSequenceClassification.from_pretrained(tmp_path / "saved", ov_config=F32_COMPUTE)
    assert openvino_precision.inference_precision(forced) == "f32"
    assert openvino_precision.inference_precision(object()) is None  # not an OpenVINO model: nothing recorded


def test_pick_fastest_prefers_the_smaller_file_within_the_margin():
    sizes = {"int8": 25, "int8-weights": 23, "fp32": 90}
    assert openvino_precision.pick_fastest({"int8": 134.3, "int8-weights": 101.7, "fp32": 90.3}, sizes)[0] == "fp32"
    # FP32 fastest by less than TIE_MARGIN (5%): the quantized, smaller file wins, and the reason says so.
    chosen, why = openvino_precision.pick_fastest({"int8": 130.0, "int8-weights": 94.0, "fp32": 90.3}, sizes)
    assert chosen == "int8-weights" and "within 5% of the fastest (fp32)" in why
    pick = openvino_precision.pick_fastest
    assert pick({"int8": 50.0, "int8-weights": 52.0, "fp32": 90.0}, sizes)[0] == "int8-weights"
    assert pick({"int8": 50.0, "int8-weights": 60.0, "fp32": 90.0}, sizes)[0] == "int8"


def test_activation_matmuls_follow_weights_through_convert_and_transpose():
    """Attention exported without ScaledDotProductAttention: only the MatMul of two activations is listed."""
    import openvino as ov
    import openvino.opset13 as ops

    from optimum.quantization.backends.nncf_ptq import activation_matmuls

    x = ops.parameter([2, 4], np.float32, name="x")
    by_weight = ops.matmul(x, ops.convert(ops.constant(np.ones((4, 4), np.float16)), np.float32), False, False)
    transposed = ops.transpose(ops.constant(np.ones((4, 4), np.float32)), ops.constant(np.array([1, 0])))
    by_transposed_weight = ops.matmul(by_weight, transposed, False, False)
    scores = ops.matmul(by_weight, by_transposed_weight, False, True)
    for node, name in ((by_weight, "by_weight"), (by_transposed_weight, "by_transposed_weight"), (scores, "scores")):
        node.set_friendly_name(name)
    assert activation_matmuls(ov.Model([scores], [x])) == ["scores"]


def test_auto_times_each_candidate_compiled_as_it_will_load(static_classifier, monkeypatch):
    """The INT8 candidate is timed with the f32 hint it loads with; the others with the caller's settings only."""
    import openvino as ov

    _, model, _ = static_classifier
    compiled = {}
    real = ov.Core.compile_model

    def recording(self, candidate, device, config=None):
        compiled[candidate.get_friendly_name()] = config
        return real(self, candidate, device, config or {})

    monkeypatch.setattr(ov.Core, "compile_model", recording)
    fp32 = model.model.clone()
    fp32.set_friendly_name("as-fp32")
    int8 = model.model.clone()
    int8.set_friendly_name("as-int8")
    tokenizer = transformers.AutoTokenizer.from_pretrained(static_classifier[0])
    feeds = [dict(tokenizer(SENTENCES[0], return_tensors="np"))]
    measured = openvino_precision.time_candidates({"int8": int8, "fp32": fp32}, feeds, "CPU", {})
    assert set(measured) == {"int8", "fp32"}
    assert compiled == {"as-int8": {"INFERENCE_PRECISION_HINT": "f32"}, "as-fp32": {}}


def test_fixed_precisions_are_not_measured():
    assert openvino_precision.fixed_precision("int8-weights", accuracy_control=False) == ("int8-weights", "requested")
    assert openvino_precision.fixed_precision("int8", accuracy_control=False) == ("int8", "requested")
    assert openvino_precision.fixed_precision("auto", accuracy_control=False) is None
    assert openvino_precision.fixed_precision("int8-weights", accuracy_control=True)[0] == "int8"
    with pytest.raises(ConfigError, match="precision"):
        openvino_precision.fixed_precision("int4", accuracy_control=False)


def test_static_request_stores_static_int8_on_every_cpu_and_warns_once_without_vnni(tiny_dir, monkeypatch, caplog):
    """quantize="static" means static INT8, whatever the CPU: nothing is timed, and on a CPU without VNNI one
    warning line gives the speed against FP32 to expect."""
    from optimum.quantization.backends import openvino as openvino_backend
    from optimum.quantization.hardware import CpuInfo

    monkeypatch.setattr(openvino_precision, "time_candidates", no_timing)
    monkeypatch.setattr(openvino_backend, "cpu_info", lambda: CpuInfo(model="AVX2 CPU", isa=("avx2", "fma"), cores=2))
    with backend_warnings(monkeypatch, caplog) as records:
        model = QuantModelForSequenceClassification.from_pretrained(
            tiny_dir("text-classification"), backend="openvino", quantize="static", calibration_dataset=SENTENCES)
    details = model.quantization_recipe.details
    assert details["precision"] == {"requested": "int8", "chosen": "int8", "reason": "requested"}
    assert details["algorithm"] == "nncf.quantize" and openvino_quantized_counts(model.model)["FakeQuantize"] > 0
    assert records() == [openvino_precision.notice(details["precision"], has_vnni=False)]
    assert "0.67x-0.80x of OpenVINO FP32 speed" in records()[0] and "precision='auto'" in records()[0]


def test_precision_notice_names_the_measured_or_expected_speed():
    requested = {"requested": "int8", "chosen": "int8", "reason": "requested"}
    assert openvino_precision.notice(requested, has_vnni=True) is None  # VNNI: static INT8 is the fast form
    weights = {**requested, "requested": "int8-weights", "chosen": "int8-weights"}
    assert openvino_precision.notice(weights, has_vnni=False) is None
    assert "likely runs slower than FP32" in openvino_precision.notice(requested, has_vnni=False)
    # precision="int8" passed on purpose: the caller knows; accuracy control forces static INT8 and says why.
    assert openvino_precision.notice(requested, has_vnni=False, explicit=True) is None
    forced = {"requested": "int8", "chosen": "int8", "reason": "accuracy control needs static INT8"}
    assert openvino_precision.notice(forced, has_vnni=False, explicit=True).endswith(
        "batch 4 x 128); accuracy control needs static INT8.")
    measured = {"requested": "auto", "chosen": "fp32", "reason": "measured fastest here",
                "measured_ms": {"int8": 40.0, "int8-weights": 33.0, "fp32": 30.0}}
    for has_vnni in (True, False):  # a measured choice is announced on every CPU
        assert openvino_precision.notice(measured, has_vnni) == ('OpenVINO precision="auto" stored fp32; static INT8 '
                                                                 'ran at 0.75x of FP32 speed here: measured fastest here.')


@pytest.mark.slow  # one more export with real timing (~20 s); the forced-winner tests cover the paths
def test_auto_precision_on_this_cpu_is_recorded_and_matches_the_ir(tiny_dir):
    from optimum.quantization import QuantModelForFeatureExtraction

    folder = tiny_dir("feature-extraction")
    model = QuantModelForFeatureExtraction.from_pretrained(folder, backend="openvino", quantize="static",
                                                           calibration_dataset=SENTENCES, precision="auto")
    precision = model.quantization_recipe.details["precision"]
    assert precision["requested"] == "auto"
    assert precision["chosen"] == openvino_precision.pick_fastest(precision["measured_ms"], precision["size_bytes"])[0]
    counts = openvino_quantized_counts(model.model)
    if precision["chosen"] == "int8":
        assert counts["FakeQuantize"] > 0
    elif precision["chosen"] == "int8-weights":  # INT8 weights, FP32 compute: no activation quantizers
        assert "FakeQuantize" not in counts and counts.get("weights_u8", 0) + counts.get("weights_i8", 0) >= 12, counts
    else:
        assert counts == {}
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer(SENTENCES, return_tensors="pt", padding=True)
    with torch.no_grad():
        reference = transformers.AutoModel.from_pretrained(folder).eval()(**inputs).last_hidden_state.numpy()
    candidate = model(**inputs).last_hidden_state.numpy()
    cosine = (reference * candidate).sum(-1) / (np.linalg.norm(reference, axis=-1) * np.linalg.norm(candidate, axis=-1))
    assert cosine.mean() > 0.99, cosine.mean()


def test_weight_only_int4_causal_lm_generates_and_round_trips(tiny_dir, tmp_path):
    folder = tiny_dir("text-generation")
    config = WeightOnlyQuantConfig(bits=4, block_size=16, ratio=0.5)
    model = QuantModelForCausalLM.from_pretrained(folder, backend="openvino", quantize=config)
    counts = openvino_quantized_counts(model.model)
    assert counts.get("weights_i4", 0) + counts.get("weights_u4", 0) > 0 and counts.get("weights_u8", 0) > 0, counts
    details = model.quantization_recipe.details
    assert (details["mode"], details["group_size"], details["ratio"]) == ("int4_sym", 16, 0.5)
    assert not any("FakeQuantize" in k for k in counts)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("it 's a charming", return_tensors="pt")
    generated = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == ids["input_ids"].shape[1] + 4
    model.save_pretrained(tmp_path / "w4")
    reloaded = QuantModelForCausalLM.from_pretrained(tmp_path / "w4")
    assert reloaded.generate(**ids, max_new_tokens=4, do_sample=False).tolist() == generated.tolist()
    text = transformers.pipeline("text-generation", model=reloaded, tokenizer=tokenizer)("hello", max_new_tokens=3)
    assert text[0]["generated_text"].startswith("hello")


@pytest.mark.slow  # one more decoder export (~20 s); the 4-bit test covers the weight-only path
@pytest.mark.parametrize("kind, tied", [("text-generation", True), ("llama-text-generation", False)])
def test_weight_only_int8_logits_match_fp32(tiny_dir, kind, tied):
    folder = tiny_dir(kind)
    model = QuantModelForCausalLM.from_pretrained(folder, backend="openvino", quantize="w8")
    details = model.quantization_recipe.details
    assert details["mode"] == "int8_sym"
    # lm_head is excluded by default; tied to the (compressed) token embedding it still computes in INT8, and the
    # recipe must say so rather than list it as FP32.
    lm_head = [n for n in details["excluded_nodes"] + details["excluded_but_shared_with_compressed_weight"] if "lm_head" in n]
    assert len(lm_head) == 1
    assert (lm_head[0] in details["excluded_but_shared_with_compressed_weight"]) == tied
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(SENTENCES[0], return_tensors="pt")
    with torch.no_grad():
        reference = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()(**ids).logits.numpy()
    candidate = model(**ids).logits.numpy()
    assert np.abs(reference - candidate).max() < 0.05 * np.abs(reference).max()
    assert (reference.argmax(-1) == candidate.argmax(-1)).mean() >= 0.9


def test_accuracy_control_records_metrics_within_the_drop(tiny_dir, monkeypatch):
    monkeypatch.setattr(openvino_precision, "time_candidates", no_timing)  # accuracy control forces static INT8
    folder = tiny_dir("text-classification")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer(SENTENCES, return_tensors="pt", padding=True)
    labels = torch_logits(folder, **inputs).logits.argmax(-1).tolist()  # agreement with FP32 as the metric

    def agreement(outputs):
        return float(np.mean([o["logits"].argmax() == y for o, y in zip(outputs, labels)]))

    control = AccuracyControl(validation_data=SENTENCES, metric=agreement, max_drop=0.1, max_num_iterations=4)
    model = QuantModelForSequenceClassification.from_pretrained(
        folder, backend="openvino", quantize=STATIC, calibration_dataset=SENTENCES, accuracy_control=control
    )
    details = model.quantization_recipe.details
    assert details["precision"]["chosen"] == "int8" and "accuracy control" in details["precision"]["reason"]
    assert details["algorithm"] == "nncf.quantize_with_accuracy_control"
    report = details["accuracy_control"]
    assert report["metric"] == "agreement" and report["validation_samples"] == len(SENTENCES)
    assert report["fp32_metric"] == 1.0 and report["within_max_drop"] and report["drop"] <= 0.1
    assert openvino_quantized_counts(model.model).get("FakeQuantize", 0) > 0


def test_loads_an_openvino_ir_folder_written_by_another_tool(tiny_dir, tmp_path):
    """QAT exports land in optimum-intel's layout with our recipe: they load as saved, never re-quantized."""
    import nncf
    import openvino as ov
    from optimum.intel import OVModelForSequenceClassification

    folder = tiny_dir("text-classification")
    exported = OVModelForSequenceClassification.from_pretrained(folder, export=True, compile=False)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    feeds = [dict(tokenizer(s, return_tensors="np")) for s in SENTENCES]
    quantized = nncf.quantize(exported.model, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER, subset_size=12)
    out = tmp_path / "qat"
    exported.model = quantized
    exported.save_pretrained(out)
    tokenizer.save_pretrained(out)
    QuantizationRecipe(backend="openvino", task="text-classification", quantization=None,
                       details={"exported_by": "another tool"}).save(out)
    xml_before = (out / "openvino_model.xml").read_bytes()
    model = QuantModelForSequenceClassification.from_pretrained(out)
    assert type(model).__name__ == "OVQuantModelForSequenceClassification"
    assert openvino_quantized_counts(model.model) == openvino_quantized_counts(ov.Core().read_model(out / "openvino_model.xml"))
    assert (out / "openvino_model.xml").read_bytes() == xml_before
    assert model(**tokenizer(SENTENCES[:2], return_tensors="np", padding=True)).logits.shape == (2, 3)


@pytest.mark.parametrize(
    "task_class, kwargs, match",
    [
        (QuantModelForSequenceClassification, {"quantize": "w4"}, "4-bit weight-only quantization is for causal LMs"),
        (QuantModelForSequenceClassification, {"quantize": "static"}, "needs calibration data"),
        (QuantModelForSequenceClassification, {"quantize": "dynamic"}, "no dynamic INT8"),
        (QuantModelForSequenceClassification, {"quantize": StaticQuantConfig(calibration="entropy"), "calibration_dataset": SENTENCES}, "entropy"),
        (QuantModelForSequenceClassification, {"quantize": StaticQuantConfig(format="qoperator"), "calibration_dataset": SENTENCES}, "qdq"),
        (QuantModelForCausalLM, {"quantize": WeightOnlyQuantConfig(bits=4, accuracy_level=0)}, "accuracy_level"),
    ],
)
def test_bad_configs_fail_before_export(tiny_dir, task_class, kwargs, match):
    kind = "text-generation" if task_class is QuantModelForCausalLM else "text-classification"
    with pytest.raises(ConfigError, match=match):
        task_class.from_pretrained(tiny_dir(kind), backend="openvino", **kwargs)


def test_backend_options_are_checked(tiny_dir):
    folder = tiny_dir("text-classification")
    with pytest.raises(ConfigError, match="needs quantize='static'"):
        QuantModelForSequenceClassification.from_pretrained(folder, backend="openvino", quantize=None, precision="int8")
    with pytest.raises(ConfigError, match="max_drop"):
        AccuracyControl(validation_data=SENTENCES, metric=len, max_drop=-1)
    with pytest.raises(ConfigError, match="ratio"):
        WeightOnlyQuantConfig(bits=8, ratio=0.5)


def test_ratio_round_trips_and_onnxruntime_refuses_it(tiny_dir):
    from optimum.quantization import config_from_dict

    config = WeightOnlyQuantConfig(bits=4, block_size=64, ratio=0.8)
    assert config_from_dict(config.to_dict()) == config and config.group_size == 64
    assert WeightOnlyQuantConfig().ratio == 1.0
    with pytest.raises(ConfigError, match="ratio"):
        QuantModelForCausalLM.from_pretrained(tiny_dir("text-generation"), backend="onnxruntime", quantize=config)


def bf16_capable() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def test_static_int8_computes_in_f32_unless_the_ov_config_says_otherwise(static_classifier, tmp_path):
    """OpenVINO would run a static INT8 IR's float parts in bf16 on AMX/AVX512-BF16 CPUs; ours compile in f32."""
    _, model, _ = static_classifier
    assert model.ov_config["INFERENCE_PRECISION_HINT"] == "f32"  # what we asked for, on any CPU
    assert openvino_precision.inference_precision(model) == "f32"
    model.save_pretrained(tmp_path / "saved")
    reloaded = QuantModelForSequenceClassification.from_pretrained(tmp_path / "saved")
    assert reloaded.ov_config["INFERENCE_PRECISION_HINT"] == "f32"
    assert openvino_precision.inference_precision(reloaded) == "f32"
    assert openvino_precision.load_config("int8", None, device="GPU") is None  # f32 is a CPU default only
    assert openvino_precision.load_config("int8", {"INFERENCE_PRECISION_HINT": "bf16", "X": 1}) == {
        "INFERENCE_PRECISION_HINT": "bf16", "X": 1}  # the caller's setting wins
    assert openvino_precision.load_config("int8-weights", None) is None  # other precisions: OpenVINO's choice
    assert openvino_precision.load_config("fp32", {"X": 1}) == {"X": 1}
    if not bf16_capable():
        pytest.skip("this CPU has no bf16: OpenVINO computes in f32 whatever the hint (f32 default checked above)")
    told = QuantModelForSequenceClassification.from_pretrained(
        tmp_path / "saved", ov_config={"INFERENCE_PRECISION_HINT": "bf16"})
    assert openvino_precision.inference_precision(told) == "bf16"


def test_benchmark_variant_ov_config_option_reaches_the_model(static_classifier, tiny_dir, tmp_path):
    """`ov-int8-bf16-compute` is `ov-int8-nncf` loaded with INFERENCE_PRECISION_HINT=bf16 (variant option ov_config)."""
    from optimum.quantization.side_by_side import run_evaluation
    from optimum.quantization.variants import OpenVINOQuantized, parse_variant

    folder = tmp_path / "built"
    static_classifier[1].save_pretrained(folder)  # a static INT8 folder, as ov-int8-nncf builds (no second build)
    loaded = OpenVINOQuantized().load(parse_variant("ov-int8-bf16-compute"), folder, "text-classification", 2)
    assert loaded.ov_config["INFERENCE_PRECISION_HINT"] == "bf16"  # the option wins over our f32 default
    if not bf16_capable():
        pytest.skip("checked the hint reaches the model; this CPU has no bf16, so the compiled precision cannot show it")
    threads = torch.get_num_threads()
    result = run_evaluation(str(tiny_dir("text-classification")), "text-classification", {"texts": SENTENCES, "labels": None},
                            variants=["ov-int8-nncf", "ov-int8-bf16-compute"], threads=threads)
    ours, told = result["variants"]
    assert "error" not in ours and "error" not in told, result["variants"]
    assert (ours["inference_precision"], told["inference_precision"]) == ("f32", "bf16")
