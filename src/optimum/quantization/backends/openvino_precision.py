"""What the openvino backend stores for a static INT8 request: static INT8 (the default), INT8 weights, or measured.

`precision="int8"` (the default) stores static INT8 on every CPU, `"int8-weights"` INT8 weights with FP32 compute.
How much OpenVINO gains from INT8 depends on the CPU. With VNNI/AMX the CPU plugin runs static INT8 GEMMs on
dot-product kernels (2.95x over FP32 in our benchmark). Without them (AVX2 only) oneDNN's INT8 GEMMs fall back to its
legacy `jit_gemm_i8` kernels: on an AVX2 AMD EPYC, MiniLM QA at batch 4 x 128 ran static INT8 at 0.67x-0.80x and INT8
weights at 0.89x-0.96x of OpenVINO FP32 speed (benchmarks/results/openvino_squad_speed.md), so FP32 was the fastest;
there a static INT8 request warns once with that ratio (not when `precision="int8"` is passed explicitly). Asked
for explicitly, `precision="auto"` builds the three candidates, compiles each with the device and `ov_config` the
model will be loaded with, times them in turns on the calibration feeds, keeps the fastest and says which (a
warning, the recipe and the model card).
"""

from __future__ import annotations

import itertools
import statistics
from typing import Mapping, Sequence

import openvino as ov

from ..errors import ConfigError
from ..evaluation.benchmark import round_robin_ms

PRECISIONS = ("int8", "int8-weights", "auto")
DEFAULT_PRECISION = "int8"  # a static request stores static INT8 unless the caller asks for another form
# Static INT8's speed relative to OpenVINO FP32 on an AVX2-only CPU, two runs (AMD EPYC, MiniLM QA, batch 4 x 128).
NO_VNNI_INT8_SPEED = (0.67, 0.80)
# What precision="auto" builds and times; explicit precisions build only themselves.
CANDIDATES = ("int8", "int8-weights", "fp32")
TIMING_WARMUP = 2  # untimed inferences per candidate after compiling
TIMING_ROUNDS = 7  # round-robin rounds of one timed inference per candidate; each candidate's median counts
# Candidates within TIE_MARGIN of the fastest median count as equally fast, and the smallest file among them wins:
# so a quantized model beats FP32 on a tie, and between the two INT8 forms the smaller file is kept.
TIE_MARGIN = 0.05
# optimum-intel's OVModel compiles with this unless the user's ov_config sets it.
DEFAULT_OV_CONFIG = {"PERFORMANCE_HINT": "LATENCY"}
# What a static INT8 IR computes its non-INT8 parts in unless the caller's ov_config says otherwise. The CPU plugin
# picks bf16 on AMX/AVX512-BF16 CPUs, which adds its rounding to INT8's. Zen 4, fine-tuned MiniLM: SST-2 agreement
# 98.92 -> 99.00% and 98.94 -> 99.04% on two unseen sets, SQuAD same answer 89.55 -> 89.93%, for 1.017x the time
# at 1 x 128 (benchmarks/results/*openvino_f32_compute_zen4*).
INT8_COMPUTE = {"INFERENCE_PRECISION_HINT": "f32"}


def load_config(precision: str, ov_config: Mapping | None, device: str | None = None) -> dict | None:
    """The ov_config a model stored at `precision` compiles with on `device` (None: CPU): static INT8 on CPU computes
    in f32 unless told otherwise; anything else is left to OpenVINO (a GPU's default is f16, measured nowhere here)."""
    if precision != "int8" or str(device or "CPU").upper() != "CPU":
        return None if ov_config is None else dict(ov_config)
    return {**INT8_COMPUTE, **(ov_config or {})}


def fixed_precision(requested: str, accuracy_control: bool) -> tuple[str, str] | None:
    """(precision, why) when nothing is measured: an explicit precision, or accuracy control; None for "auto"."""
    if requested not in PRECISIONS:
        raise ConfigError(f"`precision` must be one of {PRECISIONS}, got {requested!r}.")
    if accuracy_control:
        return "int8", "accuracy control needs static INT8 (nncf.quantize_with_accuracy_control)"
    if requested != "auto":
        return requested, "requested"
    return None


