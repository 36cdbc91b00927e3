"""Fine-tune an extractive-QA model on SQuAD, optionally with quantization-aware training (run_qa.py style).

    python run_qa_qat.py --model_name_or_path ~/.cache/optimum-quantization/finetuned/minilm-squad \
        --qat fake_quant --export_backend tensorrt --max_train_windows 1024 --eval_questions 600 \
        --output_dir out/squad-qat --learning_rate 1e-5 --num_train_epochs 1 --per_device_train_batch_size 16 --use_cpu

Data: SQuAD v1.1 dev split by article (no train file ships offline): the first 40 articles train, the last 8 are
scored (EM/F1 with the QA pipeline, official normalisation). The split and the run_qa-style window/label code
live in benchmarks/finetune.py, which this script imports. `--qat none` uses `transformers.Trainer`.
"""

import dataclasses
import random
import sys
from pathlib import Path

from transformers import (AutoModelForQuestionAnswering, AutoTokenizer, DataCollatorWithPadding, HfArgumentParser,
                          Trainer, TrainingArguments)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import finetune  # noqa: E402  (SQuAD split, run_qa's prepare_train_features, EM/F1 scoring)


@dataclasses.dataclass
class ScriptArguments:
    model_name_or_path: str
    qat: str = dataclasses.field(default="fake_quant", metadata={"choices": ["none", "fake_quant", "nncf"]})
    calibrator: str = "percentile"
    recipe: str = dataclasses.field(default="accurate", metadata={"choices": ["accurate", "tensorrt"]})
    quantize_residual_adds: bool | None = None  # None: the recipe's choice (accurate: residual adds FP32)
    learn_ranges: bool = False
    distillation_weight: float = 0.0
    export_backend: str = "onnxruntime"
    max_train_windows: int | None = None
    eval_questions: int = 600


def main(argv=None):
    script, training = HfArgumentParser((ScriptArguments, TrainingArguments)).parse_args_into_dataclasses(argv)
    recipe = finetune.SquadRecipe()
    tokenizer = AutoTokenizer.from_pretrained(script.model_name_or_path)
    model = AutoModelForQuestionAnswering.from_pretrained(script.model_name_or_path)
    features = finetune.squad_train_features(tokenizer, finetune.load_squad_examples("train"), recipe)
    if script.max_train_windows:
        features = features.select(random.Random(training.seed).sample(range(len(features)), script.max_train_windows))
    kwargs = dict(model=model, args=training, train_dataset=features, processing_class=tokenizer,
                  data_collator=DataCollatorWithPadding(tokenizer))
    if script.qat == "none":
        trainer = Trainer(**kwargs)
    else:
        from optimum.quantization import QATConfig, QATTrainer

        trainer = QATTrainer(**kwargs, quantization=QATConfig(
            method=script.qat, calibrator=script.calibrator, recipe=script.recipe,
            quantize_residual_adds=script.quantize_residual_adds,
            learn_ranges=script.learn_ranges, distillation_weight=script.distillation_weight))
    trainer.train(resume_from_checkpoint=training.resume_from_checkpoint)
    trainer.save_model()
    if not trainer.is_world_process_zero():
        return None
    heldout = finetune.evenly_spaced(finetune.load_squad_examples("heldout"), script.eval_questions)
    scored = trainer.model
    if script.qat != "none":  # score what gets deployed: the exported INT8 model
        from optimum.quantization import QuantModelForQuestionAnswering

        folder = trainer.save_quantized(f"{training.output_dir}/quantized", backend=script.export_backend)
        scored = QuantModelForQuestionAnswering.from_pretrained(folder)
    scores = finetune.squad_pipeline_scores(scored.eval() if hasattr(scored, "eval") else scored, tokenizer, heldout, recipe)
    trainer.log_metrics("heldout", scores)
    trainer.save_metrics("heldout", scores)
    return scores


if __name__ == "__main__":
    main(sys.argv[1:] or None)
