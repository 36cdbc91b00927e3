"""Accuracy-aware automatic quantization: the fastest model whose metric stays within a tolerance of FP32.

`QuantModelFor<Task>.from_pretrained(path, quantize="auto" | AutoQuantConfig(...), eval_dataset=..., metric=...)`
and `optimum-quantize auto` run `quantize_auto`:

1. FP32 reference: metric and latency of the first backend's FP32 export.
2. Candidates (autoquant/candidates.py), fastest expected first: each is built with its backend, scored and
   timed; accepted when its metric is at least FP32 minus `tolerance`.
3. The best accepted candidate is the fastest measured; latencies closer than `latency_noise` count as equal,
   and the expected speed order (then fewer FP32 units) decides, since a shared machine's timings are noisy.
   After the accuracy phase the finalists (accepted trials close to the fastest, search.REMEASURE_MARGIN) are
   timed again side by side with FP32 in a few interleaved rounds, and the same rule on those latencies picks
   the model: trials timed minutes apart are not comparable.
4. When the fastest candidate that could beat it missed the tolerance, its quantized units (the `exclude`
   patterns its backend reports in `quantized_units`, names that really take effect) are ranked by sensitivity,
   the metric regained when that unit alone stays FP32, and the most sensitive are kept FP32 one at a time
   until the tolerance holds (at most `max_fallback_units`).
5. `max_trials` and `time_budget_s` stop the search; whatever was found by then is returned. With nothing
   within tolerance the FP32 model comes back, with the reason.

The result is an ordinary quantized model: its recipe holds the chosen config (FP32 fallback in `exclude`) and
the whole report under `details["auto_search"]` (every trial: metric, latency, size, decision), also written as
`auto_report.json`/`.md` in the work folder and shown on the model card. Every trial is appended to
`trials.jsonl` as it ends and the best model so far is kept in `best/`, so a rerun with the same `work_dir`
resumes (and a changed tolerance is decided again from the logged measurements).
"""

from __future__ import annotations

import logging

from ..calibration import load_calibration_examples
from ..configuration import AutoQuantConfig
from .candidates import CANDIDATE_TABLE, Candidate, candidates_for
from .metric import TASK_METRICS, resolve_metric
from .search import Search, report_paths

logger = logging.getLogger(__name__)

__all__ = ["quantize_auto", "CANDIDATE_TABLE", "Candidate", "candidates_for", "TASK_METRICS", "report_paths"]

# from_pretrained keyword arguments that belong to the search rather than to the backend's model class.
SEARCH_OVERRIDES = {"eval_dataset": "eval_dataset_description", "metric": "metric_name"}
# from_pretrained keyword arguments that replace the AutoQuantConfig field of the same name.
SEARCH_SETTINGS = ("tolerance", "work_dir", "time_budget_s", "max_trials")


def quantize_auto(task: str, model_path: str, config: AutoQuantConfig, *, calibration_dataset=None, tokenizer=None,
                  text_column=None, hub_kwargs=None, load_kwargs=None):
    """Run the search for `model_path` and return the chosen model (see the module docstring)."""
    from transformers import AutoTokenizer

    hub_kwargs, load_kwargs = dict(hub_kwargs or {}), dict(load_kwargs or {})
    overrides = {}
    for name, recorded in SEARCH_OVERRIDES.items():
        if name in load_kwargs:
            overrides.update({name: load_kwargs.pop(name), recorded: None})
    for name in SEARCH_SETTINGS:
        if name in load_kwargs:
            overrides[name] = load_kwargs.pop(name)
    if overrides:
        config = config.replace(**overrides)
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(model_path, **hub_kwargs)
    calibration = None
    if calibration_dataset is not None:
        calibration = load_calibration_examples(calibration_dataset, text_column=text_column)
    metric, metric_name = resolve_metric(config, task, tokenizer)
    search = Search(task, model_path, config, metric=metric, metric_name=metric_name, tokenizer=tokenizer,
                    calibration=calibration, hub_kwargs=hub_kwargs, load_kwargs=load_kwargs)
    report = search.run()
    logger.warning("auto-quantization: %s", report["explanation"])
    return search.result_model(report)


# What from_pretrained checks its keyword arguments against, beside those of the searched backends.
quantize_auto.keyword_arguments = (*SEARCH_OVERRIDES, *SEARCH_SETTINGS)