def notice(precision: Mapping, has_vnni: bool, explicit: bool = False) -> str | None:
    """The one line to warn with about what a static request stored (`details["precision"]`), or None.

    A measured choice (`precision="auto"`) is always announced, with static INT8's measured speed against FP32. Static
    INT8 built without measuring on a CPU without VNNI gets its expected speed against FP32, unless the caller chose
    it with an explicit `precision="int8"` (`explicit`)."""
    if precision.get("requested") == "auto":
        ms = precision["measured_ms"]
        return (f'OpenVINO precision="auto" stored {precision["chosen"]}; static INT8 ran at '
                f'{ms["fp32"] / ms["int8"]:.2f}x of FP32 speed here: {precision["reason"]}.')
    if precision.get("chosen") != "int8" or has_vnni or (explicit and precision.get("reason") == "requested"):
        return None
    low, high = NO_VNNI_INT8_SPEED
    line = (f"Static INT8 on this CPU (no VNNI) likely runs slower than FP32: {low:.2f}x-{high:.2f}x of OpenVINO FP32 "
            "speed in our AVX2 benchmark (MiniLM QA, batch 4 x 128)")
    if precision.get("reason") != "requested":  # e.g. accuracy control, which needs static INT8
        return f"{line}; {precision['reason']}."
    return (f"{line}; pass precision='auto' to time static INT8, INT8 weights and FP32 here and keep the fastest, "
            "or precision='int8' to keep static INT8 without this warning.")


def compile_settings(load_kwargs: Mapping) -> tuple[str, dict]:
    """The device and ov_config the model will be loaded with (optimum-intel's defaults where not given)."""
    device = str(load_kwargs.get("device") or "CPU").upper()
    return device, {**DEFAULT_OV_CONFIG, **(load_kwargs.get("ov_config") or {})}


def time_candidates(
    models: Mapping[str, ov.Model], feeds: Sequence[dict], device: str, ov_config: dict
) -> dict[str, float]:
    """Median milliseconds per inference of each model, compiled as it will be loaded, on the calibration feeds.

    Every candidate sees the same feed in the same round (each cycles through `feeds` from the start). The state
    of stateful decoders is reset before each inference, so every call is a prefill of the same length."""
    core = ov.Core()
    calls = {}
    for name, model in models.items():
        request = core.compile_model(model, device, load_config(name, ov_config, device)).create_infer_request()
        calls[name] = _inference(request, itertools.cycle(feeds))
    times = round_robin_ms(calls, TIMING_ROUNDS, TIMING_WARMUP)
    return {name: statistics.median(ms) for name, ms in times.items()}


def _inference(request: ov.InferRequest, feeds):
    def call():
        request.reset_state()
        request.infer(next(feeds), share_inputs=True, share_outputs=True)

    return call


def inference_precision(model) -> str | None:
    """The precision a loaded optimum-intel model's compiled OpenVINO model computes in (e.g. "bf16"), or None.

    optimum-intel keeps a `CompiledModel` in `request` (encoders) or `compiled_model` (decoders)."""
    compiled = getattr(model, "compiled_model", None) or getattr(model, "request", None)
    if isinstance(compiled, ov.InferRequest):
        compiled = compiled.get_compiled_model()
    if not isinstance(compiled, ov.CompiledModel):
        return None
    return str(compiled.get_property("INFERENCE_PRECISION_HINT").to_string())


def choose_by_measurement(
    models: Mapping[str, ov.Model], feeds: Sequence[dict], sizes: Mapping[str, int], load_kwargs: Mapping,
    isa: Sequence[str],
) -> dict:
    """Time the candidates as they will be loaded and pick one: the recipe's `details["precision"]`."""
    device, ov_config = compile_settings(load_kwargs)
    ms = time_candidates(models, feeds, device, ov_config)
    chosen, why = pick_fastest(ms, sizes)
    return {
        "requested": "auto",
        "chosen": chosen,
        "reason": why,
        "measured_ms": {name: round(value, 3) for name, value in ms.items()},
        "size_bytes": dict(sizes),
        "isa": list(isa),
        "timing": {
            "device": device,
            "ov_config": {  # as each candidate was compiled
                name: {key: str(value) for key, value in (load_config(name, ov_config, device) or {}).items()}
                for name in models
            },
            "input_shape": list(feeds[0]["input_ids"].shape),
            "warmup": TIMING_WARMUP,
            "rounds": TIMING_ROUNDS,
            "statistic": "median",
            "tie_margin": TIE_MARGIN,
        },
    }


def pick_fastest(ms: Mapping[str, float], sizes: Mapping[str, int]) -> tuple[str, str]:
    """(precision, why): the fastest median; within TIE_MARGIN of it, the smallest file."""
    fastest = min(ms, key=ms.get)
    tied = [name for name in ms if ms[name] <= ms[fastest] * (1 + TIE_MARGIN)]
    chosen = min(tied, key=lambda name: (sizes[name], CANDIDATES.index(name)))
    measured = ", ".join(f"{name} {ms[name]:.2f} ms" for name in sorted(ms, key=ms.get))
    if chosen == fastest:
        why = f"measured fastest here ({measured}; median of {TIMING_ROUNDS} round-robin inferences)"
    else:
        why = (f"within {100 * TIE_MARGIN:.0f}% of the fastest ({fastest}) and the smallest file among those "
               f"({measured}; median of {TIMING_ROUNDS} round-robin inferences)")
    if chosen == "fp32":
        why += f": no INT8 form came within {100 * TIE_MARGIN:.0f}% of it, so the FP32 IR is stored"
    return chosen, why
