"""What one trial measured, and the work folder that keeps every trial and the best model across runs.

The trial log is JSON lines, one finished trial a line, appended as it finishes: a search interrupted at
any point loses at most the trial in progress, and a rerun with the same work folder reuses every logged
measurement (decisions are made again from them, so a new tolerance costs no new trial). The best model
accepted so far is saved whole into `best/` each time it changes, through an atomic folder swap.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..files import atomic_output_dir

logger = logging.getLogger(__name__)

LOG_FILE = "trials.jsonl"
SEARCH_FILE = "search.json"
BEST_DIR = "best"
BEST_TRIAL_FILE = "auto_trial.json"
# What must match for a work folder's logged trials to be reused.
RESUME_KEYS = ("model", "task", "metric", "eval_dataset", "seed", "latency_shape", "latency_pause_s")


def trial_key(backend: str, config_dict: dict | None, options: dict | None = None) -> str:
    """The identity of a trial: the backend, the full serialised config (None for FP32) and the backend options
    (left out when there are none, so keys logged before options existed still match)."""
    identity = {"backend": backend, "config": config_dict, **({"options": options} if options else {})}
    text = json.dumps(identity, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass
class Trial:
    key: str
    name: str
    backend: str
    phase: str  # baseline | candidate | sensitivity | fallback
    config: dict | None  # the serialised QuantConfig; None for FP32
    speed_rank: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # backend options of from_pretrained (Candidate.options)
    fallback: list[str] = field(default_factory=list)  # units kept FP32 by the search on top of the config's defaults
    metric: float | None = None
    latency_ms: float | None = None
    size_bytes: int | None = None
    units: list[str] = field(default_factory=list)  # the quantized units (each an `exclude` pattern)
    int8_ops: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    # Set by the search, not logged: the decision, whether this run measured it or the log did, the re-measure.
    status: str = ""
    reason: str = ""
    cached: bool = False
    remeasured_ms: float | None = None  # the finalists' latency timed side by side after the accuracy phase

    LOGGED = ("key", "name", "backend", "phase", "config", "speed_rank", "options", "fallback", "metric", "latency_ms",
              "size_bytes", "units", "int8_ops", "seconds", "error")

    def to_log(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.LOGGED}

    def to_report(self) -> dict[str, Any]:
        data = {k: v for k, v in dataclasses.asdict(self).items() if k != "units"}
        data["quantized_units"] = len(self.units)
        return data

    @classmethod
    def from_log(cls, data: dict) -> "Trial":
        return cls(**{k: data[k] for k in cls.LOGGED if k in data}, cached=True)


class WorkDir:
    """The search's folder: search.json (what it searches), trials.jsonl, best/ and the reports."""

    def __init__(self, path: str | os.PathLike, identity: dict[str, Any]):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.logged: dict[str, Trial] = {}
        search_file = self.path / SEARCH_FILE
        if search_file.is_file():
            previous = json.loads(search_file.read_text(encoding="utf-8"))
            differ = [k for k in RESUME_KEYS if previous.get(k) != identity.get(k)]
            if differ:
                raise ConfigError(
                    f"{self.path} holds a search with a different {', '.join(differ)} "
                    f"({', '.join(f'{k}={previous.get(k)!r}' for k in differ)}): use another `work_dir` or empty it."
                )
            self._read_log()
        else:
            search_file.write_text(json.dumps(identity, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    def _read_log(self) -> None:
        log = self.path / LOG_FILE
        if not log.is_file():
            return
        for number, line in enumerate(log.read_text(encoding="utf-8").splitlines(), 1):
            try:
                trial = Trial.from_log(json.loads(line))
            except (json.JSONDecodeError, TypeError, KeyError):
                # The last line of a log cut by a crash may be partial: that trial simply runs again.
                logger.warning("%s line %d is not a complete trial record; it is ignored.", log, number)
                continue
            self.logged[trial.key] = trial
        if self.logged:
            logger.info("Resuming: %d trials read from %s.", len(self.logged), log)

    def append(self, trial: Trial) -> None:
        with open(self.path / LOG_FILE, "a", encoding="utf-8") as log:
            log.write(json.dumps(trial.to_log(), sort_keys=True) + "\n")
            log.flush()
            os.fsync(log.fileno())
        self.logged[trial.key] = trial

    @property
    def best_dir(self) -> Path:
        return self.path / BEST_DIR

    def save_best(self, model, trial: Trial) -> None:
        """Replace best/ with `model` in one rename: an interruption leaves the previous best whole."""
        with atomic_output_dir(self.best_dir) as staging:
            model.save_pretrained(staging)
            (staging / BEST_TRIAL_FILE).write_text(json.dumps(trial.to_log(), indent=2, sort_keys=True), encoding="utf-8")

    def best_key(self) -> str | None:
        path = self.best_dir / BEST_TRIAL_FILE
        return json.loads(path.read_text(encoding="utf-8"))["key"] if path.is_file() else None
