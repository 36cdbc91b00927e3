"""Knowledge distillation for QAT: the quantized student matches the soft outputs of its own FP32 weights.

Fake quant moves every layer's output a little; training on the labels alone pulls the model back towards the
task but not towards what the FP32 model computed. A KL term on the logits (Hinton et al.) gives every
position of every window a target, which is what closes the last points of the gap on small QA sets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError


def logit_names(outputs) -> list[str]:
    """The output fields that are logits (`logits`; `start_logits` and `end_logits` for QA), in output order."""
    names = [k for k, v in outputs.items() if k.endswith("logits") and isinstance(v, torch.Tensor)]
    if not names:
        raise ConfigError(
            f"Distillation needs the model to return logits; its outputs are {list(outputs.keys())}. "
            "Set QATConfig(distillation_weight=0) to train on the task loss alone."
        )
    return names


def distillation_loss(student_outputs, teacher_outputs, temperature: float) -> torch.Tensor:
    """Mean over the logit fields of KL(teacher || student) at `temperature`, scaled by T² (gradient size of T=1).

    The softmax runs over the last axis (classes, vocabulary, or sequence positions for QA start/end logits).
    """
    losses = []
    for name in logit_names(student_outputs):
        student = student_outputs[name].float().flatten(0, -2) / temperature
        teacher = teacher_outputs[name].detach().float().flatten(0, -2) / temperature
        losses.append(F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1), log_target=True,
                               reduction="batchmean"))
    return torch.stack(losses).mean() * temperature**2
