"""Paired latency of a few variants in one process, called in turns: a ratio that survives a noisy machine.

    .venv/bin/python benchmarks/paired_latency.py --variants ort-int8-dynamic optimum-avx512_vnni --name NAME

`bert_base_speed.py` measures each variant in fresh processes, which is what a user's service sees, but on a
shared VM two such runs disagreed by 15% on which of two variants was faster. Here every variant is built once
(BERT-base shape, random init, or with `--model` a fine-tuned MiniLM: random weights have no outlier channels, so
what the defaults do about them costs time only on a trained model), loaded into this process, warmed up, and then
called in alternating order (`round_robin_ms`), so a change of load on the machine hits every variant alike. Each variant is called with the
same inputs, after an untimed pause (`--pause`): ONNX Runtime's worker threads spin after a call, and on 2 cores
they would slow whichever variant runs next. `--calls-per-turn N` makes each turn a burst of N calls back to back (a busy
service) instead of one call after an idle gap (sporadic requests): runtimes differ in how fast their threads wake.
The report gives p50/p90 per variant and each p50 ratio to the first variant.
Writes benchmarks/results/NAME.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import finetune
from bert_base_speed import bert_base_checkpoint

from optimum.quantization.evaluation.benchmark import percentile, round_robin_ms, synthetic_inputs
from optimum.quantization.evaluation.report import machine_line, write_reports
from optimum.quantization.recipe import library_versions
from optimum.quantization.side_by_side import build_all, machine_record
from optimum.quantization.variants import load_variant, parse_variants

RESULTS = Path(__file__).resolve().parent / "results"
# --model: (task, description, how to get the checkpoint folder given a scratch folder)
MODELS = {
    "bert-base": ("text-classification", "BERT-base shape (random init), sequence classification",
                  lambda scratch: bert_base_checkpoint(scratch / "bert-base")),
    "minilm-sst2": ("text-classification", "MiniLM fine-tuned on SST-2 (finetune.py), sequence classification",
                    lambda scratch: finetune.sst2_classifier()),
    "minilm-squad": ("question-answering", "MiniLM fine-tuned on SQuAD articles (finetune.py), question answering",
                     lambda scratch: finetune.squad_qa_model()),
}


def build_variants(model: str, specs, scratch: Path, threads: int, batch_size: int, sequence_length: int):
    """Build `specs` from the `--model` checkpoint in `scratch`: (task, description, {name: folder}, model inputs)."""
    from transformers import AutoConfig, AutoTokenizer

    task, description, checkpoint_of = MODELS[model]
    checkpoint = checkpoint_of(scratch)
    built = build_all(str(checkpoint), task, specs, scratch / "work", threads=threads)
    failed = {name: error for name, error in built.items() if isinstance(error, str)}
    if failed:
        raise SystemExit(f"variants not built: {failed}")
    inputs = synthetic_inputs(batch_size, sequence_length, AutoConfig.from_pretrained(checkpoint).vocab_size,
                              AutoTokenizer.from_pretrained(checkpoint).model_input_names)
    return task, description, built, inputs


def paired_latency(variants, rounds: int, warmup: int, batch_size: int, sequence_length: int, threads: int,
                   pause_s: float, model: str = "bert-base", calls_per_turn: int = 1) -> dict:
    import torch

    specs = parse_variants(variants)
    with tempfile.TemporaryDirectory(prefix="paired-latency-") as tmp:
        task, description, built, inputs = build_variants(model, specs, Path(tmp), threads, batch_size, sequence_length)
        torch.set_num_threads(threads)
        models = {spec.name: load_variant(built[spec.name], task, threads) for spec in specs}
        with torch.no_grad():
            times = round_robin_ms({name: (lambda m=model: m(**inputs)) for name, model in models.items()},
                                   rounds=rounds, warmup=warmup, pause_s=pause_s, calls_per_turn=calls_per_turn)
    p50 = {name: statistics.median(t) for name, t in times.items()}
    first = p50[specs[0].name]
    rows = [{"name": name, "p50_ms": p50[name], "p90_ms": percentile(sorted(t), 90),
             "ratio_to_first": p50[name] / first, "calls": len(t)} for name, t in times.items()]
    return {"kind": "paired_latency", "task": task, "model": description,
            "shape": {"batch_size": batch_size, "sequence_length": sequence_length}, "rounds": rounds,
            "warmup": warmup, "pause_s": pause_s, "calls_per_turn": calls_per_turn, "machine": machine_record(threads), "versions": library_versions(), "variants": rows}


def markdown(result: dict) -> str:
    shape = result["shape"]
    per_turn = result.get("calls_per_turn", 1)
    turns = (f"{result['rounds']} calls each" if per_turn == 1 else
             f"{result['rounds']} turns each of {per_turn} calls back to back (all timed)")
    lines = [
        machine_line(result),
        "",
        f"{result['model']}, batch {shape['batch_size']} x sequence {shape['sequence_length']}; all variants loaded in one "
        f"process and called in alternating order, {turns} after {result['warmup']} warm-up calls, "
        f"{result['pause_s']} s untimed pause before each {'call' if per_turn == 1 else 'turn'}.",
        "",
        f"| variant | p50 ms | p90 ms | p50 vs {result['variants'][0]['name']} |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['name']} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['ratio_to_first']:.3f} |" for r in result["variants"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", required=True, help="the first is the reference of the ratios")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pause", type=float, default=0.1,
                        help="untimed seconds before each call, so the previous runtime's threads stop spinning")
    parser.add_argument("--model", choices=sorted(MODELS), default="bert-base")
    parser.add_argument("--calls-per-turn", type=int, default=1,
                        help="timed calls back to back per turn (1: each call after the pause; more: a burst)")
    parser.add_argument("--name", required=True, help="results file stem")
    args = parser.parse_args()
    result = paired_latency(args.variants, args.rounds, args.warmup, args.batch_size, args.sequence_length, args.threads,
                            args.pause, args.model, args.calls_per_turn)
    write_reports(result, RESULTS, args.name, markdown=markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
