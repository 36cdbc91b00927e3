"""Insert the TensorRT fake-quant recipe into any transformers encoder/decoder, calibrate it, count it.

What is quantized, and how it is found without naming one architecture:
- linear layers (`nn.Linear`, GPT-2's `Conv1D`): per-tensor input, per-channel weight (output-channel axis).
  The instance's class is swapped for a quantizing subclass, so state-dict keys stay those of the model.
- attention matmuls: the innermost module whose class name ends in "Attention" (BertSelfAttention,
  MultiHeadSelfAttention, GPT2Attention, ...). While it runs, a `TorchFunctionMode` intercepts its products
  of two activations: the first (Q·Kᵀ) gets the q/k quantizers, the second (P·V) the a/v quantizers, and
  `scaled_dot_product_attention` is computed as those two products with all four. Nothing is patched.
- residual adds: in modules that own a LayerNorm/RMSNorm child and no embedding (BertSelfOutput, BertOutput,
  DistilBERT's TransformerBlock, GPT2Block, ...), each add of two same-shaped activations it performs itself
  (not inside a child) gets one quantizer per input.
Quantizers at attention matmuls and residual adds are created on the first calibration pass, when the sites
are seen; modules matching an exclusion pattern are left in FP32.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..backends.base import check_patterns_used, matches_any
from ..configuration import QATConfig
from ..errors import ConfigError, UnsupportedModelError
from ..hardware import resolve_reduce_range
from ..presets import ATTENTION_CLASS_SUFFIX, NORM_CLASS_SUFFIXES
from .fake_quant import ActivationQuantizer, WeightQuantizer

KINDS = ("linear_input", "weight", "matmul_input", "residual_add")
MATMUL_QUANTIZERS = (("matmul_q_quantizer", "matmul_k_quantizer"), ("matmul_a_quantizer", "matmul_v_quantizer"))
_MATMULS = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.Tensor.bmm}
_ADDS = {torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__radd__}
# Kept at import: exporters (optimum's ModelPatcher) swap the module attribute for a wrapper during export.
_SDPA = F.scaled_dot_product_attention


# --------------------------------------------------------------------------------------------- linear layers


class QuantLinear(nn.Linear):
    """An `nn.Linear` whose input and weight pass through fake quant (instances are converted, never built)."""

    def forward(self, x):
        return F.linear(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)


def _conv1d_class():
    from transformers.pytorch_utils import Conv1D

    class QuantConv1D(Conv1D):
        """GPT-2's `Conv1D` (weight stored in x out) with fake quant on its input and per-output-channel weight."""

        def forward(self, x):
            x = self.input_quantizer(x)
            out = torch.addmm(self.bias, x.reshape(-1, x.size(-1)), self.weight_quantizer(self.weight))
            return out.reshape(*x.shape[:-1], self.nf)

    return Conv1D, QuantConv1D


@functools.lru_cache(maxsize=1)
def _linear_types() -> dict[type, tuple[type, int]]:
    """Exact module type -> (quantizing subclass, output-channel axis of its weight)."""
    conv1d, quant_conv1d = _conv1d_class()
    return {nn.Linear: (QuantLinear, 0), conv1d: (quant_conv1d, 1)}


# --------------------------------------------------------------------------------------------- op sites


def _is_activation(value) -> bool:
    return isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter) and value.is_floating_point()


class _SiteMode(TorchFunctionMode):
    """Routes the intercepted ops of one host module to its site handler."""

    def __init__(self, site: "_Site"):
        super().__init__()
        self.site = site

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.site.paused == 0:
            result = self.site.handle(func, args, kwargs)
            if result is not NotImplemented:
                return result
        return func(*args, **kwargs)


