"""`optimum-quantize generation-benchmark` and `optimum-quantize generations`: causal LMs side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError

DEFAULT_SPEED_VARIANTS = ("pytorch-fp32", "ort-fp32", "ort-int8", "ort-int8-no-iobinding")
DEFAULT_GENERATION_VARIANTS = ("pytorch-fp32", "ort-int8")


def _common(parser: argparse.ArgumentParser, default_variants) -> None:
    parser.add_argument("--model", "-m", required=True, help="Local FP32 causal LM folder or Hub id.")
    parser.add_argument("--variants", nargs="+", default=list(default_variants),
                        help="Named generation variants (see generation_benchmark.GENERATION_VARIANTS) or NAME=BACKEND:QUANTIZE.")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--output-dir", "-o", default="benchmark-results")
    parser.add_argument("--name", help="File name stem of the reports.")


def add_generation_benchmark_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser, DEFAULT_SPEED_VARIANTS)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--prompt-length", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1)


def add_generations_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser, DEFAULT_GENERATION_VARIANTS)
    parser.add_argument("--prompts", required=True, help="Text file, one prompt per line.")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--greedy", action="store_true", help="Greedy decoding instead of sampling.")
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--temperature", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)


def _write(output_dir: str, stem: str, result: dict, markdown: str) -> None:
    from ..evaluation.report import write_reports

    write_reports(result, output_dir, stem, markdown=markdown)  # atomic: a failure keeps earlier reports
    print(markdown)
    print(f"Wrote {Path(output_dir) / stem}.json and .md")


def run_generation_benchmark_command(args) -> int:
    """Per-token latency, time to first token and peak memory of causal LM variants, in fresh processes."""
    from ..generation_benchmark import GenerationBenchmarkConfig, generation_benchmark_markdown, run_generation_benchmark

    config = GenerationBenchmarkConfig(batch_sizes=args.batch_sizes, prompt_length=args.prompt_length,
                                       new_tokens=args.new_tokens, repeats=args.repeats, threads=args.threads,
                                       rounds=args.rounds)
    result = run_generation_benchmark(args.model, args.variants, config=config)
    _write(args.output_dir, args.name or "generation_benchmark", result, generation_benchmark_markdown(result))
    return 0 if any("error" not in v for v in result["variants"]) else 1


def run_generations_command(args) -> int:
    """Side-by-side continuations of your prompts by several variants, as Markdown for a human to read."""
    from ..evaluation.data import load_text
    from ..evaluation.generation import generations_markdown
    from ..generation_benchmark import run_generations

    prompts = [line.strip() for line in load_text(args.prompts).splitlines() if line.strip()]
    if not prompts:
        raise ConfigError(f"{args.prompts} holds no prompts (one per line).")
    settings = {"max_new_tokens": args.max_new_tokens, "do_sample": not args.greedy}
    if not args.greedy:
        settings.update(top_k=args.top_k, top_p=args.top_p, temperature=args.temperature)
    result = run_generations(args.model, args.variants, prompts, {"run": settings}, seed=args.seed, threads=args.threads)
    _write(args.output_dir, args.name or "generations", result, generations_markdown(result["runs"]["run"]))
    return 0
