"""Seed 002 reproduced: FP32 vs NNCF INT8 on OpenVINO, throughput and SQuAD EM/F1 on the fine-tuned MiniLM QA model.

    cd benchmarks && HF_HUB_OFFLINE=1 ../.venv/bin/python openvino_squad.py                 # full: speed + 1,000+ questions
    cd benchmarks && HF_HUB_OFFLINE=1 ../.venv/bin/python openvino_squad.py --quick --limit 40  # proves it runs
    # ORT + OpenVINO EP rows: the same script in the onnxruntime-openvino environment (make .venv-ortov/.installed):
    cd benchmarks && HF_HUB_OFFLINE=1 ../.venv-ortov/bin/python openvino_squad.py --variants ort-ovep-fp32 ort-ovep-int8-static --baseline ort-ovep-fp32 --name squad_ort_openvino_ep

Speed: batch 4 x sequence 128 (seed 002's target: INT8 >= 2.5x FP32 throughput on AVX512-VNNI). `ov-int8-auto` is
the backend's precision="auto": it times static INT8, INT8 weights and FP32 when it is built (with --threads) and
stores the fastest, which on AVX2 CPUs may be FP32 (see backends/openvino_precision.py); its recipe says which.
Accuracy: the 8 held-out SQuAD articles (benchmarks/accuracy.py's split), calibration on 128 training questions.
Writes benchmarks/results/<name>_{speed,accuracy}.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import accuracy
import finetune
from optimum.quantization.evaluation.benchmark import BenchmarkConfig
from optimum.quantization.evaluation.report import benchmark_markdown, evaluation_markdown, write_reports
from optimum.quantization.side_by_side import run_benchmark, speedups

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ["ov-fp32", "ov-int8-nncf", "ov-int8-auto", "optimum-intel-int8", "pytorch-fp32"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=VARIANTS)
    parser.add_argument("--baseline", default="ov-fp32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, help="first N held-out questions only")
    parser.add_argument("--quick", action="store_true", help="one round, few repeats")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--name", default="squad_openvino")
    args = parser.parse_args()
    if not args.skip_speed:
        config = BenchmarkConfig(
            batch_sizes=(4,), sequence_lengths=(128,), repeats=5 if args.quick else 30, warmup=1 if args.quick else 3,
            max_seconds_per_shape=5.0 if args.quick else 30.0, threads=args.threads, rounds=1 if args.quick else args.rounds,
        )
        speed = run_benchmark(
            str(finetune.squad_qa_model()), "question-answering", args.variants, args.baseline, config,
            calibration_data=accuracy.squad_calibration_file(),
        )
        speed["speedups_bs4_seq128"] = speedups(speed, 4, 128)
        write_reports(speed, RESULTS, f"{args.name}_speed")
        table = benchmark_markdown(speed, 4, 128)  # the reports' default summary shape is batch 1
        (RESULTS / f"{args.name}_speed.md").write_text(table + "\n", encoding="utf-8")
        print(table)
    if not args.skip_accuracy:
        result = accuracy.squad(args.variants, args.threads, args.limit, baseline=args.baseline)
        write_reports(result, RESULTS, f"{args.name}_accuracy")
        print(evaluation_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
