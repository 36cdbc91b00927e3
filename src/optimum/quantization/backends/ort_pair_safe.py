"""8-bit weights that ONNX Runtime's AVX2 integer GEMMs cannot saturate ("pair-safe" weight range).

Without VNNI, MLAS multiplies u8 activations by s8 weights with `vpmaddubsw`, which adds the two products of
each adjacent pair of rows (k, k+1) into a *saturating* int16 before widening to int32. A pair of same-sign
weights whose magnitudes sum past 128 can then overflow (255 x 129 > 32767) and the result is silently
clipped: the reason `reduce_range` (7-bit weights, |q| <= 63) exists. 7-bit weights halve every channel's
resolution to rule out a rare event. Here each output channel instead gets the smallest scale at which no
adjacent same-sign pair of its quantized weights sums past 128 (and no weight past 127): on real BERT-style
layers that is ~1.2-1.3x the 8-bit scale instead of 2x, and it is exact for every u8 input (checked in the
tests with all-255 activations).

Applied after `onnxruntime.quantization.quantize_dynamic(reduce_range=False, per_channel=True)`: every int8
weight initializer `W_quantized` of an integer GEMM (MatMulInteger, QAttention) is requantized (from the FP32
`W` of the source graph where it is the same tensor) with its `W_scale` updated; zero points stay 0.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

# Largest |q_k| + |q_k+1| of a same-sign pair that cannot overflow int16 with u8 inputs: 255 * 128 = 32640.
PAIR_LIMIT = 128
QMAX = 127
# Integer GEMMs that MLAS runs on its u8 x s8 kernels, and the input index of their weight.
GEMM_WEIGHT_INPUTS = {"MatMulInteger": 1, "QAttention": 1}


def same_sign_pair_sums(values: np.ndarray) -> np.ndarray:
    """|v_k| + |v_k+1| for each adjacent row pair (k even) of a [K, N] array where both have the same sign, else 0;
    an odd last row is paired with zero (as the kernel pads K). Shape [ceil(K / 2), N]."""
    if values.shape[0] % 2:
        values = np.concatenate([values, np.zeros((1, values.shape[1]), values.dtype)])
    even, odd = values[0::2], values[1::2]
    return np.where(np.sign(even) * np.sign(odd) > 0, np.abs(even) + np.abs(odd), 0)


def worst_pair_sums(q: np.ndarray) -> np.ndarray:
    """Per output channel (column of a [K, N] weight): the largest magnitude the kernel's int16 pair sum can
    reach over u8 inputs, in units of 255 (same-sign pairs add; otherwise the larger weight alone counts)."""
    q = q.astype(np.int32)
    return np.maximum(same_sign_pair_sums(q).max(axis=0), np.abs(q).max(axis=0))


def pair_safe_quantize(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weight, per-column scale) for a float [K, N] weight, with no same-sign adjacent pair past PAIR_LIMIT."""
    weight = weight.astype(np.float32)
    scale = np.maximum(np.abs(weight).max(axis=0) / QMAX, same_sign_pair_sums(weight).max(axis=0) / PAIR_LIMIT)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(weight / scale), -QMAX, QMAX).astype(np.int32)
    _fix_rounding_overflow(q)
    return q.astype(np.int8), scale


def _fix_rounding_overflow(q: np.ndarray) -> None:
    """Rounding two values up can push a pair sum to PAIR_LIMIT + 1: shave the larger magnitude by one."""
    rows = q.shape[0] - q.shape[0] % 2  # an odd last row pairs with zero and cannot be over
    over = same_sign_pair_sums(q[:rows]) > PAIR_LIMIT
    if not over.any():
        return
    even, odd = q[0:rows:2], q[1:rows:2]  # views: the shaving below edits q
    shave_even = over & (np.abs(even) >= np.abs(odd))
    shave_odd = over & ~shave_even
    even -= np.sign(even) * shave_even
    odd -= np.sign(odd) * shave_odd


def make_pair_safe(quantized: onnx.ModelProto, source: onnx.ModelProto) -> dict:
    """Requantize, in place, every per-channel int8 GEMM weight of `quantized` to the pair-safe range.

    The FP32 weight of `source` is used where it is the same tensor (same shape, and ORT's 8-bit values round
    to it); otherwise (e.g. a Gemm whose weight ORT transposed into a MatMul) ORT's own 8-bit weight,
    dequantized. Returns what the recipe records: how many weights were requantized and their mean scale
    relative to plain 8-bit (1.0 = full 8-bit resolution, 2.0 = what 7-bit `reduce_range` costs)."""
    fp32 = {init.name: init for init in source.graph.initializer}
    inits = {init.name: init for init in quantized.graph.initializer}
    ratios: dict[str, float] = {}
    for node in quantized.graph.node:
        index = GEMM_WEIGHT_INPUTS.get(node.op_type)
        name = node.input[index] if index is not None and len(node.input) > index else None
        if name is None or name in ratios or not name.endswith("_quantized") or name not in inits:
            continue
        base = name[: -len("_quantized")]
        old_q = numpy_helper.to_array(inits[name])
        old_scale = numpy_helper.to_array(inits[f"{base}_scale"]) if f"{base}_scale" in inits else None
        zero_point = inits.get(f"{base}_zero_point")
        if old_q.ndim != 2 or old_scale is None or old_scale.shape != (old_q.shape[1],) or (
            zero_point is not None and numpy_helper.to_array(zero_point).any()
        ):
            raise ValueError(f"{name} is not a symmetric per-channel [K, N] int8 weight: cannot make it pair-safe.")
        weight = old_q.astype(np.float32) * old_scale
        if base in fp32:
            original = numpy_helper.to_array(fp32[base])
            if original.shape == weight.shape and np.all(np.abs(original - weight) <= 0.51 * old_scale):
                weight = original
        q, scale = pair_safe_quantize(weight)
        inits[name].CopyFrom(numpy_helper.from_array(q, name))
        inits[f"{base}_scale"].CopyFrom(numpy_helper.from_array(scale.astype(old_scale.dtype), f"{base}_scale"))
        ratios[name] = float(np.mean(scale * QMAX / np.maximum(np.abs(weight).max(axis=0), 1e-30)))
    return {
        "pair_safe_weights": len(ratios),
        "pair_safe_mean_scale_vs_8bit": round(float(np.mean(list(ratios.values()))), 4) if ratios else None,
    }
