"""ONNX Runtime with OpenVINOExecutionProvider over the ONNX Runtime backend's artifacts (FP32, dynamic, Q/DQ INT8).

Needs the `onnxruntime-openvino` wheel, which replaces the `onnxruntime` package folder: it lives in its own
environment (`make test-onnxruntime-openvino`). Nodes the provider cannot take (ORT's fused contrib ops such
as QAttention in dynamic INT8 graphs) run on the CPU provider behind it.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime

from ..configuration import DynamicQuantConfig, StaticQuantConfig
from ..errors import BackendUnavailableError, ConfigError
from ..recipe import QuantizationRecipe
from .onnxruntime import OnnxRuntimeBackend

PROVIDER = "OpenVINOExecutionProvider"
DEFAULT_OPTIONS = {"device_type": "CPU", "precision": "FP32"}
DEVICE_PRECISIONS = {"CPU": ("FP32", "ACCURACY"), "GPU": ("FP32", "FP16", "ACCURACY"), "NPU": ("FP16", "ACCURACY")}


def provider_options(device: str | None, precision: str | None, saved: dict | None = None) -> dict:
    """The provider options to run with: the user's, else those saved in the recipe, else CPU/FP32."""
    options = {**DEFAULT_OPTIONS, **(saved or {})}
    if device is not None:
        options["device_type"] = device.upper()
    if precision is not None:
        options["precision"] = precision.upper()
    base = options["device_type"].split(".")[0].split(":")[0]
    valid = DEVICE_PRECISIONS.get(base)
    if valid is not None and options["precision"] not in valid:
        raise ConfigError(f"OpenVINO EP precision {options['precision']!r} is not available on {base}; use one of {valid}.")
    return options


class OnnxRuntimeOpenVINOBackend(OnnxRuntimeBackend):
    supported_configs = (DynamicQuantConfig, StaticQuantConfig)
    backend_load_kwargs = ("device", "precision")  # the execution provider's (provider_options)

    def __init__(self):
        if PROVIDER not in onnxruntime.get_available_providers():
            raise BackendUnavailableError(
                f"The installed onnxruntime ({onnxruntime.__version__}) has no {PROVIDER}: the plain `onnxruntime` "
                "wheel shadows `onnxruntime-openvino` (both install the same package folder). Use a separate "
                'environment with only `pip install "optimum-quantization[onnxruntime-openvino]"`.'
            )

    def check_supports(self, task, config) -> None:
        super().check_supports(task, config)
        if isinstance(config, StaticQuantConfig) and config.format != "qdq":
            raise ConfigError("OpenVINO's EP runs Q/DQ INT8 graphs: use format='qdq' with backend='onnxruntime-openvino'.")

    def _load_model(self, path: Path, recipe: QuantizationRecipe, device=None, precision=None,
                    **load_kwargs):
        options = provider_options(device, precision, recipe.details.get("execution_provider", {}).get("options"))
        recipe.details["execution_provider"] = {"name": PROVIDER, "options": options}
        load_kwargs.setdefault("provider", PROVIDER)
        load_kwargs.setdefault("provider_options", options)
        return super()._load_model(path, recipe, **load_kwargs)
