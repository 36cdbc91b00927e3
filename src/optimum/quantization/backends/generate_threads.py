"""Keep PyTorch's own thread pool out of the way while a runtime (ONNX Runtime, OpenVINO) generates.

In `generate()` on a runtime model, the network runs in the runtime's threads and PyTorch only does the small
per-step work (argmax or sampling over the vocabulary, concatenating ids). With more than one PyTorch thread,
its OpenMP workers spin-wait after each of those small ops and take the cores the runtime needs next: on a
2-core machine, OpenVINO's INT8 GPT-2 small spent 10.6-11.1 ms per step inside the runtime with 2 PyTorch
threads against 8.0-8.1 ms with 1 (benchmarks/RESULTS.md, "Text generation: per-token latency").
"""

from __future__ import annotations

import contextlib

import torch

from ..errors import ConfigError


@contextlib.contextmanager
def torch_threads(count: int | None):
    """PyTorch's intra-op thread count is `count` inside the block and restored after; None changes nothing."""
    previous = torch.get_num_threads()
    if count is None or count == previous:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class RuntimeGenerateThreadsMixin:
    """For a runtime model class: `generate()` runs with `generate_torch_threads` PyTorch threads (default 1).

    Put it before the runtime's model class in the bases. Set `model.generate_torch_threads = None` to leave
    PyTorch's setting alone, e.g. when other threads of the process run PyTorch work at the same time (the
    thread count is process-wide).
    """

    generate_torch_threads: int | None = 1

    def generate(self, *args, **kwargs):
        count = self.generate_torch_threads
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise ConfigError(f"`generate_torch_threads` must be a positive int or None, got {count!r}.")
        with torch_threads(count):
            return super().generate(*args, **kwargs)
