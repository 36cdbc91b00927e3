"""Static-quantization calibration for ONNX Runtime, as its own step whose ranges can be inspected.

Attention-mask paths carry values near float32's minimum (HF models add `finfo.min` at masked
positions). Histogram calibrators (percentile, entropy) cannot bin such ranges and crash with "Too many
bins", and any scale derived from them is useless. We find those unbounded tensors with a quick min/max
pass and keep them out of calibration and out of quantization.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
from onnxruntime.quantization.calibrate import (
    EntropyCalibrater,
    MinMaxCalibrater,
    PercentileCalibrater,
    TensorsData,
)

from ..configuration import CalibrationConfig

# Activations beyond this magnitude are mask sentinels, not data (real BERT outliers stay in the hundreds).
UNBOUNDED_THRESHOLD = 1e6
# The min/max pass that finds unbounded tensors needs only a few examples: every padded one shows the mask.
PROBE_SAMPLES = 8
ENTROPY_BINS, ENTROPY_QUANTIZED_BINS = 512, 128

ORT_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}


class ListDataReader(CalibrationDataReader):
    """ORT's reader protocol over a list of feed dicts."""

    def __init__(self, feeds: Sequence[dict]):
        self.feeds = list(feeds)
        self._iter = iter(self.feeds)

    def get_next(self):
        return next(self._iter, None)

    def __len__(self):
        return len(self.feeds)


class _SkipTensorsMixin:
    """Calibrate everything the base calibrator would, except `skip_tensors`."""

    skip_tensors: frozenset = frozenset()

    def select_tensors_to_calibrate(self, model):
        tensors, value_infos = super().select_tensors_to_calibrate(model)
        return tensors - self.skip_tensors, value_infos


class _MinMax(_SkipTensorsMixin, MinMaxCalibrater):
    pass


class _Percentile(_SkipTensorsMixin, PercentileCalibrater):
    pass


class _Entropy(_SkipTensorsMixin, EntropyCalibrater):
    pass


def _run(calibrator, feeds) -> TensorsData:
    calibrator.augment_graph()
    calibrator.create_inference_session()
    calibrator.collect_data(ListDataReader(feeds))
    return calibrator.compute_data()


def _is_unbounded(data) -> bool:
    low, high = (np.asarray(v, dtype=np.float64) for v in data.range_value)
    return not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))) or max(np.abs(low).max(), np.abs(high).max()) > UNBOUNDED_THRESHOLD


def calibrate(
    model_path: Path, feeds: Sequence[dict], config: CalibrationConfig, op_types: Sequence[str], work_dir: Path
) -> tuple[TensorsData, set[str]]:
    """Return (activation ranges, unbounded tensors kept out of them)."""
    op_types = list(op_types)
    probe = _MinMax(str(model_path), op_types, str(work_dir / "augmented_probe.onnx"))
    probe_ranges = _run(probe, feeds if config.method == "minmax" else feeds[:PROBE_SAMPLES])
    unbounded = {name for name, data in probe_ranges.items() if _is_unbounded(data)}
    if config.method == "minmax":
        kept = {name: data for name, data in probe_ranges.items() if name not in unbounded}
        return TensorsData(CalibrationMethod.MinMax, kept), unbounded
    if config.method == "percentile":
        calibrator = _Percentile(
            str(model_path), op_types, str(work_dir / "augmented.onnx"), symmetric=True, percentile=config.percentile
        )
    else:
        # ORT's defaults (128 bins, 128 quantized bins) leave the KL search a single candidate, i.e. min/max.
        # TensorRT uses 2048 -> 128; ORT's pure-Python KL loop makes that minutes per model, 512 keeps it seconds.
        calibrator = _Entropy(
            str(model_path), op_types, str(work_dir / "augmented.onnx"), symmetric=False,
            num_bins=ENTROPY_BINS, num_quantized_bins=ENTROPY_QUANTIZED_BINS,
        )
    calibrator.skip_tensors = frozenset(unbounded)
    return _run(calibrator, feeds), unbounded