class _Site:
    """Hooks on a host module: a function mode while it runs, paused while its direct children run."""

    def __init__(self, host: nn.Module, config: QATConfig):
        self.host, self.config = host, config
        self.paused = 0
        self.calls = 0
        self.discovering = True
        self._modes: list[_SiteMode] = []
        self.handles = [
            host.register_forward_pre_hook(self._enter),
            host.register_forward_hook(self._exit, always_call=True),
        ]
        for child in host.children():
            if not isinstance(child, (ActivationQuantizer, WeightQuantizer)):
                self.handles.append(child.register_forward_pre_hook(self._pause))
                self.handles.append(child.register_forward_hook(self._resume, always_call=True))

    def _enter(self, module, args):
        self.calls = 0
        mode = _SiteMode(self)
        mode.__enter__()
        self._modes.append(mode)

    def _exit(self, module, args, output):
        self._modes.pop().__exit__(None, None, None)

    def _pause(self, module, args):
        self.paused += 1

    def _resume(self, module, args, output):
        self.paused -= 1

    def _quantizer(self, name: str, kind: str, device) -> ActivationQuantizer | None:
        quantizer = getattr(self.host, name, None)
        if quantizer is None and self.discovering:
            quantizer = ActivationQuantizer(kind).to(device)
            self.host.add_module(name, quantizer)
            if self.calibrating:
                quantizer.start_calibration(self.config)
        return quantizer

    calibrating = False

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class _AttentionSite(_Site):
    def handle(self, func, args, kwargs):
        if func is _SDPA:
            return self._attention(*args, **kwargs)
        if func in _MATMULS and len(args) == 2 and all(_is_activation(a) for a in args):
            if self.calls >= len(MATMUL_QUANTIZERS):
                return NotImplemented
            names = MATMUL_QUANTIZERS[self.calls]
            self.calls += 1
            quantized = [self._apply(name, arg) for name, arg in zip(names, args)]
            return func(*quantized)
        return NotImplemented

    def _apply(self, name: str, x: torch.Tensor) -> torch.Tensor:
        quantizer = self._quantizer(name, "matmul_input", x.device)
        return x if quantizer is None else quantizer(x)

    def _attention(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                   enable_gqa=False):
        """`scaled_dot_product_attention` as its two matmuls, each with quantized inputs (same math)."""
        if enable_gqa and key.size(-3) != query.size(-3):
            key = key.repeat_interleave(query.size(-3) // key.size(-3), -3)
            value = value.repeat_interleave(query.size(-3) // value.size(-3), -3)
        scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
        (q_name, k_name), (a_name, v_name) = MATMUL_QUANTIZERS
        scores = torch.matmul(self._apply(q_name, query), self._apply(k_name, key).transpose(-2, -1)) * scale
        if is_causal:
            causal = torch.ones(query.size(-2), key.size(-2), dtype=torch.bool, device=query.device).tril()
            scores = scores.masked_fill(~causal, float("-inf"))
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
        probs = torch.softmax(scores, dim=-1)
        if dropout_p > 0.0:
            probs = F.dropout(probs, p=dropout_p, training=True)
        self.calls = len(MATMUL_QUANTIZERS)
        return torch.matmul(self._apply(a_name, probs), self._apply(v_name, value))


class _ResidualSite(_Site):
    def handle(self, func, args, kwargs):
        if func not in _ADDS or kwargs or len(args) != 2 or not all(_is_activation(a) for a in args):
            return NotImplemented
        if args[0].shape != args[1].shape or args[0].dim() < 2:
            return NotImplemented
        index = self.calls
        self.calls += 1
        quantized = []
        for side, arg in enumerate(args):
            name = f"residual_add{index}_input{side}_quantizer"
            quantizer = self._quantizer(name, "residual_add", arg.device)
            quantized.append(arg if quantizer is None else quantizer(arg))
        return func(*quantized)


def _class_name(module: nn.Module) -> str:
    return type(module).__name__


def _attention_hosts(model: nn.Module) -> list[tuple[str, nn.Module]]:
    hosts = []
    for name, module in model.named_modules():
        if not _class_name(module).endswith(ATTENTION_CLASS_SUFFIX):
            continue
        inner = [m for n, m in module.named_modules() if n and _class_name(m).endswith(ATTENTION_CLASS_SUFFIX)]
        if not inner:
            hosts.append((name, module))
    return hosts


def _residual_hosts(model: nn.Module) -> list[tuple[str, nn.Module]]:
    hosts = []
    for name, module in model.named_modules():
        has_norm = any(isinstance(c, nn.LayerNorm) or _class_name(c).endswith(NORM_CLASS_SUFFIXES) for c in module.children())
        has_embedding = any(isinstance(m, nn.Embedding) for m in module.modules())
        if has_norm and not has_embedding:
            hosts.append((name, module))
    return hosts


# --------------------------------------------------------------------------------------------- prepare


class QATState:
    """What `prepare` did to a model: the sites it hooks and the calibration state. Kept on `model.qat_state`."""

    def __init__(self, config: QATConfig):
        self.config = config
        self.sites: list[_Site] = []
        self.calibrated = False
        self.seven_bit_weights = False


def is_prepared(model: nn.Module) -> bool:
    return getattr(model, "qat_state", None) is not None


def prepare(model: nn.Module, config: QATConfig, forward_loop: Callable[[nn.Module], None]) -> nn.Module:
    """Insert fake quant into `model` in place, calibrate it with `forward_loop(model)`, return the model.

    `forward_loop` runs the model on a few representative batches (the trainer uses its own training data).
    """
    if config.method != "fake_quant":
        raise ConfigError(f"prepare() inserts the fake_quant recipe; method {config.method!r} goes through qat.nncf.")
    if is_prepared(model):
        raise ConfigError("This model already holds fake quantizers: prepare it once.")
    patterns = config.exclusion_patterns()
    used: set[str] = set()
    state = QATState(config)

    def excluded(name: str) -> bool:
        pattern = matches_any(name, patterns)
        if pattern:
            used.add(pattern)
        return pattern is not None

    seven_bit = resolve_reduce_range(config.reduce_range)
    state.seven_bit_weights = seven_bit
    types = _linear_types()
    for name, module in list(model.named_modules()):
        if type(module) in types and not excluded(name):
            quant_class, axis = types[type(module)]
            module.__class__ = quant_class
            module.input_quantizer = ActivationQuantizer("linear_input").to(module.weight.device)
            module.weight_quantizer = WeightQuantizer(axis if config.per_channel else None, seven_bit)
    if config.quantize_matmul_inputs:
        state.sites += [_AttentionSite(m, config) for n, m in _attention_hosts(model) if not excluded(n)]
    if config.residual_adds_quantized:
        state.sites += [_ResidualSite(m, config) for n, m in _residual_hosts(model) if not excluded(n)]
    check_patterns_used(config.exclude, used, "module")
    model.qat_state = state
    counts = calibrate(model, forward_loop)
    if not counts.get("linear_input"):
        raise UnsupportedModelError(f"No linear layer of {type(model).__name__} could be quantized: {counts}.")
    if config.learn_ranges:
        for _, quantizer in quantizers(model):
            if isinstance(quantizer, ActivationQuantizer):
                quantizer.make_range_trainable()
    return model


def calibrate(model: nn.Module, forward_loop: Callable[[nn.Module], None]) -> dict[str, int]:
    """Measure every activation range with `forward_loop(model)`; sites seen for the first time get quantizers."""
    state = model.qat_state
    quantizers = [m for m in model.modules() if isinstance(m, ActivationQuantizer)]
    for quantizer in quantizers:
        quantizer.start_calibration(state.config)
    for site in state.sites:
        site.calibrating, site.discovering = True, not state.calibrated
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            forward_loop(model)
    finally:
        model.train(was_training)
        for site in state.sites:
            site.calibrating = site.discovering = False
        for quantizer in model.modules():
            if isinstance(quantizer, ActivationQuantizer):
                quantizer.finish_calibration()
    state.calibrated = True
    idle = [s for s in state.sites if not any(isinstance(c, ActivationQuantizer) for c in s.host.children())]
    for site in idle:  # hosts that never computed a quantizable op: unhook them
        site.remove()
        state.sites.remove(site)
    return quantizer_counts(model)


def forward_loop_from_batches(batches: Iterable[dict]) -> Callable[[nn.Module], None]:
    """A `forward_loop` that runs the model on tokenized batches (dicts of tensors; labels are ignored)."""

    def loop(model: nn.Module) -> None:
        device = next(model.parameters()).device
        for batch in batches:
            inputs = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor) and k not in LABEL_KEYS}
            model(**inputs)

    return loop


# Batch keys that are targets, not model inputs: calibration runs the model without them.
LABEL_KEYS = frozenset({"labels", "label", "label_ids", "start_positions", "end_positions"})


# --------------------------------------------------------------------------------------------- inspection


def quantizers(model: nn.Module):
    """(module name, quantizer) for every fake quantizer in the model."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (ActivationQuantizer, WeightQuantizer))]


def quantizer_counts(model: nn.Module) -> dict[str, int]:
    """Quantizers per kind: linear_input, weight, matmul_input, residual_add."""
    return dict(Counter(q.kind for _, q in quantizers(model)))


def uncalibrated(model: nn.Module) -> list[str]:
    return [n for n, q in quantizers(model) if isinstance(q, ActivationQuantizer) and not q.calibrated]


def set_quantization_enabled(model: nn.Module, enabled: bool) -> None:
    """Switch every fake quantizer on or off (off: the model computes in FP32 again)."""
    for _, quantizer in quantizers(model):
        quantizer.enabled = enabled
