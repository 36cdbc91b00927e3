"""Accuracy of every INT8 variant against FP32 on real fine-tuned models (seeds 000/001/002/004).

    .venv/bin/python benchmarks/accuracy.py sst2     # MiniLM fine-tuned on SST-2: dev accuracy/F1 + agreement
    .venv/bin/python benchmarks/accuracy.py squad    # MiniLM fine-tuned on 40 SQuAD articles: EM/F1 on the other 8

The fine-tuned checkpoints come from finetune.py (trained once, cached under ~/.cache/optimum-quantization).
SST-2 agreement runs on train sentences the classifier never saw: agreement resolves far smaller differences
than accuracy on 872 sentences. Writes benchmarks/results/{sst2,squad}_accuracy.{json,md}.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import json
import os
import random
import sys
import tempfile
from pathlib import Path

import finetune
from optimum.quantization import DynamicQuantConfig
from optimum.quantization.evaluation.report import evaluation_markdown, write_reports
from optimum.quantization.side_by_side import run_evaluation
from optimum.quantization.variants import parse_variants

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = [
    "pytorch-fp32",
    "ort-fp32",
    "ort-int8-dynamic",
    "ort-int8-static",
    "pytorch-int8-dynamic",
    "optimum-avx2",
    "optimum-avx512_vnni",
]
AGREEMENT_SENTENCES = 5000
CALIBRATION_SENTENCES = 128  # the unseen sentences right after the agreement set calibrate static variants


def unseen_train_sentences(count: int) -> list[str]:
    """SST-2 train sentences outside the fine-tuning subset, in a fixed random order."""
    sentences, _ = finetune.load_sst2("train")
    seen = set(finetune.sst2_training_subset(finetune.Sst2Recipe())[0])
    unseen = [s for s in dict.fromkeys(sentences) if s not in seen and len(s.split()) >= 4]
    random.Random(0).shuffle(unseen)
    return unseen[:count]


def calibration_file(lines: list[str], suffix: str) -> Path:
    """A calibration file that lives as long as this process (static variants read it while building)."""
    with tempfile.NamedTemporaryFile("w", suffix=suffix, delete=False, encoding="utf-8") as file:
        file.write("\n".join(lines) + "\n")
    atexit.register(os.unlink, file.name)
    return Path(file.name)


def agreement_sentences(unseen: list[str], start: int, count: int) -> list[str]:
    """`unseen` [start, start + count): the default set, or a second set after the calibration sentences
    (to check a choice made on the first set on sentences it was not made on)."""
    first_free = AGREEMENT_SENTENCES + CALIBRATION_SENTENCES
    if start != 0 and start < first_free:
        raise SystemExit(f"--unlabelled-start must be 0 or >= {first_free} (sentences before it are the default "
                         "agreement set and the calibration sentences)")
    sentences = unseen[start:start + count]
    if len(sentences) < count:
        raise SystemExit(f"only {len(sentences)} unseen sentences from {start}; asked for {count}")
    return sentences


def without_data(specs, names: list[str]):
    """`specs`, each named one (a quantized variant of ours) followed by a copy `NAME-no-data` built without
    the calibration texts, as a user who has none would build it."""
    unknown = sorted(set(names) - {s.name for s in specs if s.kind == "quantized"})
    if unknown:
        raise SystemExit(f"--without-data names variants of ours not in --variants: {', '.join(unknown)}")
    result = []
    for spec in specs:
        result.append(spec)
        if spec.name in names:
            result.append(dataclasses.replace(spec, name=f"{spec.name}-no-data",
                                              options={**spec.options, "calibration": False}))
    return result


def random_words_file(model: Path, seed: int, pairs: bool) -> Path:
    """The texts dynamic INT8 smooths on without data, drawn with another seed, as a calibration file: building with
    it is building without data, so several seeds show how much that result hangs on which random texts it drew."""
    from transformers import AutoTokenizer

    from optimum.quantization.calibration import random_word_examples

    count = DynamicQuantConfig().smoothing_samples
    examples = random_word_examples(AutoTokenizer.from_pretrained(model), count, pairs=pairs, seed=seed)
    return qa_calibration_file(examples) if pairs else calibration_file(examples, ".txt")


def sst2(variants, threads: int | None, unlabelled_start: int = 0, unlabelled_count: int = AGREEMENT_SENTENCES,
         random_words_seed: int | None = None) -> dict:
    model = finetune.sst2_classifier()
    dev_texts, dev_labels = finetune.load_sst2("dev")
    unseen = unseen_train_sentences(max(unlabelled_start + unlabelled_count, AGREEMENT_SENTENCES + CALIBRATION_SENTENCES))
    unlabelled = agreement_sentences(unseen, unlabelled_start, unlabelled_count)
    if random_words_seed is None:
        calibration = calibration_file(unseen[AGREEMENT_SENTENCES:AGREEMENT_SENTENCES + CALIBRATION_SENTENCES], ".txt")
    else:
        calibration = random_words_file(model, random_words_seed, pairs=False)
    where = f" (unseen sentences {unlabelled_start}-{unlabelled_start + unlabelled_count - 1})" if unlabelled_start else ""
    # One build scores both sets: a variant built twice could differ (OpenVINO precision="auto" times on each build).
    return run_evaluation(
        str(model), "text-classification", {"texts": dev_texts, "labels": dev_labels}, variants,
        baseline="pytorch-fp32", calibration_data=calibration, threads=threads,
        data_description="GLUE SST-2 dev (872 sentences)",
        unlabelled_data={"texts": unlabelled, "labels": None},
        unlabelled_description=f"{unlabelled_count} SST-2 train sentences unseen in fine-tuning{where} (agreement only)",
    )


def qa_calibration_file(pairs: list[tuple[str, str]]) -> Path:
    """(question, context) pairs as a .jsonl calibration file."""
    return calibration_file([json.dumps({"question": q, "context": c}) for q, c in pairs], ".jsonl")


def squad_calibration_file(draw: int = 0) -> Path:
    """128 training-article questions (never the held-out ones) as a .jsonl calibration file; `draw` seeds which."""
    train_questions = [(e["question"], e["context"]) for e in finetune.load_squad_examples("train")]
    random.Random(draw).shuffle(train_questions)
    return qa_calibration_file(train_questions[:128])


def squad(variants, threads: int | None, limit: int | None, baseline: str = "pytorch-fp32",
          random_words_seed: int | None = None, calibration_draw: int = 0) -> dict:
    model = finetune.squad_qa_model()
    examples = finetune.load_squad_examples("heldout")[:limit]
    if random_words_seed is None:
        calibration = squad_calibration_file(calibration_draw)
    else:
        calibration = random_words_file(model, random_words_seed, pairs=True)
    return run_evaluation(
        str(model), "question-answering", {"examples": examples}, variants, baseline=baseline,
        calibration_data=calibration, threads=threads,
        data_description=f"SQuAD v1.1 dev, {len(examples)} questions of the 8 held-out articles",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmark", choices=("sst2", "squad"))
    parser.add_argument("--variants", nargs="+", default=VARIANTS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, help="SQuAD: first N held-out questions only")
    parser.add_argument("--name", help="results file stem (default: BENCHMARK_accuracy)")
    parser.add_argument("--unlabelled-start", type=int, default=0,
                        help=f"SST-2: first unseen sentence of the agreement set (0, or >= "
                             f"{AGREEMENT_SENTENCES + CALIBRATION_SENTENCES} for a second, disjoint set)")
    parser.add_argument("--unlabelled-count", type=int, default=AGREEMENT_SENTENCES)
    parser.add_argument("--without-data", nargs="+", default=[], metavar="VARIANT",
                        help="also run each of these variants built without the calibration texts, as NAME-no-data")
    parser.add_argument("--random-words-seed", type=int, metavar="SEED",
                        help="calibrate on the random-word texts dynamic INT8 draws without data, seeded SEED "
                             "(0 is what it draws), instead of real text: for dynamic variants only")
    parser.add_argument("--calibration-draw", type=int, default=0, metavar="SEED",
                        help="SQuAD: which random draw of training questions calibrates (0: the usual one)")
    args = parser.parse_args()
    args.variants = without_data(parse_variants(args.variants), args.without_data)
    if args.benchmark == "sst2":
        result = sst2(args.variants, args.threads, args.unlabelled_start, args.unlabelled_count, args.random_words_seed)
    else:
        result = squad(args.variants, args.threads, args.limit, random_words_seed=args.random_words_seed,
                       calibration_draw=args.calibration_draw)
    write_reports(result, RESULTS, args.name or f"{args.benchmark}_accuracy")
    print(evaluation_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
