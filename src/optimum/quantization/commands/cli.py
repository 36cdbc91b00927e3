"""`optimum-quantize`: the console script. With no arguments it runs the demo on the shipped MiniLM."""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import QuantizationError
from .auto import add_auto_arguments, run_auto
from .benchmark import add_benchmark_arguments, add_evaluate_arguments, run_benchmark_command, run_evaluate_command
from .generation import (
    add_generation_benchmark_arguments,
    add_generations_arguments,
    run_generation_benchmark_command,
    run_generations_command,
)
from .push import add_push_arguments, run_push
from .quantize import add_quantize_arguments, run_quantize

# Subcommand name -> (add arguments, run). `quantize` is the default when no subcommand is named.
SUBCOMMANDS = {
    "quantize": (add_quantize_arguments, run_quantize),
    "benchmark": (add_benchmark_arguments, run_benchmark_command),
    "evaluate": (add_evaluate_arguments, run_evaluate_command),
    "push": (add_push_arguments, run_push),
    "generation-benchmark": (add_generation_benchmark_arguments, run_generation_benchmark_command),
    "generations": (add_generations_arguments, run_generations_command),
    "auto": (add_auto_arguments, run_auto),
}
DEFAULT_SUBCOMMAND = "quantize"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optimum-quantize",
        description="Quantize a transformers model to INT8 and report FP32 vs INT8 speed, size and agreement "
        "(`quantize`, the default), or publish a saved quantized model to the Hub (`push`).",
    )
    subparsers = parser.add_subparsers(dest="command")
    for name, (add_arguments, run) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=(run.__doc__ or name).strip().splitlines()[0])
        add_arguments(sub)
        sub.set_defaults(run=run)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help")):
        argv = [DEFAULT_SUBCOMMAND, *argv]
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except QuantizationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line and the shell's code for SIGINT; partial outputs were removed
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
