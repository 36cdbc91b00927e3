"""FP32 vs INT8 on the shipped MiniLM-L6 (feature extraction), every variant against its own FP32, one run.

    .venv/bin/python benchmarks/minilm_variants.py   # writes benchmarks/results/minilm_variants.json + RESULTS.md

Latency: batch 1, the 64 shipped SST-2 sentences (max 128 tokens), median and p90 after 3 warm-up calls.
Agreement: cosine similarity of mean-pooled embeddings, INT8 vs FP32 of the same backend.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from pathlib import Path

from transformers import AutoTokenizer

from optimum.quantization import QuantModelForFeatureExtraction, cpu_info
from optimum.quantization.commands.quantize import compare_with_fp32
from optimum.quantization.samples import default_model_dir, demo_sentences
from optimum.quantization.recipe import library_versions

HERE = Path(__file__).resolve().parent
VARIANTS = [  # (label, backend, quantize)
    ("onnxruntime dynamic (default)", "onnxruntime", "dynamic"),
    ("onnxruntime static minmax", "onnxruntime", "static"),
    ("onnxruntime static percentile", "onnxruntime", {"_type": "StaticQuantConfig", "_data": {"calibration": {"method": "percentile"}}}),
    ("torch dynamic", "torch", "dynamic"),
]


def main() -> int:
    model_dir = str(default_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    threads = os.environ.get("OMP_NUM_THREADS", "default (all cores)")
    with tempfile.TemporaryDirectory() as tmp:
        calibration = Path(tmp) / "calibration.txt"
        calibration.write_text("\n".join(demo_sentences()), encoding="utf-8")
        rows = []
        for label, backend, quantize in VARIANTS:
            print(f"== {label}", flush=True)
            model = QuantModelForFeatureExtraction.from_pretrained(
                model_dir, backend=backend, quantize=quantize, calibration_dataset=str(calibration)
            )
            report = compare_with_fp32(model_dir, "feature-extraction", backend, label, model, tokenizer)
            report.pop("recipe")
            report["details"] = {k: v for k, v in model.quantization_recipe.details.items() if k != "excluded_nodes"}
            rows.append(report)
    result = {
        "benchmark": "minilm_variants",
        "cpu": cpu_info().to_dict(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "threads": threads,
        "versions": library_versions(),
        "rows": rows,
    }
    out = HERE / "results" / "minilm_variants.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    lines = [
        "| variant | FP32 p50 ms | INT8 p50 ms | speed-up | size INT8/FP32 | cosine mean (min) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        fp, q = r["fp32"], r["int8"]
        size = f"{q['size_bytes'] / fp['size_bytes']:.2f}" if fp["size_bytes"] else "n/a (torch: see safetensors)"
        lines.append(
            f"| {r['method']} | {fp['latency_ms']['p50']:.2f} | {q['latency_ms']['p50']:.2f} | "
            f"{fp['latency_ms']['p50'] / q['latency_ms']['p50']:.2f}x | {size} | "
            f"{r['agreement']['cosine_mean']:.4f} ({r['agreement']['cosine_min']:.4f}) |"
        )
    table = "\n".join(lines)
    print(table)
    (HERE / "results" / "minilm_variants.md").write_text(table + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
