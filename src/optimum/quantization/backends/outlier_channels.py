"""Which input channels of the FFN's second GEMM to keep out of INT8, and what the recipe records about them.

INT8 activations share one scale per tensor (dynamic: per batch; static: from calibration). In the first layers of
fine-tuned MiniLM the GELU output that feeds the FFN's second GEMM has one or two channels whose value on the [CLS]
token is 2-4x the largest value anywhere else (24 against 6 in layer 0), so that scale leaves every other value a
quarter of its levels; on SQuAD those GEMMs caused most of dynamic INT8's error (benchmarks/RESULTS.md). SmoothQuant
cannot move such a channel into the weight, because GELU sits between the two GEMMs.

Channel j of `GEMM2(act(GEMM1(x) + b))` depends only on W1's weights for j, b_j and W2's weights for j. So each
outlier channel can leave the INT8 path and be computed by a small float side path, `act(x W1[J] + b[J]) W2[J]`,
added to the GEMM's output: the float graph computes the same function, and the INT8 GEMM quantizes a tensor whose
largest value is the typical one. The graph rewrites are per runtime (ort_outlier_channels.py for ONNX,
ov_outlier_channels.py for OpenVINO); the choice of channels is shared, here.
"""

from __future__ import annotations

import numpy as np

# At most this many channels per GEMM leave it, so the side path stays a sliver of the GEMM's work.
MAX_CHANNELS = 8
REFERENCE_PERCENTILE = 99.0


def outlier_channels(channel_amax: np.ndarray, ratio: float) -> list[int]:
    """Channels whose largest value is more than `ratio` times the tensor's 99th-percentile channel maximum, largest
    first, at most `MAX_CHANNELS`."""
    reference = float(np.percentile(channel_amax, REFERENCE_PERCENTILE))
    order = np.argsort(-channel_amax, kind="stable")[:MAX_CHANNELS]
    return [int(j) for j in order if channel_amax[j] > ratio * reference]


def split_record(channel_amax: np.ndarray, channels: list[int]) -> dict:
    """What the recipe keeps for one split GEMM: the channels, their largest values, and the largest value left."""
    kept = np.setdiff1d(np.arange(channel_amax.size), channels)
    return {
        "channels": channels,
        "channel_max": [round(float(channel_amax[j]), 3) for j in channels],
        "largest_left": round(float(channel_amax[kept].max()), 3),
    }
