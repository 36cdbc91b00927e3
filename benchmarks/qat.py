"""QAT vs static PTQ on a real model: MiniLM-L6 fine-tuned on 40 SQuAD articles, scored on the 8 held-out ones.

    cd /tmp && PYTHONPATH=/work/main/src HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 \\
        /work/main/.venv/bin/python /work/main/benchmarks/qat.py [--questions 600] [--train-windows 1024]
    # INT8 latency of the exported models (quiet machine), batch 1, sequence 128:
    ... benchmarks/qat.py --latency-only

Variants, all from the cached FP32 checkpoint of finetune.py (`minilm-squad`):
- `pytorch-fp32`: the fine-tuned model;
- `ptq-fake-quant`: the QAT recipe calibrated only (TensorRT fake quant, percentile 99.99, 8 batches), no training,
  exported to Q/DQ ONNX and run on ORT CPU;
- `ort-int8-static`: this library's default static INT8 recipe (`quantize="static"`, 128 calibration pairs);
- `qat-fake-quant`: QATTrainer from the FP32 weights, one pass over `--train-windows` training windows at a low
  learning rate, exported the same way as the PTQ variant.
Writes benchmarks/results/qat_squad.{json,md}; exported models are kept under --work-dir for the latency run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import finetune
from optimum.quantization.hardware import cpu_info, cpu_summary
from optimum.quantization.recipe import library_versions

RESULTS = Path(__file__).resolve().parent / "results"
SEQUENCE_LENGTH = 128


def qat_trainer(model_dir: Path, tokenizer, train_set, args, output_dir: Path):
    from transformers import AutoModelForQuestionAnswering, DataCollatorWithPadding, TrainingArguments

    from optimum.quantization import QATTrainer

    model = AutoModelForQuestionAnswering.from_pretrained(model_dir)
    training_args = TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate, num_train_epochs=args.epochs, warmup_ratio=0.1, weight_decay=0.01, lr_scheduler_type="linear",
        logging_steps=10, save_strategy="no", report_to="none", seed=42, data_seed=42, use_cpu=True,
        dataloader_num_workers=0,
    )
    return QATTrainer(model=model, args=training_args, train_dataset=train_set, processing_class=tokenizer,
                      data_collator=DataCollatorWithPadding(tokenizer),
                      quantization=qat_config(args))


def qat_config(args):
    from optimum.quantization import QATConfig

    return QATConfig(method="fake_quant", calibrator=args.calibrator, learn_ranges=args.learn_ranges,
                     quantize_residual_adds=not args.no_residual_adds,
                     distillation_weight=args.distillation_weight,
                     distillation_temperature=args.distillation_temperature)


def score(model, tokenizer, examples, recipe) -> dict:
    start = time.perf_counter()
    scores = finetune.squad_pipeline_scores(model, tokenizer, examples, recipe)
    scores["eval_seconds"] = round(time.perf_counter() - start, 1)
    return scores


def accuracy(args) -> dict:
    import random

    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    model_dir = finetune.squad_qa_model()
    recipe = finetune.SquadRecipe()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    heldout = finetune.evenly_spaced(finetune.load_squad_examples("heldout"), args.questions)
    train_examples = finetune.load_squad_examples("train")
    features = finetune.squad_train_features(tokenizer, train_examples, recipe)
    order = random.Random(0).sample(range(len(features)), k=min(args.train_windows, len(features)))
    train_set = features.select(order)
    rows = []

    def record(name, scores, **extra):
        rows.append({"variant": name, **scores, **extra})
        print(f"{name}: {scores}", flush=True)

    record("pytorch-fp32", score(AutoModelForQuestionAnswering.from_pretrained(model_dir), tokenizer, heldout, recipe))

    if "ptq" in args.rows:
        ptq_row(args, model_dir, tokenizer, train_set, heldout, recipe, record)
    if "static" in args.rows:
        static_row(args, model_dir, tokenizer, train_examples, heldout, recipe, record)
    if "qat" in args.rows:
        qat_row(args, model_dir, tokenizer, train_set, heldout, recipe, record)
    baseline = rows[0]
    for row in rows:
        row["delta_f1"] = round(row["f1"] - baseline["f1"], 2)
        row["delta_exact_match"] = round(row["exact_match"] - baseline["exact_match"], 2)
    return {"data": f"SQuAD v1.1 dev, {len(heldout)} questions evenly spaced over the 8 held-out articles",
            "model": str(model_dir), "variants": rows}


def qat_row(args, model_dir, tokenizer, train_set, heldout, recipe, record) -> None:
    """QATTrainer from the FP32 weights, exported to Q/DQ ONNX (and the TensorRT-validated copy), scored on ORT."""
    from optimum.quantization import QuantModelForQuestionAnswering

    work = Path(args.work_dir)
    qat = qat_trainer(model_dir, tokenizer, train_set, args, work / "qat-run")
    start = time.perf_counter()
    qat.train()
    train_seconds = round(time.perf_counter() - start, 1)
    qat.save_quantized(work / "qat-fake-quant", backend="onnxruntime")
    qat.save_quantized(work / "qat-fake-quant-tensorrt", backend="tensorrt")
    record("qat-fake-quant", score(QuantModelForQuestionAnswering.from_pretrained(work / "qat-fake-quant"), tokenizer,
                                   heldout, recipe), train_seconds=train_seconds, train_windows=len(train_set),
           learning_rate=args.learning_rate, epochs=args.epochs, qat_config=qat_config(args).to_dict()["_data"])


def ptq_row(args, model_dir, tokenizer, train_set, heldout, recipe, record) -> None:
    """The QAT recipe calibrated on the same batches without a training step (PTQ of the same recipe)."""
    from optimum.quantization import QuantModelForQuestionAnswering

    work = Path(args.work_dir)
    ptq = qat_trainer(model_dir, tokenizer, train_set, args, work / "ptq-run")
    ptq.save_quantized(work / "ptq-fake-quant", backend="onnxruntime")  # calibrates, no training step
    record("ptq-fake-quant", score(QuantModelForQuestionAnswering.from_pretrained(work / "ptq-fake-quant"), tokenizer,
                                   heldout, recipe), quantizers=ptq.quantization_summary,
           qat_config=qat_config(args).to_dict()["_data"])


def static_row(args, model_dir, tokenizer, train_examples, heldout, recipe, record) -> None:
    """This library's static PTQ default (ONNX Runtime), calibrated on 128 training-article questions."""
    from optimum.quantization import QuantModelForQuestionAnswering

    work = Path(args.work_dir)
    calibration = [(e["question"], e["context"]) for e in finetune.evenly_spaced(train_examples, 128)]
    static = QuantModelForQuestionAnswering.from_pretrained(model_dir, export=True, quantize="static",
                                                            calibration_dataset=calibration)
    static.save_pretrained(work / "ort-int8-static")
    record("ort-int8-static", score(static, tokenizer, heldout, recipe))


