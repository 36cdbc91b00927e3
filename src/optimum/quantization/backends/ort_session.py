"""Session settings a stored ONNX Runtime graph needs, added to the caller's `SessionOptions` without overriding them.

SessionOptions cannot be copied, so the caller's object gains the entries."""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)


def _options_and_entry(options, key: str):
    """`options` (or new SessionOptions), and the value of its config entry `key` (None when unset)."""
    import onnxruntime

    if options is None:
        options = onnxruntime.SessionOptions()
    try:
        return options, options.get_session_config_entry(key)
    except RuntimeError:  # not set
        return options, None


def with_config_entry(options, key: str, value: str, why: str):
    """`options` (or new SessionOptions) with the session config entry `key` set to `value` where the caller left
    it unset; a value they set is kept."""
    options, chosen = _options_and_entry(options, key)
    if chosen is not None:  # set by the caller: theirs to choose
        logger.info("Kept the given SessionOptions' %s=%s; the graph runs best with %s, %s.", key, chosen, value, why)
        return options
    options.add_session_config_entry(key, value)
    logger.info("Added %s=%s to the given SessionOptions %s.", key, value, why)
    return options


def with_listed_entry(options, key: str, names, separator: str, why: str):
    """`options` (or new SessionOptions) whose list-valued config entry `key` holds `names` as well as whatever
    the caller listed there: the union, in their order, then ours."""
    options, chosen = _options_and_entry(options, key)
    listed = [name for name in (chosen or "").split(separator) if name]
    missing = [name for name in names if name not in listed]
    if missing:
        value = separator.join(listed + missing)
        options.add_session_config_entry(key, value)
        logger.info("Set %s=%s on the given SessionOptions %s.", key, value, why)
    return options


def with_intra_op_threads(options, threads: int):
    """`options` (or new SessionOptions) running `threads` intra-op threads, the worker threads pinned one per CPU of
    this process, as ONNX Runtime pins them when it picks the count itself.

    An explicit count turns ONNX Runtime's own pinning off. On a 2-vCPU VM a worker woken after an idle gap between
    calls then often shared the caller's CPU: fine-tuned MiniLM, dynamic INT8, 1 x 128, 0.1 s between calls, p90 10.3
    ms unpinned against 4.1-4.5 ms pinned (p50 3.9 / 3.7; benchmarks/RESULTS.md, "Pinned ONNX Runtime threads").
    Where the process has fewer CPUs than threads, or pinning is not available, nothing is pinned; affinities the
    caller set are kept."""
    import onnxruntime

    options = options or onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if 1 < threads <= len(cpus):  # ONNX Runtime numbers processors from 1; the calling thread is not pinned
        affinities = ";".join(str(cpu + 1) for cpu in cpus[1:threads])
        with_config_entry(options, "session.intra_op_thread_affinities", affinities, "to keep each worker on its CPU")
    return options
