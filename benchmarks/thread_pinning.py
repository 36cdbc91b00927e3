"""ONNX Runtime with an explicit thread count, its worker threads pinned or not, called after idle gaps.

    cd benchmarks && ../.venv/bin/python thread_pinning.py --model minilm-sst2 --name thread_pinning_minilm_sst2_128_zen5

Setting `intra_op_num_threads` turns off the pinning ONNX Runtime does when it picks the count itself. On a 2-vCPU
VM a worker thread woken after the caller slept then often ran on the caller's CPU, and a short call took up to 3x
its time. Each ONNX Runtime variant is built once and loaded three times through our loader: with the thread count
and no pinning (the benchmark harness before), with the workers pinned one per CPU (`with_intra_op_threads`, the
harness now), and with ONNX Runtime's own default. All are called in turns in one process after an untimed sleep
(`--pause`), which is what a service between requests sees. Writes benchmarks/results/NAME.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from paired_latency import MODELS, build_variants

from optimum.quantization.evaluation.benchmark import percentile, round_robin_ms
from optimum.quantization.evaluation.report import machine_line, write_reports
from optimum.quantization.modeling import QUANT_MODEL_CLASSES
from optimum.quantization.recipe import library_versions
from optimum.quantization.side_by_side import machine_record
from optimum.quantization.variants import _ort_session_options, parse_variants

RESULTS = Path(__file__).resolve().parent / "results"


def session_options(mode: str, threads: int):
    """SessionOptions for one mode; our loader adds its graph's entries to them."""
    import onnxruntime

    if mode == "ort-default":
        return None
    if mode == "pinned":
        return _ort_session_options(threads)  # the harness's own
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return options


def thread_pinning(variants, rounds: int, sequence_length: int, threads: int, pause_s: float, model: str) -> dict:
    specs = parse_variants(variants)
    with tempfile.TemporaryDirectory(prefix="thread-pinning-") as tmp:
        task, description, built, inputs = build_variants(model, specs, Path(tmp), threads, 1, sequence_length)
        models = {
            f"{spec.name}, {mode}": QUANT_MODEL_CLASSES[task].from_pretrained(
                str(built[spec.name]), session_options=session_options(mode, threads))
            for spec in specs for mode in ("unpinned", "pinned", "ort-default")
        }
        times = round_robin_ms({name: (lambda m=m: m(**inputs)) for name, m in models.items()},
                               rounds=rounds, warmup=5, pause_s=pause_s)
    rows = [{"name": name, "p50_ms": float(np.median(t)), "p90_ms": percentile(sorted(t), 90), "max_ms": max(t),
             "calls": len(t)} for name, t in times.items()]
    return {"kind": "thread_pinning", "task": task, "model": description, "sequence_length": sequence_length,
            "rounds": rounds, "pause_s": pause_s, "machine": machine_record(threads), "versions": library_versions(),
            "variants": rows}


def markdown(result: dict) -> str:
    lines = [
        machine_line(result),
        "",
        f"{result['model']}, batch 1 x sequence {result['sequence_length']}; each ONNX Runtime variant loaded with the "
        f"thread count unpinned, pinned, and with ONNX Runtime's default, all called in turns in one process, "
        f"{result['rounds']} calls each, {result['pause_s']} s untimed sleep before each call.",
        "",
        "| variant, threads | p50 ms | p90 ms | max ms |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['name']} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['max_ms']:.2f} |" for r in result["variants"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["ort-fp32-fused", "ort-int8-dynamic"],
                        help="ONNX Runtime variants")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pause", type=float, default=0.1, help="untimed seconds of sleep before each call")
    parser.add_argument("--model", choices=sorted(MODELS), default="minilm-sst2")
    parser.add_argument("--name", required=True, help="results file stem")
    args = parser.parse_args()
    result = thread_pinning(args.variants, args.rounds, args.sequence_length, args.threads, args.pause, args.model)
    write_reports(result, RESULTS, args.name, markdown=markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
