"""Speed, size, memory and cold start of every variant on a BERT-base-shaped classifier, one run.

    .venv/bin/python benchmarks/bert_base_speed.py            # full sweep: batch {1,4} x seq {8..512}
    .venv/bin/python benchmarks/bert_base_speed.py --quick    # batch 1, seq {32,128}

No BERT-base weights ship offline (shared/DATA.md); speed does not depend on the weights' values, so the
model is BertForSequenceClassification(BertConfig()) with random weights and the bert-base-uncased vocabulary
shipped with MiniLM. Accuracy is measured on real fine-tuned models by sst2_accuracy.py / squad_accuracy.py.
Writes benchmarks/results/bert_base_speed.{json,md,png}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from optimum.quantization.evaluation.benchmark import BenchmarkConfig
from optimum.quantization.evaluation.report import benchmark_markdown, write_reports
from optimum.quantization.samples import default_model_dir
from optimum.quantization.side_by_side import run_benchmark, speedups

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = [
    "pytorch-fp32",
    "pytorch-int8-dynamic",
    "ort-fp32",
    "ort-fp32-fused",
    "ort-int8-dynamic",
    "ort-int8-static",
    "optimum-avx2",
    "optimum-avx512_vnni",
]


def bert_base_checkpoint(folder: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(num_labels=2)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(default_model_dir()).save_pretrained(folder)  # bert-base-uncased vocabulary
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 1, sequence 32 and 128 only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=VARIANTS)
    parser.add_argument("--name", default="bert_base_speed")
    parser.add_argument("--rounds", type=int, default=2, help="fresh-process rounds per variant (medians)")
    args = parser.parse_args()
    config = BenchmarkConfig(
        batch_sizes=(1,) if args.quick else (1, 4),
        sequence_lengths=(32, 128) if args.quick else (8, 16, 32, 64, 128, 256, 512),
        repeats=20,
        warmup=2,
        max_seconds_per_shape=3.0,
        threads=args.threads,
        rounds=args.rounds,
    )
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = bert_base_checkpoint(Path(tmp) / "bert-base")
        result = run_benchmark(str(checkpoint), "text-classification", args.variants, "ort-fp32-fused", config)
    result["model"] = "BERT-base shape (random init), sequence classification"
    result["speedups_bs1_seq128"] = speedups(result, 1, 128)
    result["speedups_vs_pytorch_bs1_seq128"] = {
        name: value / result["speedups_bs1_seq128"]["pytorch-fp32"]
        for name, value in result["speedups_bs1_seq128"].items()
        if "pytorch-fp32" in result["speedups_bs1_seq128"]
    }
    write_reports(result, RESULTS, args.name)
    print(benchmark_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
