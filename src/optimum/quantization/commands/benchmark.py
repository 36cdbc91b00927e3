"""`optimum-quantize benchmark` and `optimum-quantize evaluate`: several variants side by side, one run."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from ..evaluation.benchmark import DEFAULT_BATCH_SIZES, DEFAULT_SEQUENCE_LENGTHS, BenchmarkConfig
from ..samples import default_model_dir
from ..tasks import TASKS, normalize_task
from ..variants import DEFAULT_BASELINE, NAMED_VARIANTS

DEFAULT_BENCHMARK_VARIANTS = ("pytorch-fp32", "ort-fp32-fused", "ort-int8-dynamic")
DEFAULT_EVALUATION_VARIANTS = ("pytorch-fp32", "ort-int8-dynamic")


def _add_common_arguments(parser: argparse.ArgumentParser, default_variants, default_task: str) -> None:
    parser.add_argument("--model", "-m", help="Local FP32 checkpoint folder or Hub id (default: the shipped MiniLM-L6).")
    parser.add_argument("--task", default=default_task, help=f"One of {', '.join(TASKS)} (default: {default_task}).")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(default_variants),
        help=f"Variant names ({', '.join(NAMED_VARIANTS)}), NAME=BACKEND:QUANTIZE with a preset, 'none' or a "
        f"JSON config file, or a JSON file holding a variant spec {{name, kind, options}} "
        f"(default: {' '.join(default_variants)}).",
    )
    parser.add_argument("--baseline", help="Variant the ratios are taken against (default: the first variant, "
                        f"or {DEFAULT_BASELINE} when it runs).")
    parser.add_argument("--calibration-data", help="Texts for static variants (default: the shipped sentences).")
    parser.add_argument("--threads", type=int, help="Intra-op threads for every runtime (default: runtime default).")
    parser.add_argument("--output-dir", "-o", default="benchmark-results", help="Where the JSON/Markdown(/PNG) go.")
    parser.add_argument("--name", help="File name stem of the reports (default: the command name).")


def add_benchmark_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common_arguments(parser, DEFAULT_BENCHMARK_VARIANTS, "text-classification")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=list(DEFAULT_BATCH_SIZES))
    parser.add_argument("--sequence-lengths", nargs="+", type=int, default=list(DEFAULT_SEQUENCE_LENGTHS))
    parser.add_argument("--repeats", type=int, default=20, help="Timed calls per shape (default: 20).")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed calls per shape first (default: 3).")
    parser.add_argument("--max-seconds-per-shape", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=1, help="Fresh-process measurements per variant, taken "
                        "round-robin; the report gives their medians (default: 1).")


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common_arguments(parser, DEFAULT_EVALUATION_VARIANTS, "text-classification")
    parser.add_argument("--data", required=True, help="Classification: .csv/.tsv/.json(l) with text and label "
                        "columns; question-answering: a SQuAD-format JSON; text-generation: a text file.")
    parser.add_argument("--text-column")
    parser.add_argument("--label-column")
    parser.add_argument("--limit", type=int, help="Use only the first N examples (or tokens, for perplexity).")
    parser.add_argument("--max-length", type=int, default=512, help="Perplexity window (default: 512).")
    parser.add_argument("--stride", type=int, default=256, help="Perplexity stride (default: 256).")


def _model_path(args) -> str:
    return args.model or str(default_model_dir())


def _print_summary(markdown: str, written: dict) -> None:
    print(markdown)
    print("Wrote " + ", ".join(str(p) for p in written.values()))


def run_benchmark_command(args) -> int:
    """Measure latency, throughput, size, memory and cold start of several variants in one run."""
    from ..evaluation.report import benchmark_markdown, write_reports
    from ..side_by_side import run_benchmark

    config = BenchmarkConfig(
        batch_sizes=args.batch_sizes,
        sequence_lengths=args.sequence_lengths,
        repeats=args.repeats,
        warmup=args.warmup,
        max_seconds_per_shape=args.max_seconds_per_shape,
        threads=args.threads,
        rounds=args.rounds,
    )
    result = run_benchmark(
        _model_path(args), normalize_task(args.task), args.variants, args.baseline, config, args.calibration_data
    )
    written = write_reports(result, args.output_dir, args.name or "benchmark")
    shape = (1, 128) if (1 in config.batch_sizes and 128 in config.sequence_lengths) else (
        config.batch_sizes[0], config.sequence_lengths[0])
    _print_summary(benchmark_markdown(result, *shape), written)
    return 0 if any("error" not in v for v in result["variants"]) else 1


def load_task_data(task: str, args) -> dict:
    """The evaluation data `run_evaluation` expects for `task`, read from `--data`."""
    from ..evaluation.data import load_labelled_texts, load_squad_file, load_text

    if task == "question-answering":
        return {"examples": load_squad_file(args.data, limit=args.limit)}
    if task == "text-generation":
        text = load_text(args.data)
        # Logit divergence on the first paragraphs; perplexity over the whole text (or --limit tokens).
        paragraphs = [p for p in text.split("\n") if len(p.split()) > 8][:32]
        return {
            "text": text,
            "texts": paragraphs,
            "perplexity": {"max_length": args.max_length, "stride": args.stride, "max_tokens": args.limit},
        }
    texts, labels = load_labelled_texts(args.data, args.text_column, args.label_column, args.limit)
    if task != "text-classification" and labels is not None:
        raise ConfigError(f"Labelled evaluation is for text-classification; {task} is compared by output agreement.")
    return {"texts": texts, "labels": labels}


def run_evaluate_command(args) -> int:
    """Score several variants on a dataset and compare each with the baseline's predictions."""
    from ..evaluation.report import evaluation_markdown, write_reports
    from ..side_by_side import run_evaluation

    task = normalize_task(args.task)
    data = load_task_data(task, args)
    result = run_evaluation(
        _model_path(args), task, data, args.variants, args.baseline, args.calibration_data,
        threads=args.threads, data_description=str(args.data),
    )
    written = write_reports(result, args.output_dir, args.name or "evaluation")
    _print_summary(evaluation_markdown(result), written)
    return 0 if any("error" not in v for v in result["variants"]) else 1
