"""Backend registry: name -> lazily imported backend class.

Entries are ``"module:Class"`` strings so that importing optimum.quantization never imports a runtime;
the module is imported on the first `get_backend(name)`, after checking its dependencies are installed.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass

from .errors import BackendUnavailableError, unknown_name


@dataclass(frozen=True)
class BackendEntry:
    name: str
    target: str | type  # "package.module:ClassName" or the class itself
    requires: tuple[str, ...] = ()  # importable module names the backend needs
    extra: str | None = None  # pip extra that installs them
    requires_dists: tuple[str, ...] = ()  # installed distributions it needs (when the module name is ambiguous)
    note: str | None = None  # said after the install hint when something is missing

    def missing(self) -> list[str]:
        modules = [module for module in self.requires if not _importable(module)]
        return modules + [dist for dist in self.requires_dists if not _installed(dist)]


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def _import_target(target: str):
    """The object a lazy "package.module:name" reference points to, imported now."""
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


_REGISTRY: dict[str, BackendEntry] = {}
_LOADED: dict[str, type] = {}


def register_backend(
    name: str, target: str | type | None = None, *, requires=(), extra: str | None = None, requires_dists=(), note=None
):
    """Register a backend by name.

    Use as a call, ``register_backend("mine", "pkg.mod:MyBackend", requires=("onnxruntime",))``, or as a
    class decorator, ``@register_backend("mine")``. Registering an existing name replaces it.
    """

    def _register(obj):
        _REGISTRY[name] = BackendEntry(name, obj, tuple(requires), extra, tuple(requires_dists), note)
        _LOADED.pop(name, None)
        if isinstance(obj, type):
            obj.name = name
        return obj

    if target is None:
        return _register
    _register(target)
    return target


def get_backend(name: str):
    """Return an instance of the named backend, or raise a clear error if it is unknown or not installed."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise unknown_name("backend", name, _REGISTRY)
    missing = entry.missing()
    if missing:
        hint = f'pip install "optimum-quantization[{entry.extra}]"' if entry.extra else f"pip install {' '.join(missing)}"
        raise BackendUnavailableError(
            f"Backend {name!r} needs {', '.join(missing)}, which is not installed. Install it with: {hint}"
            + (f". {entry.note}" if entry.note else "")
        )
    if name not in _LOADED:
        target = _import_target(entry.target) if isinstance(entry.target, str) else entry.target
        target.name = name
        _LOADED[name] = target
    return _LOADED[name]()


def pip_install_target(name: str) -> str:
    """What to `pip install` to run backend `name`: the package, with the backend's extra when it has one."""
    entry = _REGISTRY.get(name)
    return f"optimum-quantization[{entry.extra}]" if entry is not None and entry.extra else "optimum-quantization"


def registered_backends() -> list[str]:
    return sorted(_REGISTRY)


def available_backends() -> list[str]:
    """Names of registered backends whose dependencies are installed."""
    return sorted(name for name, entry in _REGISTRY.items() if not entry.missing())


# Built-in backends.
register_backend(
    "onnxruntime",
    "optimum.quantization.backends.onnxruntime:OnnxRuntimeBackend",
    requires=("onnxruntime", "onnx", "optimum.onnxruntime"),
    extra="onnxruntime",
)
register_backend("torch", "optimum.quantization.backends.torch:TorchBackend", requires=("torch",))
register_backend(
    "tensorrt",
    "optimum.quantization.backends.tensorrt:TensorRTBackend",
    requires=("onnxruntime", "onnx", "optimum.onnxruntime"),
    extra="onnxruntime",
)
register_backend(
    "openvino",
    "optimum.quantization.backends.openvino:OpenVINOBackend",
    requires=("openvino", "nncf", "optimum.intel"),
    extra="openvino,nncf",
)
register_backend(
    "onnxruntime-openvino",
    "optimum.quantization.backends.onnxruntime_openvino:OnnxRuntimeOpenVINOBackend",
    requires=("onnxruntime", "onnx", "optimum.onnxruntime"),
    requires_dists=("onnxruntime-openvino",),
    extra="onnxruntime-openvino",
    note=(
        "Its wheel replaces the `onnxruntime` package, so it cannot share an environment with the "
        "`onnxruntime` extra: create a separate virtual environment for it (see the README, `make test-onnxruntime-openvino`)"
    ),
)


# Config types that no single backend runs: a handler above the backends does (the accuracy-aware search
# tries several backends' configs). Config class name -> lazy "module:function", imported on first use.
_CONFIG_HANDLERS: dict[str, str] = {"AutoQuantConfig": "optimum.quantization.autoquant:quantize_auto"}


def config_handler(config):
    """The function that builds a model for `config` when no single backend does, else None."""
    target = _CONFIG_HANDLERS.get(type(config).__name__)
    return None if target is None else _import_target(target)
