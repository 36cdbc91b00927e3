"""The search loop: FP32 reference, candidates fastest first, then sensitivity-ranked FP32 fallback."""

from __future__ import annotations

import functools
import json
import logging
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from transformers import set_seed

from ..configuration import AutoQuantConfig, config_from_dict
from ..errors import QuantizationError
from ..evaluation.benchmark import BenchmarkConfig, alternating_rounds, round_robin_ms, synthetic_inputs, time_calls
from ..hardware import cpu_info
from ..modeling import fp32_reference, load_or_quantize
from ..recipe import library_versions
from ..search_report import REPORT_DETAILS_KEY, search_report_markdown
from .candidates import Candidate, candidates_for
from .trials import Trial, WorkDir, trial_key

logger = logging.getLogger(__name__)

REPORT_NAME = "auto_report"
# Timing inside the search: short, on one synthetic shape. The final comparison belongs on a quiet machine.
SEARCH_TIMING = BenchmarkConfig(batch_sizes=(1,), sequence_lengths=(128,), warmup=3, repeats=15,
                                max_seconds_per_shape=3.0, min_repeats=5)
# After the accuracy phase the finalists are timed again, side by side: trials timed minutes apart on a shared
# machine are not comparable. Finalists: accepted trials whose in-search latency is within REMEASURE_MARGIN of
# the fastest accepted one, or that are expected at least as fast as the in-search choice (a timing that says
# otherwise is the suspect), at most REMEASURE_MAX_FINALISTS, in expected speed order (then trial order). FP32 is timed
# in the same rounds, for the speed-up. Each round times every model once, every other round in reverse order;
# a model's re-measured latency is the median of its rounds.
REMEASURE_MARGIN = 0.25
REMEASURE_ROUNDS = 3
REMEASURE_MAX_FINALISTS = 4


class BudgetSpent(Exception):
    """No trial may start: max_trials reached or the time budget spent."""


