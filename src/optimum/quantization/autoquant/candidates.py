"""The configs the search tries, per backend, with the speed order measured for them: data and one filter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ..configuration import AutoQuantConfig, DynamicQuantConfig, QuantConfig, StaticQuantConfig, WeightOnlyQuantConfig
from ..errors import unknown_name
from ..hardware import cpu_info


@dataclass(frozen=True)
class Candidate:
    name: str
    backend: str
    config: QuantConfig
    # Expected speed, 0 fastest: the order measured on CPUs (shared FACTS, benchmarks/RESULTS.md). It decides
    # between candidates whose measured latencies differ by less than the search's `latency_noise`.
    speed_rank: int
    # Backend options of from_pretrained besides the config, e.g. OpenVINO's {"precision": "int8"}.
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def needs_calibration(self) -> bool:
        return self.config.requires_calibration


def _ort_candidates() -> list[Candidate]:
    ladder = [
        # Fused graph + dynamic INT8: 1.6-2.0x over ORT FP32 on AVX2, the fastest recipe measured (the default).
        Candidate("dynamic", "onnxruntime", DynamicQuantConfig(), 0),
        # Static QOperator: 1.3-1.6x on AVX2; per-channel first (finer weight scales), per-tensor as in the issue.
        Candidate("static-per-channel", "onnxruntime", StaticQuantConfig(format="qoperator"), 1),
        Candidate("static-per-tensor", "onnxruntime", StaticQuantConfig(format="qoperator", per_channel=False), 1),
        # Static Q/DQ (our "static" preset): ORT leaves s8/s8 pairs mostly unfused on AVX2, the slowest INT8.
        Candidate("static-qdq", "onnxruntime", StaticQuantConfig(), 2),
    ]
    if not cpu_info().has_vnni:
        # Without VNNI "auto" means 7-bit weights; 8-bit weights ran the same kernels and lost less SQuAD F1
        # on MiniLM (benchmarks/results/squad_dynamic_ablation.md). On VNNI CPUs it equals "dynamic".
        ladder.insert(1, Candidate("dynamic-full-range", "onnxruntime", DynamicQuantConfig(reduce_range=False), 0))
    return ladder


def _openvino_candidates() -> list[Candidate]:
    vnni = cpu_info().has_vnni
    return [
        # NNCF static INT8, forced: precision="auto" would time FP32 and INT8 weights inside the trial, which the
        # search does itself. With VNNI (Zen 5, 1 x 128) it beat ORT dynamic INT8 in bursts of calls, as the search
        # times (BERT-base 17.15 vs 19.19 ms, MiniLM 2.90 vs 3.43), but not after idle gaps on MiniLM (4.58 vs
        # 4.10); without VNNI it ran at 0.67x of OpenVINO FP32's speed, the slowest form measured
        # (benchmarks/RESULTS.md, "Call pattern").
        Candidate("openvino-static", "openvino", StaticQuantConfig(), 1 if vnni else 4, {"precision": "int8"}),
        # INT8 weights, float compute: no calibration needed; 0.89x of FP32's speed on an AVX2-only CPU.
        Candidate("openvino-int8-weights", "openvino", WeightOnlyQuantConfig(bits=8), 3 if vnni else 4),
    ]


# Backend name -> its candidates, fastest first. A backend registered later adds its own list here.
CANDIDATE_TABLE = {
    "onnxruntime": _ort_candidates,
    "openvino": _openvino_candidates,
    "torch": lambda: [Candidate("torch-dynamic", "torch", DynamicQuantConfig(), 3)],
}


def candidates_for(config: AutoQuantConfig, has_calibration: bool) -> tuple[list[Candidate], list[tuple[Candidate, str]]]:
    """(candidates to try, fastest expected first; (candidate, reason) pairs left out)."""
    for backend in config.backends:
        if backend not in CANDIDATE_TABLE:
            raise unknown_name("backend with auto-quantization candidates", backend, CANDIDATE_TABLE)
    every = [c for backend in config.backends for c in CANDIDATE_TABLE[backend]()]
    if config.candidates is not None:
        known = {c.name for c in every}
        for name in config.candidates:
            if name not in known:
                raise unknown_name("auto-quantization candidate", name, known)
        every = [c for c in every if c.name in config.candidates]
    chosen, skipped = [], []
    for candidate in every:
        if candidate.needs_calibration and not has_calibration:
            skipped.append((candidate, "static quantization needs `calibration_dataset=`: not tried"))
        else:
            chosen.append(candidate)
    chosen.sort(key=lambda c: c.speed_rank)  # stable: equal ranks keep the table's order
    return chosen, skipped