def saved_models_accuracy(args) -> dict:
    """FP32 and every exported model under --work-dir (folders holding model.onnx) scored on --questions."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from optimum.quantization import QuantModelForQuestionAnswering

    model_dir = finetune.squad_qa_model()
    recipe = finetune.SquadRecipe()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    heldout = finetune.evenly_spaced(finetune.load_squad_examples("heldout"), args.questions)
    rows = [{"variant": "pytorch-fp32", **score(AutoModelForQuestionAnswering.from_pretrained(model_dir), tokenizer,
                                                heldout, recipe)}]
    for folder in sorted(Path(args.work_dir).glob("*/model.onnx")):
        model = QuantModelForQuestionAnswering.from_pretrained(folder.parent)
        rows.append({"variant": folder.parent.name, **score(model, tokenizer, heldout, recipe)})
        print(rows[-1], flush=True)
    for row in rows:
        row["delta_f1"] = round(row["f1"] - rows[0]["f1"], 2)
        row["delta_exact_match"] = round(row["exact_match"] - rows[0]["exact_match"], 2)
    return {"data": f"SQuAD v1.1 dev, {len(heldout)} questions evenly spaced over the 8 held-out articles",
            "model": str(model_dir), "variants": rows}


def latency(args) -> dict:
    """Median ORT CPU latency at batch 1, sequence 128, of every exported model under --work-dir."""
    import numpy as np
    import onnxruntime

    rows = []
    for folder in sorted(Path(args.work_dir).glob("*/model.onnx")):
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = onnxruntime.InferenceSession(str(folder), options, providers=["CPUExecutionProvider"])
        feeds = {i.name: np.ones((1, SEQUENCE_LENGTH), dtype=np.int64) for i in session.get_inputs()}
        for _ in range(10):
            session.run(None, feeds)
        times = []
        for _ in range(args.latency_runs):
            start = time.perf_counter()
            session.run(None, feeds)
            times.append((time.perf_counter() - start) * 1000)
        rows.append({"variant": folder.parent.name, "p50_ms": round(statistics.median(times), 2)})
        print(rows[-1], flush=True)
    return {"latency": rows, "batch": 1, "sequence_length": SEQUENCE_LENGTH, "threads": args.threads}


def markdown(result: dict) -> str:
    cpu = result["machine"]
    lines = [f"Machine: {cpu_summary(cpu)}. {result.get('note', '')}", ""]
    if "variants" in result:
        lines += [f"Data: {result['data']}.", "", "| variant | EM | F1 | Δ EM | Δ F1 |", "|---|---|---|---|---|"]
        lines += [f"| {r['variant']} | {r['exact_match']} | {r['f1']} | {r['delta_exact_match']:+.2f} | {r['delta_f1']:+.2f} |"
                  for r in result["variants"]]
    if "latency" in result:
        lines += ["", f"ORT CPU latency, batch 1, sequence {SEQUENCE_LENGTH}:", "", "| variant | p50 ms |", "|---|---|"]
        lines += [f"| {r['variant']} | {r['p50_ms']} |" for r in result["latency"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=600)
    parser.add_argument("--train-windows", type=int, default=1024, help="training windows for the QAT pass")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--calibrator", default="percentile")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--learn-ranges", action="store_true", help="train the activation ranges (LSQ)")
    parser.add_argument("--no-residual-adds", action="store_true", help="leave the residual adds unquantized")
    parser.add_argument("--distillation-weight", type=float, default=0.0)
    parser.add_argument("--distillation-temperature", type=float, default=2.0)
    parser.add_argument("--rows", nargs="+", choices=["ptq", "static", "qat"], default=["ptq", "static", "qat"],
                        help="rows besides FP32: the recipe without training, our static default, the QAT model")
    parser.add_argument("--work-dir", default=str(Path.home() / ".cache" / "optimum-quantization" / "qat-squad"))
    parser.add_argument("--latency-only", action="store_true")
    parser.add_argument("--score-saved", action="store_true", help="score the exported models under --work-dir")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--latency-runs", type=int, default=100)
    parser.add_argument("--name", default="qat_squad")
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    result = latency(args) if args.latency_only else saved_models_accuracy(args) if args.score_saved else accuracy(args)
    result.update(machine=cpu_info().to_dict(), versions=library_versions(), note=args.note,
                  arguments={k: v for k, v in vars(args).items()})
    name = f"{args.name}_latency" if args.latency_only else args.name
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (RESULTS / f"{name}.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
