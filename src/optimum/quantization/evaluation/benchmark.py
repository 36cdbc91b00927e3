"""Speed and footprint of one loaded model: latency sweep, throughput, file size, peak memory.

Measures what it is given; building and loading the variants to compare is `optimum.quantization.variants`.
"""

from __future__ import annotations

import dataclasses
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from ..errors import ConfigError

DEFAULT_BATCH_SIZES = (1, 4)
DEFAULT_SEQUENCE_LENGTHS = (8, 16, 32, 64, 128, 256, 512)
# Files that hold a model's weights or graph; tokenizer and config files are the same for every variant.
WEIGHT_SUFFIXES = (".onnx", ".onnx_data", ".safetensors", ".bin", ".xml", ".pt", ".data")


@dataclass
class BenchmarkConfig:
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES
    sequence_lengths: Sequence[int] = DEFAULT_SEQUENCE_LENGTHS
    warmup: int = 3
    repeats: int = 20  # timed calls per shape, unless `max_seconds_per_shape` runs out first
    max_seconds_per_shape: float = 10.0
    min_repeats: int = 3
    threads: int | None = None  # None: the runtime's default (all cores)
    seed: int = 0
    rounds: int = 1  # fresh-process measurements per variant, round-robin; numbers are their medians

    def __post_init__(self):
        if not self.batch_sizes or not self.sequence_lengths:
            raise ConfigError("A benchmark needs at least one batch size and one sequence length.")
        if min(self.batch_sizes) < 1 or min(self.sequence_lengths) < 1:
            raise ConfigError("Batch sizes and sequence lengths must be positive.")
        if self.repeats < 1 or self.min_repeats < 1 or self.rounds < 1 or self.warmup < 0:
            raise ConfigError("repeats, min_repeats and rounds must be >= 1, and warmup >= 0.")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be a positive number, not {self.threads}.")

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["batch_sizes"], data["sequence_lengths"] = list(self.batch_sizes), list(self.sequence_lengths)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "BenchmarkConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def synthetic_inputs(batch_size: int, sequence_length: int, vocab_size: int, input_names: Sequence[str], seed: int = 0):
    """Random token ids (no padding) shaped for a benchmark; the same seed gives every variant the same inputs."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    # Ids from 1000 up avoid the special tokens at the start of BERT/GPT-style vocabularies.
    low = min(1000, vocab_size - 1)
    input_ids = torch.randint(low, vocab_size, (batch_size, sequence_length), generator=generator)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if "token_type_ids" in input_names:
        inputs["token_type_ids"] = torch.zeros_like(input_ids)
    return inputs


def percentile(sorted_times: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return float(sorted_times[min(len(sorted_times) - 1, max(0, int(round(q / 100 * len(sorted_times))) - 1))])


def time_calls(call: Callable[[], object], config: BenchmarkConfig) -> list[float]:
    """Milliseconds per call after warm-up, `repeats` times or until the time budget is spent."""
    for _ in range(config.warmup):
        call()
    times: list[float] = []
    deadline = time.perf_counter() + config.max_seconds_per_shape
    while len(times) < config.repeats and (len(times) < config.min_repeats or time.perf_counter() < deadline):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)


def alternating_rounds(items: Sequence, rounds: int) -> list:
    """`rounds` passes over `items`, every other one reversed: a load change on a shared machine falls on every
    item alike instead of on whichever happens to run last."""
    items = list(items)
    return [item for r in range(rounds) for item in (items if r % 2 == 0 else items[::-1])]


def round_robin_ms(
    calls: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 1, pause_s: float = 0.0,
    calls_per_turn: int = 1,
) -> dict[str, list[float]]:
    """Milliseconds per call of several callables measured in turns, in one process: `warmup` untimed calls
    each, then `rounds` rounds of one turn each, every other round in reverse order (`alternating_rounds`).

    Interleaving spreads a load change on the machine over every candidate instead of over one of them.
    `pause_s`: an untimed sleep before each turn. Runtimes whose worker threads spin after a call
    (ONNX Runtime's intra-op pool does) would otherwise take cores from the next candidate.
    `calls_per_turn`: timed calls back to back in a turn, all recorded. 1 times each call after an idle gap (a
    service with sporadic requests); more times a burst, where a runtime's threads are awake for all but the first."""
    if rounds < 1 or warmup < 0 or pause_s < 0 or calls_per_turn < 1:
        raise ConfigError("rounds and calls_per_turn must be >= 1, warmup >= 0 and pause_s >= 0.")
    turn = BenchmarkConfig(warmup=0, repeats=calls_per_turn, min_repeats=calls_per_turn)
    names = list(calls)
    if not names:
        return {}
    for name in names:
        for _ in range(warmup):
            calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in alternating_rounds(names, rounds):
        if pause_s:
            time.sleep(pause_s)
        times[name] += time_calls(calls[name], turn)
    return times


def latency_sweep(model, vocab_size: int, input_names: Sequence[str], config: BenchmarkConfig, progress=None) -> list[dict]:
    """Latency percentiles and throughput for every batch size x sequence length of `config`."""
    import torch

    shapes = [(b, s) for b in config.batch_sizes for s in config.sequence_lengths]
    rows = []
    with torch.no_grad():
        for batch_size, sequence_length in progress(shapes) if progress else shapes:
            inputs = synthetic_inputs(batch_size, sequence_length, vocab_size, input_names, config.seed)
            times = time_calls(lambda: model(**inputs), config)
            p50 = statistics.median(times)
            rows.append(
                {
                    "batch_size": batch_size,
                    "sequence_length": sequence_length,
                    "p50_ms": p50,
                    "p90_ms": percentile(times, 90),
                    "p99_ms": percentile(times, 99),
                    "mean_ms": float(np.mean(times)),
                    "calls": len(times),
                    "throughput_per_s": 1e3 * batch_size / p50,
                }
            )
    return rows


def weights_size_bytes(folder: str | Path) -> int:
    """Bytes of the model's weight and graph files in a saved folder (tokenizer and configs left out)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a model folder.")
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far.

    Linux: VmHWM, which starts afresh at exec. getrusage's ru_maxrss would carry over the peak of the
    parent that spawned a benchmark worker.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS reports bytes, Linux KiB


MEMORY_FIELDS = {"VmRSS": "rss_bytes", "VmHWM": "peak_rss_bytes", "RssAnon": "anon_bytes", "RssFile": "file_bytes"}


def memory_snapshot() -> dict[str, int]:
    """This process's resident memory now, its peak so far, and the resident anonymous / file-backed parts (bytes).

    File-backed pages are mapped files (shared libraries, memory-mapped weights): clean pages the kernel can drop.
    Linux only (/proc/self/status); elsewhere just the peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            fields = dict(line.split(":", 1) for line in status if line.split(":", 1)[0] in MEMORY_FIELDS)
        return {MEMORY_FIELDS[k]: int(v.split()[0]) * 1024 for k, v in fields.items()}
    except OSError:
        return {"peak_rss_bytes": peak_rss_bytes()}


def set_threads(threads: int | None) -> None:
    """Fix PyTorch's intra-op threads; ONNX Runtime sessions take theirs from their session options."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