class Search:
    def __init__(self, task: str, model_path: str, config: AutoQuantConfig, *, metric, metric_name: str, tokenizer,
                 calibration, hub_kwargs: dict, load_kwargs: dict):
        self.task, self.model_path, self.config = task, model_path, config
        self.metric_fn, self.metric_name = metric, metric_name
        self.tokenizer, self.calibration = tokenizer, calibration
        self.hub_kwargs, self.load_kwargs = hub_kwargs, load_kwargs
        self.trials: list[Trial] = []
        self.best: Trial | None = None
        self.best_reason = ""
        self.fp32: Trial | None = None
        self.fp32_model = None
        self.sensitivity: list[dict] = []
        self.sensitivity_of: str | None = None
        self.remeasure: dict[str, Any] = {}
        self.started = time.monotonic()
        self._temporary = None
        if config.work_dir is None:  # not resumable, but the best model still lives in a folder while searching
            self._temporary = tempfile.TemporaryDirectory(prefix="optimum-quantization-auto-")
        self.work = WorkDir(config.work_dir or self._temporary.name, self.identity())
        self._progress = None

    # ------------------------------------------------------------------ bookkeeping

    def identity(self) -> dict[str, Any]:
        config = self.config
        identity = {
            "model": self.model_path,
            "task": self.task,
            "metric": self.metric_name,
            "eval_dataset": config.eval_dataset_description,
            "seed": config.seed,
            "latency_shape": [config.latency_batch_size, config.latency_sequence_length],
        }
        if config.latency_pause_s:  # absent for back-to-back timing, so folders logged before the option still resume
            identity["latency_pause_s"] = config.latency_pause_s
        return identity

    def _check_budget(self) -> None:
        if len(self.trials) >= self.config.max_trials:
            raise BudgetSpent(f"max_trials ({self.config.max_trials}) reached")
        budget = self.config.time_budget_s
        if budget is not None and time.monotonic() - self.started > budget:
            raise BudgetSpent(f"time budget of {budget:g} s spent")

    @property
    def threshold(self) -> float:
        return self.fp32.metric - self.config.tolerance

    def accepted(self, trial: Trial) -> bool:
        return trial.error is None and trial.metric is not None and trial.metric >= self.threshold - 1e-9

    def _judge(self, trial: Trial) -> None:
        if trial.phase == "baseline":
            trial.status, trial.reason = "reference", "FP32: the metric and latency every trial is compared with"
        elif trial.error is not None:
            trial.status, trial.reason = "failed", trial.error
        else:
            drop = self.fp32.metric - trial.metric
            within = self.accepted(trial)
            trial.status = "accepted" if within else "rejected"
            change = f"{drop:.2f} below FP32" if drop > 0 else f"{-drop:.2f} above FP32"
            trial.reason = f"{change}, {'within' if within else 'beyond'} the tolerance {self.config.tolerance:g}"

    def preferred(self, a: Trial, b: Trial | None, latency: dict[str, float] | None = None) -> tuple[bool, str]:
        """Is `a` a better choice than `b` (both accepted)? Measured speed, unless within noise; then expected order.

        `latency` (trial key -> ms) replaces the in-search latencies, e.g. by the re-measured ones."""
        if b is None:
            return True, "the first trial within tolerance"
        noise = self.config.latency_noise
        a_ms, b_ms = (a.latency_ms, b.latency_ms) if latency is None else (latency[a.key], latency[b.key])
        if a_ms < b_ms * (1 - noise):
            return True, f"measured faster than {b.name} ({a_ms:.2f} vs {b_ms:.2f} ms)"
        if b_ms < a_ms * (1 - noise):
            return False, ""
        if (a.speed_rank, len(a.fallback)) < (b.speed_rank, len(b.fallback)):
            return True, (f"within {100 * noise:.0f}% latency noise of {b.name}; faster in the expected speed order "
                          "(fewer FP32 units / faster recipe)")
        return False, ""

    # ------------------------------------------------------------------ trials

    @functools.cached_property
    def _latency_inputs(self) -> dict:
        """The one synthetic batch every trial is timed on (the checkpoint's config is read once)."""
        from transformers import AutoConfig

        model_config = AutoConfig.from_pretrained(self.model_path, **self.hub_kwargs)
        limit = getattr(model_config, "max_position_embeddings", None) or self.config.latency_sequence_length
        return synthetic_inputs(
            self.config.latency_batch_size, min(self.config.latency_sequence_length, limit), model_config.vocab_size,
            list(self.tokenizer.model_input_names), seed=self.config.seed,
        )

    def _latency_ms(self, model) -> float:
        import torch

        inputs = self._latency_inputs
        pause = self.config.latency_pause_s
        with torch.no_grad():
            if not pause:
                return statistics.median(time_calls(lambda: model(**inputs), SEARCH_TIMING))
            times = round_robin_ms({"model": lambda: model(**inputs)}, rounds=SEARCH_TIMING.repeats,
                                   warmup=SEARCH_TIMING.warmup, pause_s=pause)
            return statistics.median(times["model"])

    def run_trial(self, name: str, backend: str, quant_config, phase: str, speed_rank: int = 0, fallback=(),
                  options=None) -> Trial:
        config_dict = None if quant_config is None else quant_config.to_dict()
        options = dict(options or {})
        key = trial_key(backend, config_dict, options)
        logged = self.work.logged.get(key)
        self._check_budget()
        if logged is not None:  # measured by an earlier run with this work folder
            trial = Trial.from_log({**logged.to_log(), "name": name, "phase": phase, "speed_rank": speed_rank,
                                    "fallback": list(fallback)})
            model = None
        else:
            trial, model = self._measure(key, name, backend, quant_config, config_dict, phase, speed_rank,
                                         list(fallback), options)
            self.work.append(trial)
        self.trials.append(trial)
        if phase == "baseline":
            self.fp32, self.fp32_model = trial, model
        self._judge(trial)
        if trial.status == "accepted":
            better, why = self.preferred(trial, self.best)
            if better:
                if model is None and self.work.best_key() != trial.key:
                    model = self._build(backend, quant_config, options)  # logged, but best/ holds another: rebuild it
                if model is not None:
                    self.work.save_best(model, trial)
                self.best, self.best_reason = trial, why
        self._show(trial)
        return trial

    def _build(self, backend: str, quant_config, options=None):
        with fp32_reference():  # the FP32 trial is the search's reference
            return load_or_quantize(
                self.task, self.model_path, backend=backend, quantize=quant_config,
                calibration_dataset=self.calibration, tokenizer=self.tokenizer, **self.hub_kwargs,
                **{**self.load_kwargs, **(options or {})},
            )

    def _measure(self, key, name, backend, quant_config, config_dict, phase, speed_rank, fallback, options):
        start = time.monotonic()
        trial = Trial(key=key, name=name, backend=backend, phase=phase, config=config_dict, speed_rank=speed_rank,
                      options=options, fallback=fallback)
        model = None
        try:
            model = self._build(backend, quant_config, options)
            trial.metric = float(self.metric_fn(model))
            if not math.isfinite(trial.metric):
                raise QuantizationError(f"the metric returned {trial.metric}")
            trial.latency_ms = self._latency_ms(model)
            details = model.quantization_recipe.details
            trial.size_bytes = details.get("int8_size_bytes", details.get("fp32_size_bytes"))
            trial.units = list(details.get("quantized_units", []))
            trial.int8_ops = dict(details.get("int8_ops", {}))
        except Exception as err:  # noqa: BLE001 - one candidate failing is a result, not the end of the search
            if phase == "baseline":
                raise
            logger.warning("auto-quantization trial %s failed: %s: %s", name, type(err).__name__, err)
            trial.error, model = f"{type(err).__name__}: {err}", None
        trial.seconds = round(time.monotonic() - start, 2)
        return trial, model

    def _show(self, trial: Trial) -> None:
        metric = "–" if trial.metric is None else f"{trial.metric:.2f}"
        logger.info("trial %d %s [%s]: %s %s, p50 %s ms — %s", len(self.trials), trial.name, trial.phase, self.metric_name,
                    metric, "–" if trial.latency_ms is None else f"{trial.latency_ms:.2f}", trial.status)
        if self._progress is not None:
            self._progress.update(1)
            self._progress.set_postfix_str(f"{trial.name}: {metric} ({trial.status}); best: "
                                           f"{self.best.name if self.best else 'none yet'}")

    # ------------------------------------------------------------------ the search

    def run(self) -> dict:
        config = self.config
        set_seed(config.seed)  # python, numpy and torch
        candidates, skipped = candidates_for(config, has_calibration=bool(self.calibration))
        if config.show_progress:
            from tqdm.auto import tqdm

            self._progress = tqdm(total=config.max_trials, desc="auto-quantization", unit="trial")
        stopped = None
        try:
            self.run_trial("fp32", config.backends[0], None, "baseline")
            try:
                by_name = {c.name: self.run_trial(c.name, c.backend, c.config, "candidate", c.speed_rank,
                                                  options=c.options) for c in candidates}
                target = self._fallback_target(candidates, by_name)
                if target is not None:
                    self._fall_back(*target)
            except BudgetSpent as err:
                stopped = str(err)
                logger.warning("auto-quantization stopped: %s.", stopped)
            self._remeasure_finalists()
        finally:
            if self._progress is not None:
                self._progress.close()
        return self.report(skipped, stopped)

    def _fallback_target(self, candidates: list[Candidate], by_name: dict[str, Trial]):
        """The fastest rejected candidate that could still beat the best accepted one, with units to fall back."""
        for candidate in candidates:
            trial = by_name[candidate.name]
            if trial.status != "rejected" or not trial.units or self.config.max_fallback_units == 0:
                continue
            if self.best is None or self.preferred(trial, self.best)[0]:
                return candidate, trial
        return None

    def _fall_back(self, candidate: Candidate, base: Trial) -> None:
        """Rank `base`'s units by the metric gained when each alone stays FP32, then keep the most sensitive in
        FP32 one at a time until the tolerance holds."""
        self.sensitivity_of = candidate.name
        base_exclude = list(candidate.config.exclude)
        gains, alone = [], {}
        for index, unit in enumerate(base.units):
            alone[unit] = self.run_trial(f"{candidate.name} -{unit}", candidate.backend,
                                         candidate.config.replace(exclude=base_exclude + [unit]), "sensitivity",
                                         candidate.speed_rank, [unit], candidate.options)
            gain = -math.inf if alone[unit].metric is None else alone[unit].metric - base.metric
            gains.append((-gain, index, unit))
        ranked = sorted(gains)
        ranking = [unit for _, _, unit in ranked]
        self.sensitivity = [{"unit": unit, "gain": -g} for g, _, unit in ranked if math.isfinite(g)]
        if not ranking or alone[ranking[0]].status == "accepted":  # the most sensitive unit alone was enough
            return
        for count in range(2, min(self.config.max_fallback_units, len(ranking)) + 1):
            kept = ranking[:count]
            trial = self.run_trial(f"{candidate.name} +{count} FP32", candidate.backend,
                                   candidate.config.replace(exclude=base_exclude + kept), "fallback",
                                   candidate.speed_rank, kept, candidate.options)
            if trial.status == "accepted":
                return

    # ------------------------------------------------------------------ re-measure

    def finalists(self) -> list[Trial]:
        """The accepted trials worth timing again side by side (see REMEASURE_MARGIN), in expected speed order."""
        if self.best is None:
            return []
        by_key: dict[str, Trial] = {}
        for trial in self.trials:
            if trial.status == "accepted" and trial.latency_ms:
                by_key.setdefault(trial.key, trial)
        fastest = min(t.latency_ms for t in by_key.values())
        close = [t for t in by_key.values()
                 if t.latency_ms <= fastest * (1 + REMEASURE_MARGIN) or t.speed_rank <= self.best.speed_rank]
        close.sort(key=lambda t: (t.speed_rank, len(t.fallback)))  # stable: trial order next, not the suspect timings
        chosen = close[:REMEASURE_MAX_FINALISTS]
        if not any(t is self.best for t in chosen):  # the in-search choice is always re-measured
            chosen[-1] = self.best
        return chosen

    def _remeasure_finalists(self) -> None:
        """Time the finalists and FP32 again in interleaved rounds; the fastest by those numbers becomes the choice."""
        finalists = self.finalists()
        settings = {"margin": REMEASURE_MARGIN, "rounds": REMEASURE_ROUNDS, "in_search_choice": self.best and self.best.name}
        budget = self.config.time_budget_s
        if len(finalists) < 2:
            others = [t for t in self.trials if t.status == "accepted" and t is not self.best and t.latency_ms]
            why = (f"the other accepted trials ({', '.join(f'{t.name} {t.latency_ms:.2f} ms' for t in others)}) were over "
                   f"{100 * REMEASURE_MARGIN:.0f}% slower in search and are expected slower" if others
                   else "no other trial was accepted")
            self.remeasure = {**settings, "skipped": why}
            return
        if budget is not None and time.monotonic() - self.started > budget:
            self.remeasure = {**settings, "skipped": f"time budget of {budget:g} s spent"}
            return
        models = {t.key: self._finalist_model(t) for t in [self.fp32, *finalists]}
        samples: dict[str, list[float]] = {key: [] for key in models}
        for key in alternating_rounds(list(models), REMEASURE_ROUNDS):
            samples[key].append(self._latency_ms(models[key]))
        latency = {key: statistics.median(values) for key, values in samples.items()}
        for trial in [self.fp32, *finalists]:
            trial.remeasured_ms = latency[trial.key]
        winner, why = finalists[0], "first in the expected speed order, no other finalist measurably faster"
        for trial in finalists[1:]:
            better, reason = self.preferred(trial, winner, latency)
            if better:
                winner, why = trial, reason
        others = ", ".join(f"{t.name} {latency[t.key]:.2f} ms" for t in finalists if t is not winner)
        reason = (f"re-measured side by side in {REMEASURE_ROUNDS} interleaved rounds: {latency[winner.key]:.2f} ms vs "
                  f"{others}; {why}")
        changed = winner is not self.best
        if changed:
            self.work.save_best(models[winner.key], winner)
        self.best, self.best_reason = winner, reason
        self.remeasure = {**settings, "changed_choice": changed, "winner": winner.name, "reason": reason,
                          "fp32_ms": latency[self.fp32.key], "samples_ms": {t.name: samples[t.key] for t in finalists},
                          "finalists": [{"name": t.name, "key": t.key, "latency_ms_search": t.latency_ms,
                                         "latency_ms_remeasured": latency[t.key]} for t in finalists]}
        logger.info("auto-quantization: %s", reason)

    def _finalist_model(self, trial: Trial):
        """The model of a logged or measured trial: FP32 and best/ are at hand, the others are built again."""
        if trial.phase == "baseline" and self.fp32_model is not None:
            return self.fp32_model
        if trial is self.best and self.work.best_key() == trial.key:
            return load_or_quantize(self.task, str(self.work.best_dir), **self.load_kwargs)
        config = None if trial.config is None else config_from_dict(trial.config)
        return self._build(trial.backend, config, trial.options)

    # ------------------------------------------------------------------ outcome

    def explanation(self, stopped: str | None) -> str:
        fp32, tolerance = self.fp32, self.config.tolerance
        if self.best is None:
            quantized = [t for t in self.trials if t.phase != "baseline" and t.metric is not None]
            closest = max(quantized, key=lambda t: t.metric, default=None)
            detail = ("no candidate could be measured" if closest is None else
                      f"the closest, {closest.name}, scored {closest.metric:.2f} ({closest.metric - fp32.metric:+.2f})")
            return (f"No quantized model stayed within {tolerance:g} of FP32's {self.metric_name} {fp32.metric:.2f} "
                    f"({detail}{'; ' + stopped if stopped else ''}): the FP32 model is returned.")
        best = self.best
        if best.remeasured_ms and fp32.remeasured_ms:
            speed = f"{fp32.remeasured_ms / best.remeasured_ms:.2f}x FP32 speed (re-measured side by side)"
        else:
            speed = f"{fp32.latency_ms / best.latency_ms if best.latency_ms else float('nan'):.2f}x FP32 speed"
        fallback = f" with {len(best.fallback)} unit(s) kept FP32" if best.fallback else ""
        return (f"Chose {best.name}{fallback}: {self.metric_name} {best.metric:.2f} vs FP32 {fp32.metric:.2f} "
                f"({best.metric - fp32.metric:+.2f}, tolerance {tolerance:g}), {speed}; {self.best_reason}.")

    def report(self, skipped, stopped: str | None) -> dict:
        best = self.best
        if best is not None:
            best.status, best.reason = "chosen", f"{best.reason}; {self.best_reason}"
        trials = [t.to_report() for t in self.trials]
        trials += [{"key": None, "name": c.name, "backend": c.backend, "phase": "candidate", "status": "skipped",
                    "reason": reason, "fallback": [], "metric": None, "latency_ms": None, "size_bytes": None}
                   for c, reason in skipped]
        report = {
            "outcome": "fp32" if best is None else "quantized",
            "explanation": self.explanation(stopped),
            "model": self.model_path,
            "task": self.task,
            "metric": self.metric_name,
            "eval_dataset": self.config.eval_dataset_description,
            "tolerance": self.config.tolerance,
            "threshold": self.threshold,
            "latency_shape": [self.config.latency_batch_size, self.config.latency_sequence_length],
            "latency_noise": self.config.latency_noise,
            "latency_pause_s": self.config.latency_pause_s,
            "fp32": {"metric": self.fp32.metric, "latency_ms": self.fp32.latency_ms, "size_bytes": self.fp32.size_bytes,
                     "remeasured_ms": self.fp32.remeasured_ms},
            "remeasure": self.remeasure,
            "chosen": None if best is None else best.to_report(),
            "sensitivity_of": self.sensitivity_of,
            "sensitivity": self.sensitivity,
            "stopped": stopped,
            "search": self.config.to_dict()["_data"],
            "trials": trials,
            "trials_run_now": sum(not t.cached for t in self.trials),
            "elapsed_s": round(time.monotonic() - self.started, 1),
            "hardware": cpu_info().to_dict(),
            "versions": library_versions(),
        }
        json_path, markdown_path = report_paths(self.work.path)
        json_path.write_text(json.dumps(report, indent=2), encoding="utf-8")
        markdown_path.write_text(search_report_markdown(report), encoding="utf-8")
        return report

    def result_model(self, report: dict):
        """The chosen model (loaded from best/) or FP32, with the report in its recipe."""
        if self.best is None:
            model = self.fp32_model or self._build(self.config.backends[0], None)
        else:
            model = load_or_quantize(self.task, str(self.work.best_dir), **self.load_kwargs)
            if self._temporary is not None:
                model._auto_work_dir = self._temporary  # keeps best/ on disk as long as the model lives
        recipe = model.quantization_recipe
        recipe.details[REPORT_DETAILS_KEY] = report
        recipe.metrics.update(self._metrics(report))
        model.auto_quantization_report = report
        return model

    def _metrics(self, report: dict) -> dict:
        chosen = report["chosen"] or report["fp32"]
        fp32 = report["fp32"]
        metrics = {
            f"{self.metric_name}": round(chosen["metric"], 4),
            f"{self.metric_name}_fp32": round(fp32["metric"], 4),
            "measured_on": self.config.eval_dataset_description or "the search's metric function",
        }
        if chosen.get("latency_ms") and fp32.get("latency_ms"):
            metrics["speedup_vs_fp32_p50_search"] = round(fp32["latency_ms"] / chosen["latency_ms"], 3)
        if chosen.get("remeasured_ms") and fp32.get("remeasured_ms"):
            metrics["speedup_vs_fp32_p50_remeasured"] = round(fp32["remeasured_ms"] / chosen["remeasured_ms"], 3)
        return metrics


def report_paths(work_dir: str | Path) -> tuple[Path, Path]:
    return Path(work_dir) / f"{REPORT_NAME}.json", Path(work_dir) / f"{REPORT_NAME}.md"
