"""Which quantized GEMMs cause dynamic INT8's error on extractive QA: each one (and each kind) left in FP32 in turn.

    .venv/bin/python benchmarks/gemm_sensitivity.py --name gemm_sensitivity_zen5
    .venv/bin/python benchmarks/gemm_sensitivity.py --base configs/dynamic-no-outlier-split.json --name NAME

Fine-tuned MiniLM (finetune.py), SQuAD held-out questions (the first window of each, 384 tokens). Every variant is the
`--base` config (default: today's dynamic default) with one more `exclude` pattern, built on the usual calibration
draw; it is scored by how far its start/end distributions are from ONNX Runtime FP32's (KL, averaged over questions
and both ends) and how often their argmax moves: continuous measures that resolve what one GEMM does, where SQuAD F1
on 1,589 questions moves by half a point from one draw of smoothing texts to the next (RESULTS.md).
Writes benchmarks/results/NAME.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import re
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

import accuracy
import finetune
from optimum.quantization import DynamicQuantConfig, QuantModelForQuestionAnswering
from optimum.quantization.configuration import config_from_dict
from optimum.quantization.evaluation.metrics import logit_divergence
from optimum.quantization.evaluation.report import machine_line, write_reports
from optimum.quantization.recipe import library_versions
from optimum.quantization.side_by_side import machine_record

RESULTS = Path(__file__).resolve().parent / "results"


def unit_kind(unit: str) -> str:
    """'bert.encoder.layer.3.output.dense' -> 'output.dense'; 'Attention_2' -> 'Attention' (fused Q/K/V)."""
    match = re.match(r".*\.layer\.\d+\.(.+)$", unit)
    return match.group(1) if match else re.sub(r"_\d+$", "", unit)


def start_end_logits(model, features) -> list[tuple[np.ndarray, np.ndarray]]:
    import torch

    with torch.no_grad():
        outputs = [model(**{k: torch.from_numpy(v) for k, v in f.items()}) for f in features]
    return [(o.start_logits.numpy(), o.end_logits.numpy()) for o in outputs]


def divergence(reference, candidate) -> dict:
    """KL and argmax agreement of the start and end distributions, averaged over questions and both ends."""
    rows = [logit_divergence(r, c) for ref, cand in zip(reference, candidate) for r, c in zip(ref, cand)]
    return {"kl": float(np.mean([r["kl_divergence"] for r in rows])),
            "argmax_moved": float(1 - np.mean([r["top1_agreement"] for r in rows]))}


def sensitivity(base: DynamicQuantConfig, limit: int, draw: int) -> dict:
    from transformers import AutoTokenizer

    model_path = finetune.squad_qa_model()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    examples = finetune.load_squad_examples("heldout")
    random.Random(0).shuffle(examples)
    features = [tokenizer(e["question"], e["context"], truncation="only_second", max_length=384, return_tensors="np")
                for e in examples[:limit]]
    calibration = str(accuracy.squad_calibration_file(draw))

    def build(config):
        return QuantModelForQuestionAnswering.from_pretrained(
            model_path, quantize=config, calibration_dataset=calibration)

    reference = start_end_logits(QuantModelForQuestionAnswering.from_pretrained(model_path, quantize=None), features)
    default = build(base)
    units = default.quantization_recipe.details["quantized_units"]
    kinds: dict[str, list[str]] = {}
    for unit in units:
        kinds.setdefault(unit_kind(unit), []).append(unit)
    variants = {"(none)": [], **{unit: [unit] for unit in units}, **{f"every {k}": v for k, v in kinds.items()}}
    rows = []
    for name, excluded in tqdm(variants.items(), desc="variants", leave=False):
        model = build(dataclasses.replace(base, exclude=base.exclude + excluded)) if excluded else default
        rows.append({"fp32": name, "excluded": excluded, **divergence(reference, start_end_logits(model, features))})
    return {"kind": "gemm_sensitivity", "model": str(model_path), "base": base.to_dict(),
            "data": f"SQuAD v1.1 dev, {len(features)} held-out questions (shuffled, seed 0), first 384-token window",
            "calibration_draw": draw, "machine": machine_record(2), "versions": library_versions(), "rows": rows}


def markdown(result: dict) -> str:
    lines = [machine_line(result), "", f"Data: {result['data']}; calibration draw {result['calibration_draw']}. Base "
             f"config: `{result['base']['_type']}` {result['base']['_data']}.", "",
             "| kept in FP32 | KL(FP32 ‖ INT8), start/end | argmax moved |", "|---|---|---|"]
    lines += [f"| {r['fp32']} | {r['kl']:.5f} | {100 * r['argmax_moved']:.2f}% |" for r in result["rows"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="a DynamicQuantConfig JSON (default: DynamicQuantConfig())")
    parser.add_argument("--limit", type=int, default=400)
    parser.add_argument("--calibration-draw", type=int, default=0)
    parser.add_argument("--name", required=True)
    args = parser.parse_args()
    base = DynamicQuantConfig()
    if args.base:
        base = config_from_dict(json.loads(Path(args.base).read_text(encoding="utf-8")))
    result = sensitivity(base, args.limit, args.calibration_draw)
    write_reports(result, RESULTS, args.name, markdown=markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
