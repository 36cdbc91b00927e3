"""Accuracy-aware auto quantization on the fine-tuned MiniLM models, against our defaults and NNCF's accuracy control.

    # accuracy (any machine, slow, nice it): search with tolerance 0.3, build the defaults and NNCF's model, score all
    nice -n 15 .venv/bin/python benchmarks/auto_search.py sst2 --skip-nncf
    nice -n 15 .venv/bin/python benchmarks/auto_search.py squad --eval-limit 600 --skip-nncf --max-trials 20 --time-budget 3600
    # OpenVINO's candidates searched too (the chosen model may be an OpenVINO IR); --latency-pause 0.1 times each call
    # after an idle gap instead of back to back
    .venv/bin/python benchmarks/auto_search.py sst2 --skip-nncf --backends onnxruntime openvino --suffix _with_openvino
    # NNCF's accuracy control alone (bounded: NNCF_MAX_ITERATIONS steps; ~1 h on SST-2 on 2 loaded cores)
    nice -n 15 .venv/bin/python benchmarks/auto_search.py sst2 --nncf-only
    nice -n 15 .venv/bin/python benchmarks/auto_search.py squad --eval-limit 600 --nncf-only
    # speed (quiet machine): p50 at batch 1 x 128 of every model built above, round-robin, in one process
    .venv/bin/python benchmarks/auto_search.py sst2 --speed
    .venv/bin/python benchmarks/auto_search.py squad --speed

The search scores candidates on the evaluation subset (SST-2 dev, or the first N SQuAD questions of the 8 held-out
articles); every model is then scored on that subset and on the whole held-out set. NNCF gets the same tolerance
(`nncf.quantize_with_accuracy_control`, absolute drop in the same points) on the optimum-intel OpenVINO export, with
the same calibration texts and validation subset. For QA its validation function scores the first 384-token window
only (NNCF hands it compiled models, not pipelines); its final model is scored with the same pipeline as ours.
Models are cached under ~/.cache/optimum-quantization/auto-search/<benchmark><suffix>/; results go to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

import finetune
import numpy as np

from optimum.quantization import AutoQuantConfig, QuantModelForQuestionAnswering, QuantModelForSequenceClassification
from optimum.quantization.evaluation import metrics
from optimum.quantization.evaluation.benchmark import BenchmarkConfig, alternating_rounds, synthetic_inputs, time_calls
from optimum.quantization.hardware import cpu_info, cpu_summary
from optimum.quantization.recipe import QuantizationRecipe, library_versions
from optimum.quantization.search_report import search_report_markdown
from optimum.quantization.variants import runtime_load_kwargs

RESULTS = Path(__file__).resolve().parent / "results"
TOLERANCE = 0.3
TASKS = {
    "sst2": ("text-classification", QuantModelForSequenceClassification, "accuracy"),
    "squad": ("question-answering", QuantModelForQuestionAnswering, "f1"),
}
OURS = ("fp32", "auto", "dynamic", "static")
# NNCF accuracy control, bounded so that it ends (it ran > 10 min on SST-2 unbounded): at most this many groups
# reverted to FP32 (as many as our search's default max_fallback_units), ranked on a subset, one ranking worker
# (2 shared cores), no hyper-parameter tuning; the validation function returns per-item values with its metric, so
# NNCF ranks on them without one more call per item.
NNCF_MAX_ITERATIONS = 8
NNCF_RANKING_SUBSET = {"text-classification": 100, "question-answering": 100}


def work_root(benchmark: str, suffix: str = "") -> Path:
    return finetune.cache_root().parent / "auto-search" / f"{benchmark}{suffix}"


def load_data(benchmark: str, limit: int | None):
    """(checkpoint, search subset, full held-out set, calibration examples)."""
    if benchmark == "sst2":
        texts, labels = finetune.load_sst2("dev")
        train, _ = finetune.load_sst2("train")
        seen = set(finetune.sst2_training_subset(finetune.Sst2Recipe())[0])
        unseen = [s for s in dict.fromkeys(train) if s not in seen and len(s.split()) >= 4]
        random.Random(0).shuffle(unseen)
        full = {"texts": texts, "labels": labels}
        subset = {"texts": texts[:limit], "labels": labels[:limit]} if limit else full
        return finetune.sst2_classifier(), subset, full, unseen[-128:]
    examples = finetune.load_squad_examples("heldout")
    pairs = [(e["question"], e["context"]) for e in finetune.load_squad_examples("train")]
    random.Random(0).shuffle(pairs)
    return finetune.squad_qa_model(), {"examples": examples[:limit]}, {"examples": examples}, pairs[:128]


def describe(benchmark: str, subset: dict) -> str:
    size = len(subset.get("texts") or subset.get("examples"))
    return f"{'SST-2 dev' if benchmark == 'sst2' else 'SQuAD held-out'}, first {size}"


def score(task: str, model, tokenizer, data: dict, name: str) -> float:
    if task == "text-classification":
        return metrics.evaluate_classification(model, tokenizer, data["texts"], data["labels"])[name]
    return metrics.evaluate_squad(model, tokenizer, data["examples"])[name]


# --------------------------------------------------------------------------------------------- NNCF


def _ov_inputs(tokenizer, example, input_names, max_length=128):
    text, pair = example if isinstance(example, tuple) else (example, None)
    encoded = tokenizer(text, pair, truncation="only_second" if pair else True, max_length=max_length, return_tensors="np",
                        return_offsets_mapping=pair is not None)
    return {n: encoded[n].astype(np.int64) for n in input_names if n in encoded}, encoded


def _first_window_answer(start_logits, end_logits, encoded, context, max_answer_len=30) -> str:
    sequence_ids = encoded.sequence_ids(0)
    offsets = encoded["offset_mapping"][0]
    in_context = np.array([s == 1 for s in sequence_ids])
    start = np.where(in_context, start_logits, -np.inf)
    end = np.where(in_context, end_logits, -np.inf)
    scores = start[:, None] + end[None, :]
    scores = np.triu(scores) - np.triu(np.full_like(scores, np.inf), k=max_answer_len)  # start <= end < start + len
    i, j = np.unravel_index(np.nanargmax(np.where(np.isfinite(scores), scores, -np.inf)), scores.shape)
    return context[offsets[i][0]: offsets[j][1]]


def nncf_accuracy_control(task: str, checkpoint: Path, tokenizer, subset: dict, calibration, metric: str, folder: Path) -> dict:
    """optimum-intel export -> nncf.quantize_with_accuracy_control(max_drop=TOLERANCE, absolute) -> saved IR folder."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters
    from optimum.intel import OVModelForQuestionAnswering, OVModelForSequenceClassification

    ov_class = OVModelForSequenceClassification if task == "text-classification" else OVModelForQuestionAnswering
    fp32 = ov_class.from_pretrained(str(checkpoint), export=True, compile=False)
    input_names = [i.get_any_name() for i in fp32.model.inputs]
    calibration_items = [_ov_inputs(tokenizer, e, input_names)[0] for e in calibration]
    if task == "text-classification":
        items = [(_ov_inputs(tokenizer, t, input_names)[0], label) for t, label in zip(subset["texts"], subset["labels"])]

        def validate(compiled, data) -> tuple[float, list[float]]:  # per-item values: NNCF needs no per-item calls
            output = compiled.outputs[0]
            correct = [100.0 * (int(np.argmax(compiled(inputs)[output])) == label) for inputs, label in data]
            return float(np.mean(correct)), correct
    else:
        items = []
        for e in subset["examples"]:
            inputs, encoded = _ov_inputs(tokenizer, (e["question"], e["context"]), input_names, max_length=384)
            items.append((inputs, encoded, e))

        def validate(compiled, data) -> tuple[float, list[float]]:
            answers, gold = [], []
            for inputs, encoded, e in data:
                result = compiled(inputs)
                answers.append(_first_window_answer(result[compiled.outputs[0]][0], result[compiled.outputs[1]][0], encoded, e["context"]))
                gold.append(e["answers"])
            per_item = [metrics.squad_metrics([a], [g])[metric] for a, g in zip(answers, gold)]
            return metrics.squad_metrics(answers, gold)[metric], per_item

    log = _NncfLog()
    logging.getLogger("nncf").addHandler(log)
    start = time.time()
    try:
        quantized = nncf.quantize_with_accuracy_control(
            fp32.model, nncf.Dataset(calibration_items), nncf.Dataset(items), validate,
            max_drop=TOLERANCE, drop_type=nncf.DropType.ABSOLUTE, model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(calibration_items),
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                max_num_iterations=NNCF_MAX_ITERATIONS, tune_hyperparams=False, num_ranking_workers=1,
                ranking_subset_size=min(NNCF_RANKING_SUBSET[task], len(items)),
            ),
        )
    finally:
        logging.getLogger("nncf").removeHandler(log)
    seconds = time.time() - start
    if folder.exists():
        shutil.rmtree(folder)
    fp32.save_pretrained(folder)
    ov.save_model(quantized, str(folder / "openvino_model.xml"))
    tokenizer.save_pretrained(folder)
    fake_quantize = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())
    return {"seconds": round(seconds, 1), "fake_quantize_ops": fake_quantize, "max_num_iterations": NNCF_MAX_ITERATIONS, "ranking_subset_size": min(NNCF_RANKING_SUBSET[task], len(items)),
            "validation_items": len(items), **log.summary()}


