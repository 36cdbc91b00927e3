"""Backend registry: lookup, lazy loading, missing-dependency errors, and no runtime import at package import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from optimum.quantization import registry
from optimum.quantization.errors import BackendUnavailableError, ConfigError
from optimum.quantization.registry import (
    available_backends,
    get_backend,
    register_backend,
    registered_backends,
)


@pytest.fixture
def cleanup_registry():
    """Names registered by a test are removed afterwards, and any built-in entry it replaced is restored."""
    registry_before = dict(registry._REGISTRY)
    loaded_before = dict(registry._LOADED)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(registry_before)
    registry._LOADED.clear()
    registry._LOADED.update(loaded_before)


def test_builtin_backends_available():
    names = available_backends()
    assert "onnxruntime" in names
    assert "torch" in names
    assert {"onnxruntime", "torch"} <= set(registered_backends())
    assert names == sorted(names)


def test_unknown_backend_lists_valid_names():
    with pytest.raises(ConfigError) as info:
        get_backend("nope")
    message = str(info.value)
    assert "'nope'" in message
    for name in registered_backends():
        assert repr(name) in message


def test_backend_with_missing_dependency(cleanup_registry):
    register_backend(
        "needs_missing", "optimum.quantization.backends.torch:TorchBackend",
        requires=("surely_not_installed_pkg_xyz",), extra="foo",
    )
    with pytest.raises(BackendUnavailableError) as info:
        get_backend("needs_missing")
    message = str(info.value)
    assert "optimum-quantization[foo]" in message
    assert "surely_not_installed_pkg_xyz" in message
    assert isinstance(info.value, ImportError)
    assert "needs_missing" not in available_backends()
    assert "needs_missing" in registered_backends()
    assert "needs_missing" not in registry._LOADED


def test_missing_dependency_without_extra_suggests_package(cleanup_registry):
    register_backend("needs_missing_2", "os:sep", requires=("surely_not_installed_pkg_xyz",))
    with pytest.raises(BackendUnavailableError, match="pip install surely_not_installed_pkg_xyz"):
        get_backend("needs_missing_2")


def test_missing_dotted_dependency_is_detected(cleanup_registry):
    register_backend("needs_missing_3", "os:sep", requires=("surely_not_installed_pkg_xyz.sub",), extra="bar")
    assert "needs_missing_3" not in available_backends()
    with pytest.raises(BackendUnavailableError, match=r"optimum-quantization\[bar\]"):
        get_backend("needs_missing_3")


def test_decorator_registration(cleanup_registry):
    @register_backend("dummy")
    class DummyBackend:
        def hello(self):
            return "hi"

    assert DummyBackend.__name__ == "DummyBackend"  # the decorator returns the class itself
    assert DummyBackend.name == "dummy"
    assert "dummy" in registered_backends()
    assert "dummy" in available_backends()
    backend = get_backend("dummy")
    assert isinstance(backend, DummyBackend)
    assert backend.hello() == "hi"
    assert backend.name == "dummy"
    # Each call gives a fresh instance of the cached class.
    assert get_backend("dummy") is not backend


def test_decorator_with_requires(cleanup_registry):
    @register_backend("dummy_req", requires=("surely_not_installed_pkg_xyz",), extra="foo")
    class DummyBackend:
        pass

    assert "dummy_req" not in available_backends()
    with pytest.raises(BackendUnavailableError, match=r"optimum-quantization\[foo\]"):
        get_backend("dummy_req")


def test_string_target_is_imported_lazily(cleanup_registry, tmp_path, monkeypatch):
    module_name = "qz_lazy_backend_module_for_tests"
    (tmp_path / f"{module_name}.py").write_text("class LazyBackend:\n    pass\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module_name, raising=False)

    register_backend("lazy", f"{module_name}:LazyBackend", requires=(module_name,))
    assert "lazy" in available_backends()  # the availability check finds the module without importing it
    assert module_name not in sys.modules
    assert "lazy" not in registry._LOADED

    backend = get_backend("lazy")
    assert module_name in sys.modules
    assert type(backend).__name__ == "LazyBackend"
    assert type(backend).name == "lazy"
    assert registry._LOADED["lazy"] is sys.modules[module_name].LazyBackend
    monkeypatch.delitem(sys.modules, module_name)


def test_reregistering_replaces_entry(cleanup_registry):
    @register_backend("dummy_swap")
    class First:
        pass

    assert isinstance(get_backend("dummy_swap"), First)

    @register_backend("dummy_swap")
    class Second:
        pass

    assert isinstance(get_backend("dummy_swap"), Second)


def test_cleanup_fixture_removed_test_registrations():
    # Runs after the tests above in file order: none of their names survive.
    for name in ("needs_missing", "needs_missing_2", "needs_missing_3", "dummy", "dummy_req", "lazy", "dummy_swap"):
        assert name not in registry._REGISTRY
        assert name not in registry._LOADED


def _modules_after(code: str) -> list[str]:
    script = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


HEAVY = ("onnxruntime", "torch", "transformers")


def _heavy_loaded(modules):
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def test_package_import_loads_no_runtime():
    modules = _modules_after("import optimum.quantization")
    assert "optimum.quantization" in modules
    assert _heavy_loaded(modules) == []


def test_configs_registry_and_availability_check_load_no_runtime():
    modules = _modules_after(
        "import optimum.quantization as q\n"
        "q.resolve_quant_config('static').to_json_string()\n"
        "assert 'onnxruntime' in q.available_backends()\n"
        "q.cpu_info()\n"
    )
    assert "optimum.quantization.registry" in modules
    assert "optimum.quantization.configuration" in modules
    assert _heavy_loaded(modules) == []
