"""Fine-tune a sequence classifier, optionally with quantization-aware training, in the style of run_glue.py.

    python run_glue_qat.py --model_name_or_path ~/.cache/optimum-quantization/finetuned/minilm-sst2 \
        --train_file sst2/train.tsv --validation_file sst2/dev.tsv \
        --max_train_samples 4000 --qat fake_quant --export_backend onnxruntime \
        --output_dir out/sst2-qat --learning_rate 1e-5 --num_train_epochs 1 --per_device_train_batch_size 32 \
        --eval_strategy epoch --use_cpu

`--qat none` trains with `transformers.Trainer`; `--qat fake_quant|nncf` swaps in `QATTrainer` and, after training,
writes the INT8 model for `--export_backend` (onnxruntime, tensorrt: Q/DQ ONNX; openvino: IR) to `<output_dir>/quantized`.
Every `TrainingArguments` flag works as in run_glue.py (checkpoints, --resume_from_checkpoint, accelerate launch).
Files: .tsv/.csv with `sentence` and `label` columns (GLUE SST-2 layout).
"""

import csv
import dataclasses
import sys

import datasets
import numpy as np
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, HfArgumentParser,
                          Trainer, TrainingArguments)


@dataclasses.dataclass
class ScriptArguments:
    model_name_or_path: str
    train_file: str
    validation_file: str
    qat: str = dataclasses.field(default="fake_quant", metadata={"choices": ["none", "fake_quant", "nncf"]})
    calibrator: str = "percentile"
    recipe: str = dataclasses.field(default="accurate", metadata={"choices": ["accurate", "tensorrt"]})
    quantize_residual_adds: bool | None = None  # None: the recipe's choice (accurate: residual adds FP32)
    learn_ranges: bool = False
    distillation_weight: float = 0.0
    export_backend: str = "onnxruntime"
    max_seq_length: int = 64
    max_train_samples: int | None = None
    max_eval_samples: int | None = None


def load_split(path: str, limit: int | None):
    delimiter = "\t" if path.endswith(".tsv") else ","
    table = datasets.load_dataset("csv", data_files=path, delimiter=delimiter, quoting=csv.QUOTE_NONE,
                                  na_filter=False, split="train")
    return table.select(range(min(limit, len(table)))) if limit else table


def main(argv=None):
    script, training = HfArgumentParser((ScriptArguments, TrainingArguments)).parse_args_into_dataclasses(argv)
    tokenizer = AutoTokenizer.from_pretrained(script.model_name_or_path)
    train, validation = load_split(script.train_file, script.max_train_samples), load_split(script.validation_file, script.max_eval_samples)
    labels = sorted(set(train["label"]))
    model = AutoModelForSequenceClassification.from_pretrained(script.model_name_or_path, num_labels=len(labels))

    def encode(batch):
        return tokenizer(batch["sentence"], truncation=True, max_length=script.max_seq_length)

    train = train.map(encode, batched=True, remove_columns=["sentence"])
    validation = validation.map(encode, batched=True, remove_columns=["sentence"])

    def compute_metrics(prediction):
        return {"accuracy": float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())}

    kwargs = dict(model=model, args=training, train_dataset=train, eval_dataset=validation, processing_class=tokenizer,
                  data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=compute_metrics)
    if script.qat == "none":
        trainer = Trainer(**kwargs)
    else:
        from optimum.quantization import QATConfig, QATTrainer

        trainer = QATTrainer(**kwargs, quantization=QATConfig(
            method=script.qat, calibrator=script.calibrator, recipe=script.recipe,
            quantize_residual_adds=script.quantize_residual_adds,
            learn_ranges=script.learn_ranges, distillation_weight=script.distillation_weight))
    if training.do_train or not training.do_eval:
        trainer.train(resume_from_checkpoint=training.resume_from_checkpoint)
        trainer.save_model()
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    if script.qat != "none":
        trainer.save_quantized(f"{training.output_dir}/quantized", backend=script.export_backend,
                               metrics={"eval_accuracy": metrics.get("eval_accuracy")})
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:] or None)
