"""Benchmark and side-by-side runs on tiny models: what they record, not how fast anything is."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from optimum.quantization import ConfigError
from optimum.quantization.commands.cli import main
from optimum.quantization.evaluation.benchmark import (
    BenchmarkConfig,
    latency_sweep,
    peak_rss_bytes,
    percentile,
    round_robin_ms,
    weights_size_bytes,
)
from optimum.quantization.evaluation.report import benchmark_markdown, evaluation_markdown, write_reports
from optimum.quantization.side_by_side import run_benchmark, run_evaluation, speedups
from optimum.quantization.variants import VariantSpec, parse_variant, parse_variants

from conftest import SENTENCES

QUICK = dict(batch_sizes=(1, 2), sequence_lengths=(8, 32), repeats=3, warmup=1, max_seconds_per_shape=2.0, threads=1)


def test_benchmark_config_validates_and_round_trips():
    config = BenchmarkConfig(**QUICK)
    assert BenchmarkConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == BenchmarkConfig(
        **{**QUICK, "batch_sizes": [1, 2], "sequence_lengths": [8, 32]}
    )
    for bad in ({"batch_sizes": ()}, {"sequence_lengths": (0,)}, {"repeats": 0}, {"threads": 0}, {"rounds": 0}):
        with pytest.raises(ConfigError):
            BenchmarkConfig(**bad)


def test_percentile_is_nearest_rank():
    times = list(range(1, 101))
    assert (percentile(times, 50), percentile(times, 90), percentile(times, 99), percentile(times, 100)) == (50, 90, 99, 100)
    assert percentile([3.0], 99) == 3.0


def test_round_robin_warms_up_then_takes_turns_in_alternating_order():
    order: list[str] = []
    calls = {name: (lambda name=name: order.append(name)) for name in ("a", "b", "c")}
    times = round_robin_ms(calls, rounds=4, warmup=2)
    assert order[:6] == ["a", "a", "b", "b", "c", "c"]  # warm-up, untimed
    assert order[6:] == ["a", "b", "c", "c", "b", "a", "a", "b", "c", "c", "b", "a"]  # nobody always goes last
    assert {name: len(ms) for name, ms in times.items()} == {"a": 4, "b": 4, "c": 4}
    assert all(ms >= 0 for values in times.values() for ms in values)
    assert round_robin_ms({}, rounds=3) == {}
    with pytest.raises(ConfigError):
        round_robin_ms(calls, rounds=0)
    with pytest.raises(ConfigError):
        round_robin_ms(calls, rounds=1, pause_s=-1)


def test_round_robin_pauses_before_each_timed_call_only(monkeypatch):
    """The pause lets one runtime's spinning threads go idle before the next is timed; it is never timed itself."""
    from optimum.quantization.evaluation import benchmark

    events: list[str] = []
    monkeypatch.setattr(benchmark.time, "sleep", lambda seconds: events.append(f"sleep {seconds}"))
    calls = {name: (lambda name=name: events.append(name)) for name in ("a", "b")}
    times = round_robin_ms(calls, rounds=2, warmup=1, pause_s=0.25)
    assert events == ["a", "b", "sleep 0.25", "a", "sleep 0.25", "b", "sleep 0.25", "b", "sleep 0.25", "a"]
    assert all(ms < 250 for values in times.values() for ms in values)


def test_round_robin_turns_can_be_bursts_with_one_pause_each(monkeypatch):
    from optimum.quantization.evaluation import benchmark

    events: list[str] = []
    monkeypatch.setattr(benchmark.time, "sleep", lambda seconds: events.append("sleep"))
    calls = {name: (lambda name=name: events.append(name)) for name in ("a", "b")}
    times = round_robin_ms(calls, rounds=2, warmup=0, pause_s=0.1, calls_per_turn=3)
    assert events == ["sleep", "a", "a", "a", "sleep", "b", "b", "b", "sleep", "b", "b", "b", "sleep", "a", "a", "a"]
    assert {name: len(ms) for name, ms in times.items()} == {"a": 6, "b": 6}  # every call of a burst is timed
    with pytest.raises(ConfigError, match="calls_per_turn"):
        round_robin_ms(calls, rounds=1, calls_per_turn=0)