class _NncfLog(logging.Handler):
    """NNCF reports its accuracy-control steps only in its log: keep the lines that say what it reached."""

    KEEP = ("Metric of", "Accuracy drop", "Reverted", "Algorithm completed", "could not achieve", "Maximum number",
            "were reverted", "Total number of quantized")

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage().split("\n")[0].strip()
        if any(key in message for key in self.KEEP):
            self.lines.append(message)

    def summary(self) -> dict:
        reverted = [int(m.group(1)) for line in self.lines if (m := re.match(r"Reverted (\d+) operations", line))]
        final = [m.groups() for line in self.lines if (m := re.match(r"(\d+) out of (\d+) were reverted", line))]
        drops = [float(m.group(1)) for line in self.lines if (m := re.match(r"Accuracy drop: (-?[\d.]+)", line))]
        initial_drop = drops[0] if drops else None
        # The restorer says "Algorithm completed" when it reaches the drop; a fully quantized model that already
        # meets it never reaches the restorer.
        reached = any("Algorithm completed" in line for line in self.lines) or (
            not reverted and initial_drop is not None and initial_drop <= TOLERANCE)
        return {"reached_max_drop": reached, "initial_drop": initial_drop, "iterations": len(reverted),
                "reverted_operations": int(final[-1][0]) if final else sum(reverted),
                "quantized_operations": int(final[-1][1]) if final else None, "log": self.lines}


