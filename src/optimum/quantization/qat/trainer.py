"""`QATTrainer`: a `transformers.Trainer` that trains the model with INT8 quantization in the loop.

It adds one argument, `quantization=QATConfig(...)`, and one method, `save_quantized`. `train()` first
inserts the quantizers and calibrates them on a few batches of the training set (read in order, without
touching the training sampler's random state), then hands over to `Trainer.train` unchanged: evaluation,
logging, checkpoints, `resume_from_checkpoint` (the checkpoint restores the calibrated ranges), callbacks
and `accelerate launch` keep working because no part of the training loop is replaced. With
`QATConfig(distillation_weight=...)` the loss (`compute_loss`, Trainer's hook for it) also pulls the logits
towards those of a frozen FP32 teacher.
"""

from __future__ import annotations

import copy
import itertools
import logging

import torch
from transformers import Trainer

from ..configuration import QATConfig, config_from_dict
from ..errors import ConfigError
from . import nncf as qat_nncf
from .distillation import distillation_loss
from .export import save_quantized
from .prepare import LABEL_KEYS, forward_loop_from_batches, is_prepared, prepare, quantizer_counts

logger = logging.getLogger(__name__)

def resolve_qat_config(quantization) -> QATConfig:
    if quantization is None:
        return QATConfig()
    if isinstance(quantization, str):
        return QATConfig(method=quantization)
    if isinstance(quantization, dict):
        quantization = config_from_dict(quantization) if "_type" in quantization else QATConfig(**quantization)
    if not isinstance(quantization, QATConfig):
        raise ConfigError(f"`quantization` must be a QATConfig, its dict or a method name, got {type(quantization).__name__}.")
    return quantization


class QATTrainer(Trainer):
    """`Trainer` with quantization-aware training; swap it in for `Trainer` and pass `quantization=`.

    Args:
        quantization: a `QATConfig` (default: `QATConfig()`, the TensorRT fake-quant recipe), its dict, or a
            method name ("fake_quant" or "nncf").
        teacher_model: the model whose logits the student is distilled towards when
            `quantization.distillation_weight` > 0 (default: a frozen copy of `model`'s FP32 weights).
        *args, **kwargs: everything `transformers.Trainer` takes.
    """

    def __init__(self, *args, quantization: QATConfig | dict | str | None = None, teacher_model=None, **kwargs):
        self.quantization = resolve_qat_config(quantization)
        super().__init__(*args, **kwargs)
        if teacher_model is not None and not self.quantization.distillation_weight:
            raise ConfigError("`teacher_model` is only used with QATConfig(distillation_weight > 0).")
        self.teacher_model = teacher_model
        if self.quantization.method == "nncf" and self.args.save_safetensors:
            # NNCF's quantizers share tensors, which safetensors refuses; checkpoints use torch's format.
            logger.info("QAT with NNCF: checkpoints are saved with save_safetensors=False (shared quantizer tensors).")
            self.args.save_safetensors = False
        self.quantization_summary: dict = {}

    # ------------------------------------------------------------------------------------------ preparation

    def calibration_batches(self) -> list[dict]:
        """The first `calibration_batches` batches of the training set, in order, labels removed."""
        loader = self.get_eval_dataloader(self.train_dataset)  # sequential, this process's shard, no RNG used
        batches = []
        for batch in itertools.islice(loader, self.quantization.calibration_batches):
            batches.append({k: v for k, v in batch.items() if k not in LABEL_KEYS})
        if not batches:
            raise ConfigError("QAT calibration needs training data: `train_dataset` yielded no batch.")
        return batches

    def prepare_quantization(self) -> None:
        """Insert and calibrate the quantizers (once); `train()` calls it before the first step."""
        if is_prepared(self.model) or qat_nncf.is_nncf_model(self.model):
            return
        if self.quantization.distillation_weight and self.teacher_model is None:
            # The FP32 weights the training starts from, before any quantizer is inserted.
            self.teacher_model = copy.deepcopy(self.accelerator.unwrap_model(self.model))
        if self.teacher_model is not None:
            self.teacher_model.eval().requires_grad_(False).to(self.args.device)
        batches = self.calibration_batches()
        if self.quantization.method == "nncf":
            self.model = qat_nncf.quantize(self.model, self.quantization, batches)
            self.model_wrapped = self.model
            self.quantization_summary = {"nncf_quantizers": len(qat_nncf._nncf_quantizers(self.model))}
        else:
            prepare(self.model, self.quantization, forward_loop_from_batches(batches))
            self.quantization_summary = quantizer_counts(self.model)
        logger.info("QAT (%s): quantizers inserted and calibrated: %s", self.quantization.method, self.quantization_summary)

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """`Trainer.train`, after inserting and calibrating the quantizers (a checkpoint then restores ranges)."""
        self.prepare_quantization()
        return super().train(
            resume_from_checkpoint=resume_from_checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval, **kwargs
        )

    def get_decay_parameter_names(self, model) -> list[str]:
        """Trainer's weight-decay list without trained quantization ranges (decay would shrink them)."""
        return [name for name in super().get_decay_parameter_names(model) if not name.endswith(".amax")]

    def create_optimizer(self):
        """Trainer's optimizer, with trained quantization ranges in their own group at `range_learning_rate`.

        Ranges are activation magnitudes (~1-100), weights ~0.05: Adam's steps are ~lr in absolute size, so the
        weights' learning rate would leave the ranges where calibration put them.
        """
        created_here = self.optimizer is None  # an optimizer passed in by the user is left as it is
        optimizer = super().create_optimizer()
        ranges = [p for n, p in self.model.named_parameters() if n.endswith(".amax") and p.requires_grad]
        if ranges and created_here:
            ids = {id(p) for p in ranges}
            for group in optimizer.param_groups:
                group["params"] = [p for p in group["params"] if id(p) not in ids]
            optimizer.add_param_group({"params": ranges, "lr": self.quantization.range_learning_rate, "weight_decay": 0.0})
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Trainer's loss; while training with a teacher, mixed with the distillation term."""
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if self.teacher_model is not None and model.training:
            with torch.no_grad():
                teacher_outputs = self.teacher_model(**{k: v for k, v in inputs.items() if k not in LABEL_KEYS})
            distilled = distillation_loss(outputs, teacher_outputs, self.quantization.distillation_temperature)
            if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
                # Trainer leaves such task losses undivided by the accumulation steps; the batch-mean KL is not.
                distilled = distilled / self.current_gradient_accumulation_steps
            weight = self.quantization.distillation_weight
            loss = (1.0 - weight) * loss + weight * distilled
        return (loss, outputs) if return_outputs else loss

    # ------------------------------------------------------------------------------------------ export

    def save_quantized(self, save_directory, backend: str = "onnxruntime", *, task: str | None = None,
                       metrics: dict | None = None):
        """Export the quantized model for `backend` ("onnxruntime", "tensorrt": Q/DQ ONNX; "openvino": IR).

        Only the main process writes. Reload with `QuantModelFor<Task>.from_pretrained(save_directory)`.
        """
        self.prepare_quantization()  # a model saved without training is the calibrated (PTQ) model
        if not self.is_world_process_zero():
            return None
        model = self.accelerator.unwrap_model(self.model)
        return save_quantized(model, save_directory, backend, self.quantization, task=task,
                              tokenizer=self.processing_class, metrics=metrics)
