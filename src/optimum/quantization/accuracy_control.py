"""Accuracy-controlled quantization: a validation set, a metric and the largest drop the user accepts.

Passed as `from_pretrained(..., quantize="static", accuracy_control=AccuracyControl(...))`. The OpenVINO
backend hands it to NNCF's `quantize_with_accuracy_control`, which quantizes, measures the metric on the
validation set and returns the most sensitive layers to FP32 one by one until the drop is within `max_drop`.
Not serialised as a config (it holds data and a function); the recipe records its settings and the
metrics measured before and after.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .errors import ConfigError

DROP_TYPES = ("absolute", "relative")

# outputs: one dict per validation example, output name -> numpy array (batch of 1), in the order given.
Metric = Callable[[list[dict[str, Any]]], float]


@dataclass
class AccuracyControl:
    """Keep the quantized model's `metric` within `max_drop` of FP32 on `validation_data`.

    Args:
        validation_data: examples in the calibration format (texts, (text, text_pair) tuples, a
            `datasets.Dataset` or a file): each is tokenized and run through the model on its own.
        metric: `metric(outputs) -> float`, higher is better; `outputs` holds one dict per example
            (output name, e.g. "logits" or "start_logits", -> numpy array), in the order of `validation_data`.
            Close over the labels, e.g. `lambda outs: np.mean([o["logits"].argmax() == y for o, y in zip(outs, labels)])`.
        max_drop: the largest accepted drop of the metric below FP32.
        drop_type: "absolute" (metric units) or "relative" (a fraction of the FP32 value).
        max_num_iterations: how many layer reverts NNCF may try.
    """

    validation_data: Sequence | Any
    metric: Metric
    max_drop: float = 0.01
    drop_type: str = "absolute"
    max_num_iterations: int = 16
    text_column: str | None = None

    def __post_init__(self):
        if not callable(self.metric):
            raise ConfigError("`metric` must be a function outputs -> float (higher is better).")
        if isinstance(self.max_drop, bool) or not isinstance(self.max_drop, (int, float)) or self.max_drop < 0:
            raise ConfigError(f"`max_drop` must be a number >= 0, got {self.max_drop!r}.")
        if self.drop_type not in DROP_TYPES:
            raise ConfigError(f"`drop_type` must be one of {DROP_TYPES}, got {self.drop_type!r}.")
        if int(self.max_num_iterations) < 1:
            raise ConfigError("`max_num_iterations` must be >= 1.")
        if self.validation_data is None:
            raise ConfigError("Accuracy control needs `validation_data`: the examples the metric is measured on.")

    def describe(self) -> dict:
        """What the recipe records (the data and the function themselves are not serialisable)."""
        return {
            "metric": getattr(self.metric, "__name__", type(self.metric).__name__),
            "max_drop": self.max_drop,
            "drop_type": self.drop_type,
            "max_num_iterations": self.max_num_iterations,
        }
