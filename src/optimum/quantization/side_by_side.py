"""Several variants of one model, side by side in one run: `run_benchmark` and `run_evaluation`.

Benchmarks measure each variant in a fresh process (`python -m optimum.quantization.side_by_side`), so
cold start (new process -> first prediction) and peak resident memory belong to that variant alone.
Evaluations run in this process, one variant at a time, and compare each with the baseline's predictions.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from .errors import ConfigError, QuantizationError
from .evaluation.benchmark import (
    BenchmarkConfig,
    alternating_rounds,
    latency_sweep,
    peak_rss_bytes,
    set_threads,
    synthetic_inputs,
    weights_size_bytes,
)
from .hardware import cpu_info
from .recipe import find_recipe, library_versions
from .samples import demo_sentences
from .tasks import normalize_task
from .variants import (
    DEFAULT_BASELINE,
    BuildContext,
    VariantSpec,
    build_variant,
    load_variant,
    parse_variants,
    prepare_source,
    runtime_details,
)

logger = logging.getLogger(__name__)

COLD_START_SEQUENCE_LENGTH = 128  # of the first prediction (batch 1) a fresh process makes
WORKER_TIMEOUT_S = 3600


def _progress(iterable, desc: str):
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False)


# Set by benchmarks/isa/as_avx2.sh, which hides ISA extensions from the process: results must say so.
ISA_MASK_VARIABLE = "OPTIMUM_QUANTIZATION_ISA_MASK"


def machine_record(threads: int | None) -> dict:
    record = {
        "cpu": cpu_info().to_dict(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "threads": threads,
    }
    masked = os.environ.get(ISA_MASK_VARIABLE)
    if masked:
        record["isa_masked"] = masked
    return record


def _check_baseline(specs: Sequence[VariantSpec], baseline: str | None) -> str:
    names = [s.name for s in specs]
    baseline = baseline or (DEFAULT_BASELINE if DEFAULT_BASELINE in names else names[0])
    if baseline not in names:
        raise ConfigError(f"The baseline {baseline!r} is not among the variants {names}.")
    return baseline


def build_all(
    model_path: str, task: str, specs, work_dir: Path, calibration_data=None, threads: int | None = None
) -> dict[str, Path | str]:
    """Build every variant under `work_dir`; a variant that fails keeps its error message instead of a folder.

    Static variants calibrate on `calibration_data` (a file path) or, by default, the shipped sentences.
    `threads`: what the variants will be measured with (OpenVINO's precision="auto" times its candidates so).
    """
    source = prepare_source(model_path, task, work_dir / "source")
    if calibration_data is None:
        calibration_data = work_dir / "calibration.txt"
        calibration_data.write_text("\n".join(demo_sentences()), encoding="utf-8")
    context = BuildContext(source_dir=source, task=task, calibration_file=Path(calibration_data), threads=threads)
    built: dict[str, Path | str] = {}
    for spec in _progress(specs, "building variants"):
        try:
            built[spec.name] = build_variant(spec, context, work_dir / "variants" / spec.name)
        except QuantizationError as err:
            logger.warning("variant %s not built: %s", spec.name, err)
            built[spec.name] = str(err)
    return built


def _input_signature(source: Path) -> tuple[int, list[str], int | None]:
    """Vocabulary size, input names and longest sequence the model takes (None: unbounded)."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(source)
    max_positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return config.vocab_size, list(AutoTokenizer.from_pretrained(source).model_input_names), max_positions


def _fit_to_model(config: BenchmarkConfig, max_positions: int | None) -> BenchmarkConfig:
    """Drop the sequence lengths the model cannot take, saying so, instead of failing every variant."""
    if max_positions is None or max(config.sequence_lengths) <= max_positions:
        return config
    kept = [s for s in config.sequence_lengths if s <= max_positions]
    if not kept:
        raise ConfigError(f"Every sequence length is longer than the model's {max_positions} positions.")
    logger.warning("The model takes at most %d positions: sequence lengths %s are skipped.", max_positions,
                   [s for s in config.sequence_lengths if s > max_positions])
    return BenchmarkConfig.from_dict({**config.to_dict(), "sequence_lengths": kept})


def run_worker(module: str, job: dict, threads: int | None, what: str) -> dict:
    """Run `python -m module JOB OUTPUT` in a new interpreter on `job` (JSON) and return the JSON it wrote.

    `spawned_at` is added to the job, so the worker can time its first prediction from process start."""
    with tempfile.TemporaryDirectory() as tmp:
        job_path = Path(tmp) / "job.json"
        output = Path(tmp) / "result.json"
        job_path.write_text(json.dumps({**job, "spawned_at": time.time()}), encoding="utf-8")
        env = dict(os.environ)
        if threads is not None:  # fixes OpenMP pools before any runtime starts
            env["OMP_NUM_THREADS"] = str(threads)
        completed = subprocess.run(
            [sys.executable, "-m", module, str(job_path), str(output)],
            capture_output=True,
            text=True,
            env=env,
            timeout=WORKER_TIMEOUT_S,
        )
        if completed.returncode != 0 or not output.is_file():
            tail = (completed.stderr or completed.stdout).strip().splitlines()[-5:]
            raise QuantizationError(f"the {what} worker failed: {' | '.join(tail)}")
        return json.loads(output.read_text(encoding="utf-8"))


def measure_in_fresh_process(folder: Path, task: str, config: BenchmarkConfig, vocab_size: int, input_names) -> dict:
    """Run the worker on one built variant in a new interpreter and return what it measured."""
    job = {
        "folder": str(folder),
        "task": task,
        "config": config.to_dict(),
        "vocab_size": vocab_size,
        "input_names": list(input_names),
    }
    return run_worker(__name__, job, config.threads, "benchmark")


def _worker(job_path: str, output_path: str) -> None:
    """Load one variant, time its first prediction from process start, sweep latencies, report peak memory."""
    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    config = BenchmarkConfig.from_dict(job["config"])
    set_threads(config.threads)
    import torch

    load_start = time.time()
    model = load_variant(Path(job["folder"]), job["task"], threads=config.threads)
    load_s = time.time() - load_start
    first_shape = (1, min(COLD_START_SEQUENCE_LENGTH, max(config.sequence_lengths)))
    first = synthetic_inputs(*first_shape, job["vocab_size"], job["input_names"], config.seed)
    with torch.no_grad():
        model(**first)
    cold_start_s = time.time() - job["spawned_at"]
    latency = latency_sweep(model, job["vocab_size"], job["input_names"], config)
    result = {
        **runtime_details(Path(job["folder"]), model),
        "load_s": load_s,
        "cold_start_s": cold_start_s,
        "cold_start_shape": list(first_shape),
        "peak_rss_bytes": peak_rss_bytes(),
        # Other processes distort timings most on a small shared machine: keep the evidence with the numbers
        # (about the thread count when the benchmark ran alone).
        "load_average_1m": os.getloadavg()[0],
        "latency": latency,
    }
    Path(output_path).write_text(json.dumps(result), encoding="utf-8")


def merge_rounds(rounds: list[dict]) -> dict:
    """One measurement from several rounds of the same variant: the median of every number, per shape."""
    import statistics

    if len(rounds) == 1:
        return {**rounds[0], "rounds": 1}
    keys = ("load_s", "cold_start_s", "peak_rss_bytes", "load_average_1m")
    merged = {key: statistics.median(r[key] for r in rounds) for key in keys}
    latency = []
    for shape_rows in zip(*(r["latency"] for r in rounds)):
        row = dict(shape_rows[0])
        for key in ("p50_ms", "p90_ms", "p99_ms", "mean_ms"):
            row[key] = statistics.median(r[key] for r in shape_rows)
        row["calls"] = sum(r["calls"] for r in shape_rows)
        row["throughput_per_s"] = 1e3 * row["batch_size"] / row["p50_ms"]
        latency.append(row)
    details = {key: rounds[0][key] for key in ("inference_precision",) if key in rounds[0]}
    return {**merged, **details, "cold_start_shape": rounds[0]["cold_start_shape"], "latency": latency,
            "rounds": len(rounds)}


def stored_precision(folder: Path) -> dict:
    """{"precision": ...} when the variant's recipe records a precision choice (OpenVINO), else {}."""
    recipe = find_recipe(folder)
    precision = recipe.details.get("precision") if recipe is not None else None
    return {"precision": precision} if precision else {}


def measure_round_robin(specs, built: dict, rounds: int, merge, measure) -> list[dict]:
    """One report row per variant: `measure(folder)` in `rounds` round-robin passes, merged by `merge`.

    Every other round goes in reversed order (`alternating_rounds`). A variant that failed to build or to measure keeps
    its error message.
    """
    errors = {name: folder for name, folder in built.items() if isinstance(folder, str)}
    measurements: dict[str, list[dict]] = {spec.name: [] for spec in specs}
    schedule = alternating_rounds(specs, rounds)
    for spec in _progress(schedule, "measuring variants"):
        if spec.name in errors:  # failed to build, or in an earlier round
            continue
        try:
            measurements[spec.name].append(measure(built[spec.name]))
        except (QuantizationError, subprocess.TimeoutExpired) as err:
            errors[spec.name] = str(err)
    rows = []
    for spec in specs:
        row = {"name": spec.name, "spec": spec.to_dict()}
        if spec.name in errors:
            rows.append({**row, "error": errors[spec.name]})
        else:
            folder = built[spec.name]
            rows.append({**row, "size_bytes": weights_size_bytes(folder), **stored_precision(folder),
                         **merge(measurements[spec.name])})
    return rows


def run_benchmark(
    model_path: str,
    task: str = "text-classification",
    variants: Sequence = ("ort-fp32-fused", "ort-int8-dynamic"),
    baseline: str | None = None,
    config: BenchmarkConfig | None = None,
    calibration_data=None,
    work_dir: str | Path | None = None,
) -> dict:
    """Build `variants` of `model_path` and measure each in a fresh process; returns the result dict.

    The result records the machine (CPU model and ISA), library versions and threads: compare its ratios,
    not its absolute numbers, with other runs.
    """
    task = normalize_task(task)
    specs = parse_variants(variants)
    baseline = _check_baseline(specs, baseline)
    config = config or BenchmarkConfig()
    with tempfile.TemporaryDirectory(prefix="optimum-quantization-bench-", dir=work_dir) as tmp:
        built = build_all(model_path, task, specs, Path(tmp), calibration_data, config.threads)
        vocab_size, input_names, max_positions = _input_signature(Path(tmp) / "source")
        config = _fit_to_model(config, max_positions)
        rows = measure_round_robin(
            specs, built, config.rounds, merge_rounds,
            lambda folder: measure_in_fresh_process(folder, task, config, vocab_size, input_names),
        )
    return {
        "kind": "benchmark",
        "model": str(model_path),
        "task": task,
        "baseline": baseline,
        "config": config.to_dict(),
        "machine": machine_record(config.threads),
        "versions": library_versions(),
        "variants": rows,
    }


def speedups(result: dict, batch_size: int = 1, sequence_length: int = 128) -> dict[str, float]:
    """p50 speed-up of every measured variant against the baseline at one shape (same run)."""
    from .evaluation.report import find_row

    by_name = {v["name"]: v for v in result["variants"] if "error" not in v}
    base = find_row(by_name.get(result["baseline"], {}), batch_size, sequence_length)
    if base is None:
        return {}
    return {
        name: base["p50_ms"] / row["p50_ms"]
        for name, v in by_name.items()
        if (row := find_row(v, batch_size, sequence_length)) is not None
    }


def _score(model, tokenizer, task: str, data: dict) -> tuple[dict, object]:
    """(metrics, predictions) of one model on the evaluation data of its task."""
    from .evaluation import metrics

    if task == "text-classification":
        if data["labels"] is None:  # unlabelled: only agreement with the baseline means anything
            predictions = metrics.classification_logits(model, tokenizer, data["texts"]).argmax(-1).tolist()
            return {"examples": len(predictions)}, predictions
        scored = metrics.evaluate_classification(model, tokenizer, data["texts"], data["labels"])
        return scored, scored.pop("predictions")
    if task == "question-answering":
        scored = metrics.evaluate_squad(model, tokenizer, data["examples"])
        return scored, scored.pop("predictions")
    if task == "text-generation":
        scored = metrics.perplexity(model, tokenizer, data["text"], **data.get("perplexity", {}))
        return scored, model
    return {"examples": len(data["texts"])}, model


def _agreement(reference, candidate, tokenizer, task: str, data: dict) -> dict:
    from .evaluation import metrics
    from .evaluation.compare import output_agreement

    if task in ("text-classification", "question-answering"):
        return {"prediction_agreement": metrics.prediction_agreement(reference, candidate)}
    if task == "text-generation":
        return metrics.compare_causal_logits(reference, candidate, tokenizer, data["texts"])
    return output_agreement(reference, candidate, tokenizer, data["texts"], task)


def run_evaluation(
    model_path: str,
    task: str,
    data: dict,
    variants: Sequence = ("pytorch-fp32", "ort-int8-dynamic"),
    baseline: str | None = None,
    calibration_data=None,
    work_dir: str | Path | None = None,
    threads: int | None = None,
    data_description: str = "",
    unlabelled_data: dict | None = None,
    unlabelled_description: str = "",
) -> dict:
    """Score every variant on `data` and compare its predictions with the baseline's.

    `data` by task: classification {"texts", "labels" (or None)}; QA {"examples"}; text generation
    {"text" for perplexity, "texts" for logit divergence}; other tasks {"texts"} (output agreement).
    `unlabelled_data` (same form, labels None): a second set on which only agreement with the baseline is
    measured (`agreement_unlabelled`), by the same built models: a variant built again could differ (OpenVINO
    `precision="auto"` times its candidates on each build).
    """
    from transformers import AutoTokenizer

    task = normalize_task(task)
    specs = parse_variants(variants)
    baseline = _check_baseline(specs, baseline)
    set_threads(threads)
    # The baseline goes first, so every other variant can be compared with its predictions.
    ordered = sorted(specs, key=lambda s: s.name != baseline)
    with tempfile.TemporaryDirectory(prefix="optimum-quantization-eval-", dir=work_dir) as tmp:
        built = build_all(model_path, task, ordered, Path(tmp), calibration_data, threads)
        tokenizer = AutoTokenizer.from_pretrained(Path(tmp) / "source")
        rows, reference, unlabelled_reference = {}, None, None
        for spec in _progress(ordered, "evaluating variants"):
            folder = built[spec.name]
            if isinstance(folder, str):
                rows[spec.name] = {"name": spec.name, "spec": spec.to_dict(), "error": folder}
                continue
            model = load_variant(folder, task, threads=threads)
            scored, predictions = _score(model, tokenizer, task, data)
            row = {"name": spec.name, "spec": spec.to_dict(), "metrics": scored,
                   "size_bytes": weights_size_bytes(folder), **stored_precision(folder),
                   **runtime_details(folder, model)}
            unlabelled = _score(model, tokenizer, task, unlabelled_data)[1] if unlabelled_data is not None else None
            if spec.name == baseline:
                reference, unlabelled_reference = predictions, unlabelled
            elif reference is not None:
                row["agreement"] = _agreement(reference, predictions, tokenizer, task, data)
                if unlabelled is not None:
                    row["agreement_unlabelled"] = _agreement(
                        unlabelled_reference, unlabelled, tokenizer, task, unlabelled_data
                    )
            rows[spec.name] = row
    result = {
        "kind": "evaluation",
        "model": str(model_path),
        "task": task,
        "baseline": baseline,
        "data": data_description,
        "machine": machine_record(threads),
        "versions": library_versions(),
        "variants": [rows[s.name] for s in specs],
    }
    if unlabelled_data is not None:
        result["unlabelled_data"] = unlabelled_description
    return result


if __name__ == "__main__":
    _worker(*sys.argv[1:3])
