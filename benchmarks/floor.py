"""The physical floor of BERT-base on this CPU, measured: peak multiply-add rates, and where each variant's time goes.

    cd benchmarks && ../.venv/bin/python floor.py --variants ort-fp32-fused ort-int8-dynamic optimum-avx512_vnni \
        ov-int8-nncf optimum-intel-int8 --name floor_zen4

A VM does not show its clock, so a floor computed from datasheet widths ("16 FP32 MACs per core per cycle") needs a
guess at the frequency. This script measures the peak instead:

1. Peak: `cpu_peak.c` (compiled with gcc) runs each multiply-add instruction the CPU has (FP32 FMA, u8 x s8 with
   AVX2's `vpmaddubsw` pair, AVX512-VNNI / AVX-VNNI `vpdpbusd`, AVX512-BF16 `vdpbf16ps`) in 12 independent chains on
   1 and on `--threads` threads, and reports multiply-adds per second. AMX tiles are not measured: on an AMX Xeon
   the INT8 and bf16 peaks are higher than these, and the floor this script reports is not the lowest there.
2. Latency: builds the variants (BERT-base shape, random init, as `paired_latency.py`), loads each with its own loader
   and times them in turns in one process.
3. Profile: a clone of each loaded model with the same settings plus the runtime's profiler (ONNX Runtime's
   `enable_profiling`, OpenVINO's `PERF_COUNT`) gives the time per operator type.

The report gives each variant's p50, its multiply-adds per second over the whole model (11.2 GMAC per prediction at
batch 1 x 128) as a share of the FP32 and INT8 peaks, and its five costliest operator types.
Writes benchmarks/results/NAME.{json,md}.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bert_base_speed import bert_base_checkpoint

from optimum.quantization.evaluation.benchmark import round_robin_ms, synthetic_inputs
from optimum.quantization.evaluation.report import machine_line, write_reports
from optimum.quantization.hardware import cpu_info
from optimum.quantization.recipe import library_versions
from optimum.quantization.side_by_side import build_all, machine_record
from optimum.quantization.variants import load_variant, parse_variants

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TASK = "text-classification"
# cpu_peak.c kernel -> the /proc/cpuinfo flag it needs, and what it stands for.
PEAK_KERNELS = {
    "fp32_fma_ymm": ("fma", "FP32 FMA, 256-bit"),
    "fp32_fma_zmm": ("avx512f", "FP32 FMA, 512-bit"),
    "int8_avx2_ymm": ("avx2", "u8 x s8, AVX2 vpmaddubsw + vpmaddwd (no VNNI)"),
    "int8_avxvnni_ymm": ("avx_vnni", "u8 x s8, AVX-VNNI vpdpbusd, 256-bit"),
    "int8_vnni_zmm": ("avx512_vnni", "u8 x s8, AVX512-VNNI vpdpbusd, 512-bit"),
    "bf16_dot_zmm": ("avx512_bf16", "bf16, AVX512-BF16 vdpbf16ps, 512-bit"),
}
FP32_KERNELS = ("fp32_fma_ymm", "fp32_fma_zmm")
INT8_KERNELS = ("int8_avx2_ymm", "int8_avxvnni_ymm", "int8_vnni_zmm")


def bert_macs(config, sequence_length: int, batch_size: int = 1) -> int:
    """Multiply-adds of one forward pass: the dense layers plus attention's two products (embeddings and the
    pooler/classifier head are negligible at this size)."""
    hidden, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    dense = 4 * hidden * hidden + 2 * hidden * inner
    attention = 2 * sequence_length * hidden
    return batch_size * layers * sequence_length * (dense + attention)


def measure_peaks(threads: int, seconds: float) -> dict:
    """Multiply-adds per second of each kernel the CPU supports, on 1 and on `threads` threads."""
    if shutil.which("gcc") is None:
        raise SystemExit("floor.py compiles cpu_peak.c and needs gcc on PATH.")
    flags = set(cpu_info().isa)
    peaks = {}
    with tempfile.TemporaryDirectory(prefix="cpu-peak-") as tmp:
        binary = Path(tmp) / "cpu_peak"
        subprocess.run(["gcc", "-O2", "-pthread", "-o", str(binary), str(HERE / "cpu_peak.c")], check=True)
        for kernel, (flag, meaning) in PEAK_KERNELS.items():
            if flag not in flags:
                continue
            rates = {str(n): float(subprocess.run([str(binary), kernel, str(n), str(seconds)], check=True,
                                                  capture_output=True, text=True).stdout)
                     for n in sorted({1, threads})}
            peaks[kernel] = {"meaning": meaning, "macs_per_s": rates}
    return peaks


def best_peak(peaks: dict, kernels, threads: int) -> float | None:
    rates = [peaks[k]["macs_per_s"][str(threads)] for k in kernels if k in peaks]
    return max(rates) if rates else None


def profiled_clone(model):
    """(kind, runner) for a loaded model: a second session/compiled model with the loaded one's settings and the
    runtime's profiler on, or None for a runtime without one here (PyTorch). Only public attributes are read:
    `session` and its options on ONNX Runtime, `model` and `ov_config` on optimum-intel's OpenVINO models."""
    if hasattr(model, "session"):
        import onnxruntime

        options = model.session.get_session_options()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="ort-profile-")) / "profile")
        return "onnxruntime", onnxruntime.InferenceSession(str(model.path), options,
                                                           providers=model.session.get_providers())
    if hasattr(model, "ov_config") and hasattr(model, "request"):
        import openvino

        compiled = openvino.Core().compile_model(model.model, "CPU", {**(model.ov_config or {}), "PERF_COUNT": "YES"})
        return "openvino", compiled.create_infer_request()
    return None