def load_nncf(task: str, folder: Path, threads: int | None = None):
    from optimum.intel import OVModelForQuestionAnswering, OVModelForSequenceClassification

    ov_class = OVModelForSequenceClassification if task == "text-classification" else OVModelForQuestionAnswering
    ov_config = {"INFERENCE_NUM_THREADS": str(threads)} if threads else None
    return ov_class.from_pretrained(str(folder), ov_config=ov_config)


# --------------------------------------------------------------------------------------------- phases


def accuracy(benchmark: str, limit: int | None, skip_nncf: bool, max_trials: int, time_budget: float | None,
             suffix: str = "", backends=("onnxruntime",), latency_pause_s: float = 0.0) -> dict:
    from transformers import AutoTokenizer

    task, cls, metric = TASKS[benchmark]
    checkpoint, subset, full, calibration = load_data(benchmark, limit)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    root = work_root(benchmark, suffix)
    described = describe(benchmark, subset)
    config = AutoQuantConfig(metric=metric, tolerance=TOLERANCE, eval_dataset=subset, eval_dataset_description=described,
                             work_dir=str(root / "search"), max_trials=max_trials, time_budget_s=time_budget,
                             backends=list(backends), latency_pause_s=latency_pause_s)
    start = time.time()
    models = {"auto": cls.from_pretrained(str(checkpoint), quantize=config, calibration_dataset=calibration)}
    search_seconds = time.time() - start
    report = models["auto"].auto_quantization_report
    models["fp32"] = cls.from_pretrained(str(checkpoint), quantize=None)
    models["dynamic"] = cls.from_pretrained(str(checkpoint), quantize="dynamic")
    models["static"] = cls.from_pretrained(str(checkpoint), quantize="static", calibration_dataset=calibration)
    for name, model in models.items():
        model.save_pretrained(root / name)
    nncf_record = None
    if not skip_nncf:
        nncf_record = nncf_accuracy_control(task, checkpoint, tokenizer, subset, calibration, metric, root / "nncf")
        models["nncf"] = load_nncf(task, root / "nncf")
    rows = score_rows(task, models, tokenizer, subset, full, metric, root)
    return {"benchmark": benchmark, "task": task, "metric": metric, "tolerance": TOLERANCE, "search_subset": described,
            "full_set": f"{len(full.get('texts') or full.get('examples'))} examples", "search_seconds": round(search_seconds, 1),
            "nncf": nncf_record, "rows": rows, "search_report": report, "cpu": cpu_info().to_dict(),
            "versions": library_versions((*library_versions().keys(), "openvino", "nncf", "optimum-intel"))}


