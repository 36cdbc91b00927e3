"""optimum-quantization: INT8 transformers models on ONNX Runtime and PyTorch, one call away.

The public API is imported lazily: `import optimum.quantization` loads no runtime.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "QuantModelForSequenceClassification": "modeling",
    "QuantModelForQuestionAnswering": "modeling",
    "QuantModelForTokenClassification": "modeling",
    "QuantModelForFeatureExtraction": "modeling",
    "QuantModelForCausalLM": "modeling",
    "LeanCausalLM": "lean_generation",
    "DynamicQuantConfig": "configuration",
    "StaticQuantConfig": "configuration",
    "WeightOnlyQuantConfig": "configuration",
    "CalibrationConfig": "configuration",
    "AccuracyControl": "accuracy_control",
    "AutoQuantConfig": "configuration",
    "QATConfig": "configuration",
    "QATTrainer": "qat.trainer",
    "resolve_quant_config": "configuration",
    "config_from_dict": "configuration",
    "QuantizationRecipe": "recipe",
    "register_backend": "registry",
    "get_backend": "registry",
    "available_backends": "registry",
    "registered_backends": "registry",
    "QuantizationError": "errors",
    "ConfigError": "errors",
    "BackendUnavailableError": "errors",
    "ModelNotFoundError": "errors",
    "ModelFileError": "errors",
    "UnsupportedModelError": "errors",
    "HubError": "errors",
    "HubAuthenticationError": "errors",
    "cpu_info": "hardware",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