def test_latency_sweep_times_every_shape(tiny_dir):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_dir("text-classification")).eval()
    rows = latency_sweep(model, model.config.vocab_size, ["input_ids", "attention_mask"], BenchmarkConfig(**QUICK))
    assert [(r["batch_size"], r["sequence_length"]) for r in rows] == [(1, 8), (1, 32), (2, 8), (2, 32)]
    for row in rows:
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] and row["calls"] == 3
        assert row["throughput_per_s"] == pytest.approx(1e3 * row["batch_size"] / row["p50_ms"])


def test_weights_size_counts_only_weight_files(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"x" * 1000)
    (tmp_path / "tokenizer.json").write_bytes(b"x" * 5000)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "model.safetensors").write_bytes(b"x" * 10)
    assert weights_size_bytes(tmp_path) == 1010
    assert peak_rss_bytes() > 10_000_000  # this process has torch loaded
    with pytest.raises(ConfigError):
        weights_size_bytes(tmp_path / "missing")


def test_variant_names_and_custom_specs(tmp_path):
    assert parse_variant("ort-int8-dynamic").options == {"backend": "onnxruntime", "quantize": "dynamic"}
    assert parse_variant("fp=onnxruntime:none").options["quantize"] is None
    config_file = tmp_path / "mine.json"
    config_file.write_text('{"_type": "DynamicQuantConfig", "_data": {"per_channel": false}}', encoding="utf-8")
    spec = parse_variant(f"mine=onnxruntime:{config_file}")
    assert spec == VariantSpec("mine", "quantized", {"backend": "onnxruntime", "quantize": json.loads(config_file.read_text())})
    with pytest.raises(ConfigError, match="Unknown variant 'fastest'"):
        parse_variant("fastest")
    with pytest.raises(ConfigError, match="does not exist"):
        parse_variant("x=onnxruntime:missing.json")
    with pytest.raises(ConfigError, match="unique"):
        parse_variants(["ort-fp32", "ort-fp32"])


def test_variant_spec_files_give_any_kind_with_its_options(tmp_path):
    """A JSON file holding a spec's dict reproduces variants that NAME=BACKEND:QUANTIZE cannot express."""
    spec = VariantSpec("ov-mine", "openvino", {"quantize": "static", "precision": "int8"})
    spec_file = tmp_path / "ov-mine.json"
    spec_file.write_text(json.dumps(spec.to_dict()), encoding="utf-8")
    assert parse_variant(str(spec_file)) == spec
    (tmp_path / "bad.json").write_text('{"kind": "openvino"}', encoding="utf-8")
    with pytest.raises(ConfigError, match="'name', 'kind' and 'options'"):
        parse_variant(str(tmp_path / "bad.json"))
    (tmp_path / "kind.json").write_text('{"name": "x", "kind": "tensorflow"}', encoding="utf-8")
    with pytest.raises(ConfigError, match="tensorflow"):
        parse_variant(str(tmp_path / "kind.json"))
    with pytest.raises(ConfigError, match="does not exist"):
        parse_variant(str(tmp_path / "missing.json"))