def score_rows(task: str, models: dict, tokenizer, subset: dict, full: dict, metric: str, root: Path) -> list[dict]:
    """Each model on the search subset and the full held-out set (scored once when they are the same set)."""
    same = subset == full
    rows = []
    for name, model in models.items():
        on_subset = score(task, model, tokenizer, subset, metric)
        rows.append({"name": name, "search_subset": on_subset,
                     "full": on_subset if same else score(task, model, tokenizer, full, metric), "folder": str(root / name)})
        print(rows[-1], flush=True)
    fp32 = next(r for r in rows if r["name"] == "fp32")
    for row in rows:
        row["delta_subset"] = row["search_subset"] - fp32["search_subset"]
        row["delta_full"] = row["full"] - fp32["full"]
        row["within_tolerance_subset"] = row["delta_subset"] >= -TOLERANCE - 1e-9
    return rows


def nncf_only(benchmark: str, limit: int | None, suffix: str = "") -> dict:
    """NNCF's accuracy control alone, against ORT FP32 on the same data (the search's results stay as they are)."""
    from transformers import AutoTokenizer

    task, cls, metric = TASKS[benchmark]
    checkpoint, subset, full, calibration = load_data(benchmark, limit)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    root = work_root(benchmark, suffix)
    described = describe(benchmark, subset)
    record = nncf_accuracy_control(task, checkpoint, tokenizer, subset, calibration, metric, root / "nncf")
    models = {"fp32": cls.from_pretrained(str(checkpoint), quantize=None), "nncf": load_nncf(task, root / "nncf")}
    rows = score_rows(task, models, tokenizer, subset, full, metric, root)
    return {"benchmark": benchmark, "task": task, "metric": metric, "tolerance": TOLERANCE, "search_subset": described,
            "full_set": f"{len(full.get('texts') or full.get('examples'))} examples", "nncf": record, "rows": rows,
            "cpu": cpu_info().to_dict(),
            "versions": library_versions((*library_versions().keys(), "openvino", "nncf", "optimum-intel"))}


def speed(benchmark: str, threads: int, rounds: int, suffix: str = "") -> dict:
    import torch
    from transformers import AutoConfig

    task, cls, _ = TASKS[benchmark]
    root = work_root(benchmark, suffix)
    torch.set_num_threads(threads)
    # Each saved model with its runtime's thread settings, as the side-by-side harness times it: the search may
    # have chosen OpenVINO.
    models = {}
    for name in (n for n in OURS if (root / n).is_dir()):
        backend = QuantizationRecipe.load(root / name).backend
        models[name] = cls.from_pretrained(str(root / name), **runtime_load_kwargs(backend, threads))
    if (root / "nncf").is_dir():
        models["nncf"] = load_nncf(task, root / "nncf", threads)
    vocab = AutoConfig.from_pretrained(root / "fp32").vocab_size
    inputs = synthetic_inputs(1, 128, vocab, ["input_ids", "attention_mask", "token_type_ids"])
    timing = BenchmarkConfig(batch_sizes=(1,), sequence_lengths=(128,), warmup=10, repeats=200, max_seconds_per_shape=20)
    samples = {name: [] for name in models}
    with torch.no_grad():
        for name in alternating_rounds(list(models), rounds):  # round-robin: load drift falls on all alike
            samples[name].append(statistics.median(time_calls(lambda: models[name](**inputs), timing)))
    p50 = {name: statistics.median(values) for name, values in samples.items()}
    import os

    return {"benchmark": benchmark, "shape": [1, 128], "threads": threads, "rounds": rounds, "p50_ms": p50,
            "speedup_vs_fp32": {n: p50["fp32"] / v for n, v in p50.items()}, "cpu": cpu_info().to_dict(),
            "load_average_1m": os.getloadavg()[0], "versions": library_versions()}