def profile_ops(kind: str, runner, inputs: dict, calls: int) -> dict[str, float]:
    """Milliseconds per call spent in each operator type, averaged over `calls` calls after 5 warm-up calls."""
    feeds = {name: value.numpy() for name, value in inputs.items()}
    totals: dict[str, float] = collections.defaultdict(float)
    if kind == "onnxruntime":
        feeds = {i.name: feeds[i.name] for i in runner.get_inputs()}
        for _ in range(5 + calls):
            runner.run(None, feeds)
        trace = Path(runner.end_profiling())
        events = [e for e in json.loads(trace.read_text()) if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
        shutil.rmtree(trace.parent, ignore_errors=True)
        for event in events:
            totals[event["args"]["op_name"]] += event["dur"] / 1000
        total_calls = 5 + calls  # ONNX Runtime's trace holds every call since the session started
    else:
        feeds = {name: feeds[name] for name in (p.get_any_name() for p in runner.model_inputs)}
        for _ in range(5):
            runner.infer(feeds)
        for _ in range(calls):
            runner.infer(feeds)
            for info in runner.profiling_info:
                if info.status == info.Status.EXECUTED:
                    totals[info.node_type] += info.real_time.total_seconds() * 1000
        total_calls = calls
    return {op: ms / total_calls for op, ms in sorted(totals.items(), key=lambda item: -item[1])}


def floor(variants, threads: int, rounds: int, profile_calls: int, peak_seconds: float, sequence_length: int) -> dict:
    import torch
    from transformers import AutoConfig, AutoTokenizer

    peaks = measure_peaks(threads, peak_seconds)
    specs = parse_variants(variants)
    with tempfile.TemporaryDirectory(prefix="floor-") as tmp:
        checkpoint = bert_base_checkpoint(Path(tmp) / "bert-base")
        config = AutoConfig.from_pretrained(checkpoint)
        macs = bert_macs(config, sequence_length)
        built = build_all(str(checkpoint), TASK, specs, Path(tmp) / "work", threads=threads)
        failed = {name: error for name, error in built.items() if isinstance(error, str)}
        if failed:
            raise SystemExit(f"variants not built: {failed}")
        inputs = synthetic_inputs(1, sequence_length, config.vocab_size,
                                  AutoTokenizer.from_pretrained(checkpoint).model_input_names)
        torch.set_num_threads(threads)
        models = {spec.name: load_variant(built[spec.name], TASK, threads) for spec in specs}
        with torch.no_grad():
            times = round_robin_ms({name: (lambda m=model: m(**inputs)) for name, model in models.items()},
                                   rounds=rounds, warmup=5, pause_s=0.1)
        clones = {name: profiled_clone(model) for name, model in models.items()}
        profiles = {name: profile_ops(*clone, inputs, profile_calls) if clone else {} for name, clone in clones.items()}
    fp32_peak = best_peak(peaks, FP32_KERNELS, threads)
    int8_peak = best_peak(peaks, INT8_KERNELS, threads)
    rows = []
    for name, t in times.items():
        p50 = statistics.median(t)
        rate = macs / (p50 / 1000)
        rows.append({"name": name, "p50_ms": p50, "macs_per_s": rate,
                     "of_fp32_peak": rate / fp32_peak if fp32_peak else None,
                     "of_int8_peak": rate / int8_peak if int8_peak else None,
                     "profiled_ms_per_call": sum(profiles[name].values()), "ops_ms": profiles[name]})
    return {"kind": "floor", "task": TASK, "model": "BERT-base shape (random init), sequence classification",
            "shape": {"batch_size": 1, "sequence_length": sequence_length}, "macs": macs, "rounds": rounds,
            "profile_calls": profile_calls, "peaks": peaks,
            "floor_ms": {"fp32": macs / fp32_peak * 1000 if fp32_peak else None,
                         "int8": macs / int8_peak * 1000 if int8_peak else None},
            "machine": machine_record(threads), "versions": library_versions(), "variants": rows}


def markdown(result: dict) -> str:
    threads = str(result["machine"]["threads"])
    lines = [machine_line(result), "", "Peak multiply-adds per second (`cpu_peak.c`, 12 independent chains per thread):", "",
             f"| instruction | 1 thread, GMAC/s | {threads} threads, GMAC/s |", "|---|---|---|"]
    for peak in result["peaks"].values():
        rates = peak["macs_per_s"]
        lines.append(f"| {peak['meaning']} | {rates['1'] / 1e9:.1f} | {rates[threads] / 1e9:.1f} |")
    floor_ms = result["floor_ms"]
    shape = result["shape"]
    lines += ["", f"{result['model']}, batch {shape['batch_size']} x sequence {shape['sequence_length']}: "
              f"{result['macs'] / 1e9:.2f} GMAC per prediction. At the measured peaks on {threads} threads that takes "
              + ", ".join(f"{floor_ms[k]:.1f} ms in {k.upper()}" for k in ("fp32", "int8") if floor_ms[k]) + ".", "",
              f"Latency: the loaded variants called in turns in one process, {result['rounds']} calls each. Operator "
              f"times: a profiled clone of each, {result['profile_calls']} calls (profiling adds some overhead).", "",
              "| variant | p50 ms | GMAC/s | of FP32 peak | of INT8 peak | costliest operator types, ms per call |",
              "|---|---|---|---|---|---|"]
    for row in result["variants"]:
        ops = ", ".join(f"{op} {ms:.2f}" for op, ms in list(row["ops_ms"].items())[:5]) or "not profiled"
        share = lambda v: f"{v:.0%}" if v is not None else "–"  # noqa: E731
        lines.append(f"| {row['name']} | {row['p50_ms']:.2f} | {row['macs_per_s'] / 1e9:.0f} | {share(row['of_fp32_peak'])} "
                     f"| {share(row['of_int8_peak'])} | {ops} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=100, help="timed calls per variant, in turns")
    parser.add_argument("--profile-calls", type=int, default=30)
    parser.add_argument("--peak-seconds", type=float, default=2.0, help="seconds per peak kernel run")
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--name", required=True, help="results file stem")
    args = parser.parse_args()
    if args.threads > (os.cpu_count() or 1):
        print(f"warning: {args.threads} threads on {os.cpu_count()} CPUs", file=sys.stderr)
    result = floor(args.variants, args.threads, args.rounds, args.profile_calls, args.peak_seconds, args.sequence_length)
    write_reports(result, RESULTS, args.name, markdown=markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
