"""`optimum-quantize auto`: the accuracy-aware search from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import QuantizationError
from ..tasks import normalize_task
from .quantize import check_output_option


def add_auto_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "-m", required=True, help="Local folder or Hub id of a fine-tuned transformers checkpoint.")
    parser.add_argument("--task", required=True, help="text-classification or question-answering (named metrics).")
    parser.add_argument("--eval-data", required=True,
                        help="Labelled .tsv/.csv/.json(l) for classification, a SQuAD-format JSON for question answering.")
    parser.add_argument("--eval-limit", type=int, help="Score on the first N examples only (a faster search).")
    parser.add_argument("--metric", help="accuracy or f1 (classification); f1 or exact_match (QA). Default: the first.")
    parser.add_argument("--tolerance", type=float, default=0.3, help="Largest metric drop from FP32 allowed (default 0.3).")
    parser.add_argument("--calibration-data", help="Calibration texts for the static candidates (skipped without).")
    parser.add_argument("--text-column", help="Column of the calibration data that holds the text.")
    parser.add_argument("--backends", nargs="+", default=["onnxruntime"],
                        help="Backends to search: onnxruntime, openvino, torch (default: onnxruntime).")
    parser.add_argument("--candidates", nargs="+", help="Only these candidates (names in the report; default: all).")
    parser.add_argument("--max-trials", type=int, default=40)
    parser.add_argument("--time-budget", type=float, help="Seconds; the search stops (keeping its best) when spent.")
    parser.add_argument("--max-fallback-units", type=int, default=8, help="Most units kept FP32 (default 8).")
    parser.add_argument("--work-dir", help="Trial log + best model; rerun with the same folder to resume.")
    parser.add_argument("--latency-pause", type=float, default=0.0,
                        help="Seconds of idle pause before each timed call: time for a service with sparse requests "
                             "(default 0: calls back to back, a busy service).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", "-o", required=True, help="Where to save the chosen model.")


def load_eval_data(task: str, path: str, limit: int | None):
    """(dataset for AutoQuantConfig.eval_dataset, its description)."""
    from ..evaluation.data import load_labelled_texts, load_squad_file

    if task == "question-answering":
        examples = load_squad_file(path, limit=limit)
        return {"examples": examples}, f"{path}: {len(examples)} questions"
    texts, labels = load_labelled_texts(path, limit=limit)
    if labels is None:
        raise QuantizationError(f"{path} has no label column: the search needs labelled evaluation data.")
    return {"texts": texts, "labels": labels}, f"{path}: {len(texts)} examples"


def run_auto(args) -> int:
    """Search for the fastest INT8 model within a metric tolerance of FP32, save it with its report."""
    from ..autoquant import report_paths
    from ..configuration import AutoQuantConfig
    from ..modeling import QUANT_MODEL_CLASSES
    from ..search_report import search_report_markdown

    task = normalize_task(args.task)
    check_output_option(args.output)
    data, description = load_eval_data(task, args.eval_data, args.eval_limit)
    config = AutoQuantConfig(
        metric=args.metric, tolerance=args.tolerance, eval_dataset=data, eval_dataset_description=description,
        backends=args.backends, candidates=args.candidates, max_trials=args.max_trials, time_budget_s=args.time_budget,
        max_fallback_units=args.max_fallback_units, work_dir=args.work_dir, seed=args.seed,
        latency_pause_s=args.latency_pause,
    )
    model = QUANT_MODEL_CLASSES[task].from_pretrained(
        args.model, quantize=config, calibration_dataset=args.calibration_data, text_column=args.text_column
    )
    report = model.auto_quantization_report
    print(search_report_markdown(report))
    model.save_pretrained(args.output)
    print(f"Saved to {args.output} (recipe and search report in {Path(args.output) / 'quantization_config.json'}).")
    if args.work_dir:
        print("Reports: " + ", ".join(str(p) for p in report_paths(args.work_dir)))
    return 0