def nncf_markdown(record: dict) -> str:
    if "iterations" not in record:  # written before the bounded run recorded its steps
        return f"NNCF accuracy control: {record['seconds']} s, {record['fake_quantize_ops']} FakeQuantize ops."
    verdict = "reached the 0.3 drop" if record["reached_max_drop"] else "did not reach the 0.3 drop"
    of = f" of {record['quantized_operations']}" if record.get("quantized_operations") else ""
    lines = [f"NNCF accuracy control ({verdict}; fully quantized drop {record['initial_drop']:.2f}): {record['seconds']} s, "
             f"{record['iterations']} revert step(s), {record['reverted_operations']}{of} quantized operation(s) reverted to "
             f"FP32, {record['fake_quantize_ops']} FakeQuantize ops left; bounded to {record['max_num_iterations']} steps, "
             f"ranking on {record['ranking_subset_size']} of {record['validation_items']} validation items. Its log:", ""]
    return "\n".join(lines + [f"    {line}" for line in record["log"]])


def markdown(result: dict) -> str:
    cpu = result["cpu"]
    lines = [f"Machine: {cpu_summary(cpu)}.", ""]
    if "rows" in result:
        searched = f" ({result['search_seconds']} s)" if "search_seconds" in result else ""
        lines += [f"Task: {result['task']}, metric {result['metric']}, tolerance {result['tolerance']} points. "
                  f"Search on {result['search_subset']}{searched}; full set: {result['full_set']}.", "",
                  "| model | on the search subset | Δ | within 0.3 | on the full set | Δ |", "|---|---|---|---|---|---|"]
        for r in result["rows"]:
            lines.append(f"| {r['name']} | {r['search_subset']:.2f} | {r['delta_subset']:+.2f} | "
                         f"{'yes' if r['within_tolerance_subset'] else 'no'} | {r['full']:.2f} | {r['delta_full']:+.2f} |")
        if result.get("nncf"):
            lines += ["", nncf_markdown(result["nncf"])]
        if "search_report" in result:
            lines += ["", "## The search", "", search_report_markdown(result["search_report"])]
    else:
        lines += [f"p50 latency, batch 1 x 128, {result['threads']} threads, median of {result['rounds']} round-robin rounds "
                  f"(load average {result['load_average_1m']:.2f}).", "", "| model | p50 ms | speed-up vs ORT FP32 |", "|---|---|---|"]
        for name, value in result["p50_ms"].items():
            lines.append(f"| {name} | {value:.2f} | {result['speedup_vs_fp32'][name]:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmark", choices=sorted(TASKS))
    parser.add_argument("--eval-limit", type=int, help="Search on the first N examples (default: SST-2 all, SQuAD 200).")
    parser.add_argument("--skip-nncf", action="store_true")
    parser.add_argument("--nncf-only", action="store_true",
                        help="Run NNCF's accuracy control alone and score it against FP32 (auto_search_<benchmark>_nncf).")
    parser.add_argument("--max-trials", type=int, default=40)
    parser.add_argument("--time-budget", type=float)
    parser.add_argument("--speed", action="store_true", help="Time the models built by an earlier accuracy run.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--suffix", default="", help="Appended to the result and work folder names (e.g. _quick).")
    parser.add_argument("--backends", nargs="+", default=["onnxruntime"], help="Backends the search tries.")
    parser.add_argument("--latency-pause", type=float, default=0.0,
                        help="The search's idle pause before each timed call (AutoQuantConfig.latency_pause_s).")
    args = parser.parse_args()
    limit = args.eval_limit if args.eval_limit is not None else (None if args.benchmark == "sst2" else 200)
    if args.nncf_only:
        result = nncf_only(args.benchmark, limit, args.suffix)
        name = f"auto_search_{args.benchmark}_nncf"
    elif args.speed:
        result, name = speed(args.benchmark, args.threads, args.rounds, args.suffix), f"auto_search_{args.benchmark}_speed"
    else:
        result = accuracy(args.benchmark, limit, args.skip_nncf, args.max_trials, args.time_budget, args.suffix,
                          args.backends, args.latency_pause)
        name = f"auto_search_{args.benchmark}"
    name += args.suffix
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    (RESULTS / f"{name}.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
