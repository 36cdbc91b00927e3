"""Typed errors a user can catch. Each message says what went wrong and what to do about it."""


class QuantizationError(Exception):
    """Base class of every error raised by optimum-quantization."""


class ConfigError(QuantizationError, ValueError):
    """A configuration, preset, task, backend or method name is invalid, or a required input is missing."""


class BackendUnavailableError(QuantizationError, ImportError):
    """The backend exists but its dependencies are not installed."""


class ModelNotFoundError(QuantizationError, OSError):
    """The model folder or repository is missing or unreadable."""


class ModelFileError(QuantizationError, OSError):
    """A model file is damaged, truncated or missing, or does not match the recipe saved with it."""


class UnsupportedModelError(QuantizationError, ValueError):
    """The model type or task is not supported by the exporter or the backend."""


class HubError(QuantizationError, OSError):
    """Talking to the Hugging Face Hub failed: network, server error, missing repository or revision."""


class HubAuthenticationError(HubError):
    """No Hugging Face token was found, or the Hub rejected it (401/403). The token is never shown."""


def unknown_name(kind: str, name: object, valid) -> ConfigError:
    """Build the error for an unknown name, listing the valid ones."""
    choices = ", ".join(repr(v) for v in sorted(valid))
    return ConfigError(f"Unknown {kind} {name!r}. Valid {kind}s: {choices}.")


def damaged_file(file, reason: object) -> ModelFileError:
    """Build the error for a model file its runtime cannot read: `reason` is shown on one line."""
    lines = str(reason).strip().splitlines()
    return ModelFileError(f"{file} is damaged or truncated ({lines[0] if lines else 'unreadable'}): save or download "
                          "the model again.")


def unreadable_file(file) -> ModelFileError:
    """Build the error for a model file the process may not read."""
    return ModelFileError(f"{file} is not readable (permission denied): check its permissions.")