# Each measured variant costs a fresh interpreter (~10 s on 2 cores): the fast suite measures the baseline and the INT8
# variant; the PyTorch row (its loader runs in the run_evaluation tests) and ONNX Runtime's plain FP32 export join them
# in the slow run.
@pytest.mark.parametrize("measured", [
    ("ort-fp32-fused", "ort-int8-dynamic"),
    pytest.param(("pytorch-fp32", "ort-fp32", "ort-fp32-fused", "ort-int8-dynamic"), marks=pytest.mark.slow),
], ids=["fast", "every-variant"])
def test_run_benchmark_side_by_side(tiny_dir, tmp_path, measured):
    """Every variant is built and measured in its own process; a variant that cannot be built says why."""
    result = run_benchmark(
        str(tiny_dir("large-text-classification")),
        "text-classification",
        variants=[*measured, "bad=torch:static"],
        config=BenchmarkConfig(**{**QUICK, "sequence_lengths": (8, 32, 1024)}),  # 1024 > the model's 128 positions
    )
    by_name = {v["name"]: v for v in result["variants"]}
    assert result["baseline"] == "ort-fp32-fused"
    assert result["machine"]["cpu"]["isa"] is not None and result["machine"]["threads"] == 1
    assert "onnxruntime" in result["versions"] and result["config"]["sequence_lengths"] == [8, 32]
    assert "static" in by_name["bad"]["error"].lower()
    for name in measured:
        variant = by_name[name]
        assert len(variant["latency"]) == 4 and variant["cold_start_s"] > variant["load_s"] > 0
        # VmHWM of the worker itself: a fresh interpreter with torch, far below the parent's build peak
        assert 50e6 < variant["peak_rss_bytes"] < 4e9 and variant["load_average_1m"] >= 0
        assert "inference_precision" not in variant  # recorded for OpenVINO rows only
    assert by_name["ort-int8-dynamic"]["size_bytes"] < 0.35 * by_name["ort-fp32-fused"]["size_bytes"]
    ratios = speedups(result, 1, 32)
    assert ratios["ort-fp32-fused"] == 1.0 and set(ratios) == set(measured)

    written = write_reports(result, tmp_path / "reports", "tiny")
    assert written["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(written["json"].read_text())["variants"][0]["name"] == measured[0]
    markdown = written["md"].read_text()
    assert "ort-int8-dynamic" in markdown and "VNNI" in markdown and "not run" in markdown
    assert markdown == benchmark_markdown(result)
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["tiny.json", "tiny.md", "tiny.png"]


def test_merge_rounds_takes_medians_per_shape():
    from optimum.quantization.side_by_side import merge_rounds

    def measured(p50, cold):
        row = {"batch_size": 2, "sequence_length": 8, "p50_ms": p50, "p90_ms": p50 + 1, "p99_ms": p50 + 2,
               "mean_ms": p50, "calls": 5, "throughput_per_s": 0}
        return {"load_s": 1.0, "cold_start_s": cold, "cold_start_shape": [1, 8], "peak_rss_bytes": 100,
                "load_average_1m": 2.0, "latency": [row]}

    merged = merge_rounds([measured(10.0, 3.0), measured(30.0, 1.0), measured(12.0, 2.0)])
    assert merged["rounds"] == 3 and merged["cold_start_s"] == 2.0
    row = merged["latency"][0]
    assert (row["p50_ms"], row["p99_ms"], row["calls"]) == (12.0, 14.0, 15)
    assert row["throughput_per_s"] == pytest.approx(2e3 / 12.0)
    assert "inference_precision" not in merged
    # What the runtime decided (OpenVINO's bf16 on AMX CPUs) is the same every round: it survives the merge.
    rounds = [{**measured(10.0, 1.0), "inference_precision": "bf16"} for _ in range(2)]
    assert merge_rounds(rounds)["inference_precision"] == "bf16"


def test_alternating_rounds_reverse_every_other_pass():
    from optimum.quantization.evaluation.benchmark import alternating_rounds

    assert alternating_rounds(["a", "b", "c"], 3) == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    assert alternating_rounds(["a"], 2) == ["a", "a"] and alternating_rounds(["a", "b"], 0) == []


def test_run_benchmark_rounds_measure_each_variant_again(tiny_dir, monkeypatch):
    """`rounds` measures every built variant again, round-robin, and merges the rounds. The fresh-process measurement
    itself is run by test_run_benchmark_side_by_side and the CLI test; here each process is one recorded call
    (a fresh interpreter per call cost ~25 s of the fast suite)."""
    from optimum.quantization import side_by_side

    measured = []

    def one_process(folder, task, config, vocab_size, input_names):
        measured.append(Path(folder).name)
        row = {"batch_size": 1, "sequence_length": 8, "p50_ms": float(len(measured)), "p90_ms": 1.0, "p99_ms": 1.0,
               "mean_ms": 1.0, "calls": config.repeats, "throughput_per_s": 1.0}
        return {"load_s": 0.1, "cold_start_s": 0.2, "cold_start_shape": [1, 8], "peak_rss_bytes": 1,
                "load_average_1m": 0.0, "latency": [row]}

    monkeypatch.setattr(side_by_side, "measure_in_fresh_process", one_process)
    config = BenchmarkConfig(**{**QUICK, "batch_sizes": (1,), "sequence_lengths": (8,), "rounds": 2})
    result = run_benchmark(str(tiny_dir("text-classification")), variants=["ort-fp32", "ort-int8-dynamic"], config=config)
    assert measured == ["ort-fp32", "ort-int8-dynamic", "ort-int8-dynamic", "ort-fp32"]  # every other round reversed
    assert [v["rounds"] for v in result["variants"]] == [2, 2]
    assert result["variants"][0]["latency"][0]["calls"] == 6  # 3 timed calls in each of 2 processes
    assert [v["latency"][0]["p50_ms"] for v in result["variants"]] == [2.5, 2.5]  # medians of (1, 4) and (2, 3)


def test_run_benchmark_refuses_bad_requests(tiny_dir):
    folder = str(tiny_dir("text-classification"))
    with pytest.raises(ConfigError, match="baseline"):
        run_benchmark(folder, variants=["ort-fp32"], baseline="pytorch-fp32")
    with pytest.raises(ConfigError, match="Unknown variant"):
        run_benchmark(folder, variants=["ort-fp33"])
    with pytest.raises(ConfigError, match="task"):
        run_benchmark(folder, task="summarization", variants=["ort-fp32"])


def test_run_evaluation_classification_against_labels(tiny_dir):
    labels = [i % 3 for i in range(len(SENTENCES))]
    result = run_evaluation(
        str(tiny_dir("text-classification")),
        "text-classification",
        {"texts": SENTENCES, "labels": labels},
        variants=["pytorch-fp32", "ort-fp32", "ort-int8-dynamic"],
    )
    by_name = {v["name"]: v for v in result["variants"]}
    assert result["baseline"] == "pytorch-fp32" and "agreement" not in by_name["pytorch-fp32"]
    # The ONNX export of the same weights predicts exactly what PyTorch does.
    assert by_name["ort-fp32"]["agreement"]["prediction_agreement"] == 1.0
    assert by_name["ort-fp32"]["metrics"]["accuracy"] == by_name["pytorch-fp32"]["metrics"]["accuracy"]
    assert 0.5 <= by_name["ort-int8-dynamic"]["agreement"]["prediction_agreement"] <= 1.0
    assert by_name["ort-int8-dynamic"]["metrics"]["examples"] == len(SENTENCES)
    markdown = evaluation_markdown(result)
    assert "Δ accuracy" in markdown and "same prediction" in markdown


def test_run_evaluation_scores_an_unlabelled_set_on_the_same_built_models(tiny_dir, monkeypatch):
    from optimum.quantization import side_by_side

    builds = []
    real_build_all = side_by_side.build_all
    monkeypatch.setattr(side_by_side, "build_all", lambda *a: builds.append(1) or real_build_all(*a))
    labels = [i % 3 for i in range(len(SENTENCES))]
    unlabelled = [s.upper() for s in SENTENCES] + SENTENCES[:5]
    result = run_evaluation(
        str(tiny_dir("text-classification")), "text-classification", {"texts": SENTENCES, "labels": labels},
        variants=["pytorch-fp32", "ort-fp32", "ort-int8-dynamic"],
        unlabelled_data={"texts": unlabelled, "labels": None}, unlabelled_description="shouted sentences",
    )
    assert len(builds) == 1 and result["unlabelled_data"] == "shouted sentences"
    by_name = {v["name"]: v for v in result["variants"]}
    assert "agreement_unlabelled" not in by_name["pytorch-fp32"]
    assert by_name["ort-fp32"]["agreement_unlabelled"]["prediction_agreement"] == 1.0
    # Compared with what a separate run on the unlabelled set alone measures for the same variant.
    alone = run_evaluation(str(tiny_dir("text-classification")), "text-classification",
                           {"texts": unlabelled, "labels": None}, variants=["pytorch-fp32", "ort-int8-dynamic"])
    assert by_name["ort-int8-dynamic"]["agreement_unlabelled"] == alone["variants"][1]["agreement"]
    assert "agreement on the unlabelled set" in evaluation_markdown(result)


def test_run_evaluation_causal_lm_perplexity_and_divergence(tiny_dir):
    text = " ".join(SENTENCES * 3)
    result = run_evaluation(
        str(tiny_dir("text-generation")),
        "text-generation",
        {"text": text, "texts": SENTENCES[:4], "perplexity": {"max_length": 64, "stride": 32}},
        variants=["ort-fp32", "ort-int8-dynamic"],
    )
    fp32, int8 = result["variants"]
    assert fp32["metrics"]["perplexity"] > 1 and int8["metrics"]["tokens"] == fp32["metrics"]["tokens"]
    assert 0 <= int8["agreement"]["kl_divergence"] < 0.05


def test_cli_benchmark_and_evaluate(tiny_dir, tmp_path, capsys, monkeypatch):
    from optimum.quantization import side_by_side

    folder = str(tiny_dir("text-classification"))
    # The CLI's plumbing: the options reach the measurement, the reports are written. The measurement in a fresh
    # interpreter (~10 s each) is run by test_run_benchmark_side_by_side.
    configs = []

    def one_process(folder, task, config, vocab_size, input_names):
        configs.append(config)
        row = {"batch_size": 1, "sequence_length": 16, "p50_ms": 1.0, "p90_ms": 1.0, "p99_ms": 1.0, "mean_ms": 1.0,
               "calls": config.repeats, "throughput_per_s": 1e3}
        return {"load_s": 0.1, "cold_start_s": 0.2, "cold_start_shape": [1, 16], "peak_rss_bytes": 1,
                "load_average_1m": 0.0, "latency": [row]}

    monkeypatch.setattr(side_by_side, "measure_in_fresh_process", one_process)
    code = main([
        "benchmark", "--model", folder, "--variants", "ort-fp32", "ort-int8-dynamic", "--batch-sizes", "1",
        "--sequence-lengths", "16", "--repeats", "2", "--warmup", "1", "--threads", "1", "--output-dir", str(tmp_path),
    ])
    assert code == 0
    assert [(list(c.batch_sizes), list(c.sequence_lengths), c.repeats, c.warmup, c.threads) for c in configs] == [
        ([1], [16], 2, 1, 1)] * 2
    out = capsys.readouterr().out
    assert "Batch 1, sequence 16" in out and "ort-int8-dynamic" in out
    assert {p.name for p in tmp_path.iterdir()} >= {"benchmark.json", "benchmark.md", "benchmark.png"}

    data = tmp_path / "dev.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{s}\t{i % 3}\n" for i, s in enumerate(SENTENCES)), encoding="utf-8")
    assert main(["evaluate", "--model", folder, "--data", str(data), "--output-dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert [v["name"] for v in report["variants"]] == ["pytorch-fp32", "ort-int8-dynamic"]

    assert main(["evaluate", "--model", folder, "--data", str(tmp_path / "none.tsv"), "--output-dir", str(tmp_path)]) == 2
    assert "could not load evaluation data" in capsys.readouterr().err.lower()


def test_a_quantized_variant_can_be_built_without_the_runs_calibration_texts(tiny_dir, tmp_path):
    """`calibration: false` builds what a user with no data gets: dynamic INT8 smoothed on random words."""
    from optimum.quantization.recipe import find_recipe
    from optimum.quantization.variants import VARIANT_KINDS, BuildContext

    texts = tmp_path / "calibration.txt"
    texts.write_text("\n".join(SENTENCES), encoding="utf-8")
    context = BuildContext(tiny_dir("text-classification"), "text-classification", calibration_file=texts)
    statistics = {}
    for calibration in (True, False):
        spec = VariantSpec("v", "quantized", {"backend": "onnxruntime", "quantize": "dynamic", "calibration": calibration})
        folder = tmp_path / str(calibration)
        VARIANT_KINDS["quantized"].build(spec, context, folder)
        statistics[calibration] = find_recipe(folder).details["smoothing"]["statistics"]
    assert statistics == {True: "calibration_dataset", False: "random-words"}


def _affinities(options):
    try:
        return options.get_session_config_entry("session.intra_op_thread_affinities")
    except RuntimeError:  # not set
        return None


def test_explicit_ort_threads_pin_one_worker_per_cpu(monkeypatch, tmp_path):
    """An explicit thread count turns ONNX Runtime's own pinning off; the benchmark's sessions pin the workers to the
    process's CPUs after the first, as ONNX Runtime does when it picks the count (it numbers processors from 1)."""
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper

    from optimum.quantization.backends import ort_session
    from optimum.quantization.variants import _ort_session_options

    real = sorted(os.sched_getaffinity(0))
    monkeypatch.setattr(ort_session.os, "sched_getaffinity", lambda pid: {4, 5, 6, 7})
    options = _ort_session_options(3)
    assert options.intra_op_num_threads == 3 and options.inter_op_num_threads == 1 and _affinities(options) == "6;7"
    assert _affinities(_ort_session_options(1)) is None and _affinities(_ort_session_options(8)) is None
    mine = onnxruntime.SessionOptions()
    mine.add_session_config_entry("session.intra_op_thread_affinities", "2")
    assert _affinities(ort_session.with_intra_op_threads(mine, 2)) == "2"  # the caller's choice stays

    monkeypatch.undo()
    if len(real) < 2:
        pytest.skip("one CPU: nothing to pin the second thread to")
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    onnx.save(helper.make_model(graph), str(tmp_path / "relu.onnx"))
    options = _ort_session_options(2)
    assert _affinities(options) == str(real[1] + 1)
    session = onnxruntime.InferenceSession(str(tmp_path / "relu.onnx"), options, providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": np.array([-1, 0, 1, 2], np.float32)})[0].tolist() == [0, 0, 1, 2]
