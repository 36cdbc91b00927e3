"""Symmetric INT8 fake quantization (TensorRT explicit precision) and the calibrators that set its ranges.

Numerics are those of ONNX QuantizeLinear/DequantizeLinear with zero-point 0: scale = amax / 127,
q = saturate(round_half_even(x / scale), -128, 127), x' = q * scale. They are written on torch's
`fake_quantize_per_{tensor,channel}_affine`, which export to exactly those Q/DQ pairs (`dynamo=False`), so
the exported graph computes what the model trained with. Gradients pass straight through inside the range.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError

QMIN, QMAX = -128, 127
AMAX_FLOOR = 1e-8  # an all-zero tensor still gets a finite, non-zero scale


# 7-bit weights (-64..63): on CPUs without VNNI, ONNX Runtime's INT8 kernels sum pairs of u8 x s8 products
# in saturating 16-bit adds, and full-range weights overflow them (255 x 127 x 2 > 32767; 255 x 64 x 2 fits).
QMAX_7BIT = 63


def fake_quant(x: torch.Tensor, amax: torch.Tensor, axis: int | None = None, qmax: int = QMAX) -> torch.Tensor:
    """Symmetric fake quant of `x` to [-qmax-1, qmax] with range `amax` (a scalar, or one per slice along `axis`)."""
    scale = amax.detach().float().clamp_min(AMAX_FLOOR) / qmax
    low = -qmax - 1
    if torch.jit.is_tracing():  # ONNX export: scales become constants of the graph, not ops on a buffer
        scale = torch.tensor(scale.tolist(), dtype=torch.float32, device=x.device)
        # ONNX Q/DQ only has the full INT8 range; 7-bit weights (amax = max |w|) round into [-63, 63] anyway.
        low, qmax = QMIN, QMAX
    if axis is None:
        zero = torch.zeros((), dtype=torch.int32, device=x.device)
        return torch.fake_quantize_per_tensor_affine(x, scale.reshape(()), zero, low, qmax)
    zero = torch.zeros(scale.numel(), dtype=torch.int32, device=x.device)
    return torch.fake_quantize_per_channel_affine(x, scale.reshape(-1), zero, axis % x.dim(), low, qmax)


def learnable_fake_quant(x: torch.Tensor, amax: torch.Tensor, qmax: int = QMAX) -> torch.Tensor:
    """Per-tensor `fake_quant` whose range `amax` receives a gradient (LSQ, Esser et al. 2020).

    Same values as `fake_quant`; x gets the straight-through gradient inside the range (zero outside, as
    torch's fake-quantize op), amax gets d/d(amax) of the quantized value: the rounding error inside the range,
    ±qmax for clipped values. (LSQ's gradient scale is left out: Adam, Trainer's optimizer, ignores the scale.)
    """
    scale = amax.float().clamp_min(AMAX_FLOOR) / qmax
    scaled = x * (1.0 / scale)  # as torch's kernel: multiply by the inverse scale, then round half to even
    quantized = torch.clamp(scaled + (torch.round(scaled) - scaled).detach(), -qmax - 1, qmax)
    return (quantized * scale).to(x.dtype)


# --------------------------------------------------------------------------------------------- calibrators


class MaxCalibrator:
    """The largest |x| seen."""

    def __init__(self, **_):
        self.amax: torch.Tensor | None = None

    def collect(self, x: torch.Tensor) -> None:
        value = x.detach().abs().amax().float().cpu()
        self.amax = value if self.amax is None else torch.maximum(self.amax, value)

    def compute_amax(self) -> torch.Tensor | None:
        return self.amax


class HistogramCalibrator:
    """Histogram of |x| with a fixed bin width set by the first batch, extended when larger values arrive.

    The range is then chosen from the histogram: `percentile` of the mass, the minimum of the expected
    quantization `mse`, or the TensorRT `entropy` (KL-divergence) threshold.
    """

    def __init__(self, method: str, num_bins: int = 2048, percentile: float = 99.99):
        self.method, self.num_bins, self.percentile = method, num_bins, percentile
        self.hist: torch.Tensor | None = None
        self.width: float = 0.0

    def collect(self, x: torch.Tensor) -> None:
        values = x.detach().abs().float().flatten().cpu()
        values = values[torch.isfinite(values)]
        top = float(values.max()) if values.numel() else 0.0
        if self.hist is None:
            self.width = max(top, AMAX_FLOOR) / self.num_bins
            self.hist = torch.zeros(self.num_bins, dtype=torch.float64)
        bins = max(self.hist.numel(), math.ceil(top / self.width))
        if bins > self.hist.numel():
            self.hist = torch.cat([self.hist, torch.zeros(bins - self.hist.numel(), dtype=torch.float64)])
        self.hist += torch.histc(values, bins=bins, min=0.0, max=bins * self.width).double()

    def edges(self) -> torch.Tensor:
        return torch.arange(1, self.hist.numel() + 1, dtype=torch.float64) * self.width

    def compute_amax(self) -> torch.Tensor | None:
        if self.hist is None or self.hist.sum() == 0:
            return None
        amax = {"percentile": self._percentile, "mse": self._mse, "entropy": self._entropy}[self.method]()
        return torch.tensor(float(amax), dtype=torch.float32)

    def _percentile(self) -> float:
        cdf = torch.cumsum(self.hist, 0) / self.hist.sum()
        index = int(torch.searchsorted(cdf, torch.tensor(self.percentile / 100.0, dtype=torch.float64)))
        return float(self.edges()[min(index, self.hist.numel() - 1)])

    def _mse(self) -> float:
        """The bin edge whose symmetric INT8 grid gives the least expected squared error over the histogram."""
        centers = (torch.arange(self.hist.numel(), dtype=torch.float64) + 0.5) * self.width
        candidates = self.edges()[max(self.hist.numel() // 16, 1) - 1 :: max(self.hist.numel() // 512, 1)]
        best, best_error = float(candidates[-1]), math.inf
        for amax in candidates.tolist():
            scale = amax / QMAX
            quantized = torch.clamp(torch.round(centers / scale), 0, QMAX) * scale
            error = float((self.hist * (centers - quantized) ** 2).sum())
            if error < best_error:
                best, best_error = amax, error
        return best

    def _entropy(self) -> float:
        """TensorRT's calibration: the threshold minimising KL(P || Q) of the clipped vs 128-level distribution."""
        hist = self.hist
        levels = QMAX + 1
        total = hist.numel()
        if total <= levels:
            return float(self.edges()[-1])
        best, best_divergence = total, math.inf
        for i in range(levels, total + 1, max((total - levels) // 256, 1)):
            reference = hist[:i].clone()
            reference[i - 1] += hist[i:].sum()  # outliers clipped into the last bin
            nonzero = hist[:i] > 0
            # Merge the i bins into 128 levels, then spread each level's mass back over its non-empty bins.
            groups = torch.div(torch.arange(i) * levels, i, rounding_mode="floor")
            level_mass = torch.zeros(levels, dtype=torch.float64).index_add_(0, groups, hist[:i])
            level_count = torch.zeros(levels, dtype=torch.float64).index_add_(0, groups, nonzero.double())
            expanded = torch.where(nonzero, level_mass[groups] / level_count[groups].clamp_min(1), torch.zeros(()))
            p = reference / reference.sum()
            q = expanded / expanded.sum().clamp_min(1e-12)
            mask = p > 0
            divergence = float((p[mask] * torch.log(p[mask] / q[mask].clamp_min(1e-12))).sum())
            if divergence < best_divergence:
                best, best_divergence = i, divergence
        return float(self.edges()[best - 1])


CALIBRATORS = {
    "max": lambda config: MaxCalibrator(),
    "percentile": lambda config: HistogramCalibrator("percentile", config.num_bins, config.percentile),
    "entropy": lambda config: HistogramCalibrator("entropy", config.num_bins),
    "mse": lambda config: HistogramCalibrator("mse", config.num_bins),
}


def make_calibrator(config):
    if config.calibrator not in CALIBRATORS:
        raise ConfigError(f"Unknown calibrator {config.calibrator!r}; valid: {sorted(CALIBRATORS)}.")
    return CALIBRATORS[config.calibrator](config)


# --------------------------------------------------------------------------------------------- quantizers


class ActivationQuantizer(nn.Module):
    """Per-tensor INT8 fake quant of an activation; its range `amax` is calibrated, then fixed (a buffer), or
    trained from there (a parameter, after `make_range_trainable`).

    States: calibrating (collects statistics, passes x through unchanged), quantizing (the default once
    `amax` is set) or disabled. `amax` is saved in the state dict, so checkpoints restore it.
    """

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.register_buffer("amax", torch.tensor(float("nan")))
        self.enabled = True
        self._calibrator = None
        # Kept beside `amax` so forward never reads the tensor back (a device sync per quantizer on GPUs).
        self._calibrated = False

    def start_calibration(self, config) -> None:
        self._calibrator = make_calibrator(config)

    def finish_calibration(self) -> None:
        amax = self._calibrator.compute_amax() if self._calibrator is not None else None
        self._calibrator = None
        if amax is not None:
            self.amax.copy_(torch.clamp(amax, min=AMAX_FLOOR))
            self._calibrated = True

    def make_range_trainable(self) -> None:
        """Turn the calibrated `amax` buffer into a parameter (same state-dict key) that training updates."""
        if isinstance(self.amax, nn.Parameter):
            return
        value = self.amax.detach().clone()
        del self._buffers["amax"]
        self.amax = nn.Parameter(value)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._calibrated = bool(torch.isfinite(self.amax))  # a checkpoint's ranges count as calibrated

    @property
    def calibrated(self) -> bool:
        return self._calibrated

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._calibrator is not None:
            self._calibrator.collect(x)
            return x
        if not self.enabled or not self.calibrated:
            return x
        if self.amax.requires_grad and torch.is_grad_enabled() and not torch.jit.is_tracing():
            return learnable_fake_quant(x, self.amax)
        return fake_quant(x, self.amax)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, amax={float(self.amax):.4g}"


class WeightQuantizer(nn.Module):
    """Per-channel INT8 fake quant of a weight along its output-channel `axis`, ranged by max |w| each call.

    The range follows the weights as they train, so it is never stale; at export time it is computed from
    the final weights and folded into constant scales.
    """

    kind = "weight"

    def __init__(self, axis: int | None = 0, seven_bit: bool = False):
        super().__init__()
        self.axis = axis
        self.qmax = QMAX_7BIT if seven_bit else QMAX
        self.enabled = True

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        if self.axis is None:
            return fake_quant(weight, weight.detach().abs().amax(), qmax=self.qmax)
        dims = [d for d in range(weight.dim()) if d != self.axis % weight.dim()]
        return fake_quant(weight, weight.detach().abs().amax(dim=dims), axis=self.axis, qmax=self.qmax)

    def extra_repr(self) -> str:
        return f"axis={self.axis}, qmax={self.qmax}"
