"""Which quantizer kind costs the QAT recipe its accuracy: PTQ of the recipe in torch with one kind switched off.

    cd /tmp && PYTHONPATH=/work/main/src HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 /work/main/.venv/bin/python \\
        /work/main/benchmarks/qat_sites_ablation.py 600 base off-residual_add off-matmul_input off-linear_input res-max

Rows: base (the recipe), off-KIND (that kind disabled), cal-NAME (calibrator NAME for all), res-NAME (residual adds
ranged by calibrator NAME, the rest percentile; prints each range), 8bit (full-range weights). Prints JSON lines.
"""
from __future__ import annotations

import json
import random
import sys
import time

import finetune
import torch

CALIBRATION_BATCHES, BATCH_SIZE, TRAIN_WINDOWS = 8, 16, 2048


def calibration_batches(tokenizer, recipe) -> list[dict]:
    """The first 8 batches of 16 of the 2,048 training windows `benchmarks/qat.py` samples, labels removed."""
    from transformers import DataCollatorWithPadding

    features = finetune.squad_train_features(tokenizer, finetune.load_squad_examples("train"), recipe)
    windows = features.select(random.Random(0).sample(range(len(features)), k=TRAIN_WINDOWS))
    collate = DataCollatorWithPadding(tokenizer)
    print("features", len(features))
    return [dict(collate([{k: v for k, v in windows[j].items() if k not in ("start_positions", "end_positions")}
                          for j in range(i * BATCH_SIZE, (i + 1) * BATCH_SIZE)]))
            for i in range(CALIBRATION_BATCHES)]


def prepared(model_dir, batches, **config):
    from transformers import AutoModelForQuestionAnswering

    from optimum.quantization import QATConfig
    from optimum.quantization.qat.prepare import forward_loop_from_batches, prepare

    model = AutoModelForQuestionAnswering.from_pretrained(model_dir).eval()
    return prepare(model, QATConfig(**config), forward_loop_from_batches(batches))


def report(name, model, tokenizer, heldout, recipe) -> None:
    start = time.time()
    with torch.no_grad():
        scores = finetune.squad_pipeline_scores(model, tokenizer, heldout, recipe)
    print(json.dumps({"name": name, **scores, "sec": round(time.time() - start)}), flush=True)


def ablated(row: str, model_dir, batches):
    """The model for one row name (see the module docstring)."""
    from transformers import AutoModelForQuestionAnswering

    from optimum.quantization.qat.prepare import quantizers

    if row == "fp32":
        return AutoModelForQuestionAnswering.from_pretrained(model_dir).eval()
    if row == "8bit":
        return prepared(model_dir, batches, reduce_range=False)
    if row.startswith("cal-"):
        return prepared(model_dir, batches, calibrator=row[4:])
    model = prepared(model_dir, batches)
    if row.startswith("res-"):
        ranged = prepared(model_dir, batches, calibrator=row[4:])
        ranges = {n: q.amax.clone() for n, q in quantizers(ranged) if q.kind == "residual_add"}
        for name, quantizer in quantizers(model):
            if name in ranges:
                print(name, float(quantizer.amax), float(ranges[name]))
                quantizer.amax.copy_(ranges[name])
    disabled = {"weights-only": ("linear_input", "matmul_input", "residual_add")}.get(row, (row[4:],) if row.startswith("off-") else ())
    for _, quantizer in quantizers(model):
        if quantizer.kind in disabled:
            quantizer.enabled = False
    return model


def main(argv: list[str]) -> int:
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    model_dir = finetune.squad_qa_model()
    recipe = finetune.SquadRecipe()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    heldout = finetune.evenly_spaced(finetune.load_squad_examples("heldout"), int(argv[0]))
    unknown = [r for r in argv[1:] if r not in ("fp32", "base", "8bit", "weights-only")
               and not r.startswith(("cal-", "off-", "res-"))]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; see the module docstring")
    batches = calibration_batches(tokenizer, recipe)
    for row in argv[1:]:
        report(row, ablated(row, model_dir, batches), tokenizer, heldout, recipe)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
