"""Configs: validation, tagged/versioned (de)serialisation, presets, and the saved recipe file."""

from __future__ import annotations

import json

import pytest

from optimum.quantization import configuration
from optimum.quantization.configuration import (
    CALIBRATION_METHODS,
    AutoQuantConfig,
    CalibrationConfig,
    DynamicQuantConfig,
    StaticQuantConfig,
    config_from_dict,
    config_from_json_string,
    resolve_quant_config,
)
from optimum.quantization.errors import ConfigError
from optimum.quantization.presets import DEFAULT_EXCLUDE, PRESETS
from optimum.quantization.recipe import FORMAT_VERSION, RECIPE_FILE, QuantizationRecipe, find_recipe

NON_DEFAULT_CONFIGS = [
    pytest.param(
        StaticQuantConfig(
            calibration=CalibrationConfig(method="percentile", percentile=99.9, num_samples=16, sequence_length=64),
            format="qoperator",
            per_channel=False,
            symmetric=True,
            reduce_range=True,
            weight_type="uint8",
            exclude=["encoder.layer.0.*", "pooler*"],
            keep_default_exclusions=False,
            op_types=["MatMul", "Gemm"],
        ),
        id="static-percentile-qoperator",
    ),
    pytest.param(
        StaticQuantConfig(calibration=CalibrationConfig(method="entropy"), exclude=["embeddings*"]),
        id="static-entropy",
    ),
    pytest.param(
        DynamicQuantConfig(
            per_channel=True,
            reduce_range=False,
            exclude=["classifier*", "encoder.layer.11.*"],
            op_types=["MatMul"],
            optimize_graph=False,
        ),
        id="dynamic-per-channel",
    ),
]


def _assert_round_trips(config):
    data = config.to_dict()
    assert data["_type"] == type(config).__name__
    assert data["_version"] == type(config).VERSION
    # to_dict output must be plain JSON (no dataclass instances left inside).
    assert json.loads(json.dumps(data)) == data

    from_dict = config_from_dict(data)
    assert type(from_dict) is type(config)
    assert from_dict == config

    from_json = config_from_json_string(config.to_json_string())
    assert type(from_json) is type(config)
    assert from_json == config
    # Serialising the reloaded object gives the same text again.
    assert from_json.to_json_string() == config.to_json_string()
    return from_json


# --------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_round_trips(preset):
    config = resolve_quant_config(preset)
    class_name, kwargs = PRESETS[preset]
    assert type(config).__name__ == class_name
    for key, value in kwargs.items():
        assert getattr(config, key) == value
    _assert_round_trips(config)


@pytest.mark.parametrize("config", NON_DEFAULT_CONFIGS)
def test_non_default_configs_round_trip(config):
    reloaded = _assert_round_trips(config)
    if isinstance(config, StaticQuantConfig):
        assert isinstance(reloaded.calibration, CalibrationConfig)
        assert reloaded.calibration == config.calibration


def test_static_percentile_round_trip_keeps_every_field():
    config = StaticQuantConfig(
        calibration=CalibrationConfig(method="percentile", percentile=99.9),
        exclude=["encoder.layer.3.*"],
        per_channel=False,
        format="qoperator",
    )
    reloaded = config_from_json_string(config.to_json_string())
    assert reloaded.calibration.method == "percentile"
    assert reloaded.calibration.percentile == 99.9
    assert reloaded.exclude == ["encoder.layer.3.*"]
    assert reloaded.per_channel is False
    assert reloaded.format == "qoperator"
    # A non-default config must not compare equal to the default one (equality is field-wise).
    assert reloaded != StaticQuantConfig()


def test_serialised_form_is_tagged_and_versioned():
    data = json.loads(StaticQuantConfig().to_json_string())
    assert set(data) == {"_type", "_version", "_data"}
    assert data["_type"] == "StaticQuantConfig"
    assert data["_version"] == 1
    assert data["_data"]["calibration"] == {"method": "minmax", "percentile": 99.99, "num_samples": 128, "sequence_length": 128}


def test_calibration_accepts_dict_and_method_name():
    assert StaticQuantConfig(calibration={"method": "entropy"}).calibration == CalibrationConfig(method="entropy")
    assert StaticQuantConfig(calibration="percentile").calibration == CalibrationConfig(method="percentile")
    with pytest.raises(ConfigError, match="calibration"):
        StaticQuantConfig(calibration=42)


def test_requires_calibration_flags():
    assert StaticQuantConfig.requires_calibration is True
    assert DynamicQuantConfig.requires_calibration is False


# --------------------------------------------------------------------------------------------- resolve_quant_config


def test_resolve_none_returns_none():
    assert resolve_quant_config(None) is None


def test_resolve_config_returns_same_object():
    config = StaticQuantConfig(per_channel=False)
    assert resolve_quant_config(config) is config


def test_resolve_presets():
    assert resolve_quant_config("dynamic") == DynamicQuantConfig()
    assert resolve_quant_config("int8") == DynamicQuantConfig()
    assert resolve_quant_config("static") == StaticQuantConfig()
    # Each call builds a fresh object: mutating one must not leak into the next.
    first = resolve_quant_config("dynamic")
    first.exclude.append("x")
    assert resolve_quant_config("dynamic").exclude == []


def test_resolve_dict():
    config = StaticQuantConfig(calibration=CalibrationConfig(method="entropy"), exclude=["a*"])
    assert resolve_quant_config(config.to_dict()) == config


def test_resolve_rejects_other_types():
    with pytest.raises(ConfigError, match="preset name"):
        resolve_quant_config(8)


# --------------------------------------------------------------------------------------------- errors


def test_unknown_preset_lists_valid_presets():
    with pytest.raises(ConfigError) as info:
        resolve_quant_config("int4-magic")
    message = str(info.value)
    assert "int4-magic" in message
    for name in PRESETS:
        assert repr(name) in message


def test_planned_preset_says_not_available_and_lists_presets(monkeypatch):
    monkeypatch.setattr(configuration, "PLANNED_PRESETS", ("int2-someday",))
    with pytest.raises(ConfigError) as info:
        resolve_quant_config("int2-someday")
    message = str(info.value)
    assert "not available" in message
    for name in PRESETS:
        assert name in message


def test_auto_preset_is_an_accuracy_aware_search_config():
    config = resolve_quant_config("auto")
    assert isinstance(config, AutoQuantConfig)
    assert config.tolerance == 0.3 and config.backends == ["onnxruntime"]


def test_auto_config_round_trips_without_its_callable_and_dataset():
    def my_metric(model):
        return 1.0

    config = AutoQuantConfig(metric=my_metric, tolerance=0.5, eval_dataset=["a", "b"], candidates=["dynamic"], seed=3)
    data = json.loads(config.to_json_string())
    assert "eval_dataset" not in data["_data"] and data["_data"]["metric"] is None
    assert data["_data"]["metric_name"].endswith("my_metric")
    assert data["_data"]["eval_dataset_description"] == "list, 2 examples"
    loaded = config_from_dict(data)
    assert loaded.metric is None and loaded.eval_dataset is None
    assert loaded.replace(metric=my_metric, eval_dataset=["a", "b"]) == config
    named = AutoQuantConfig(metric="f1", tolerance=1.0)
    assert config_from_json_string(named.to_json_string()) == named


@pytest.mark.parametrize(
    "kwargs, field",
    [({"tolerance": -1}, "tolerance"), ({"metric": 3}, "metric"), ({"backends": []}, "backends"),
     ({"max_trials": 0}, "max_trials"), ({"time_budget_s": 0}, "time_budget_s"), ({"latency_noise": 1.5}, "latency_noise")],
)
def test_bad_auto_config_names_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        AutoQuantConfig(**kwargs)


def test_unknown_calibration_method_lists_methods():
    with pytest.raises(ConfigError) as info:
        CalibrationConfig(method="kl-divergence")
    message = str(info.value)
    assert "kl-divergence" in message
    for method in CALIBRATION_METHODS:
        assert repr(method) in message


def test_unknown_calibration_method_in_dict():
    data = StaticQuantConfig().to_dict()
    data["_data"]["calibration"]["method"] = "median"
    with pytest.raises(ConfigError, match="'minmax'"):
        config_from_dict(data)


@pytest.mark.parametrize("percentile", [0, -1, 100.5])
def test_bad_percentile(percentile):
    with pytest.raises(ConfigError, match="percentile"):
        CalibrationConfig(percentile=percentile)


@pytest.mark.parametrize("kwargs", [{"num_samples": 0}, {"sequence_length": 1}])
def test_bad_calibration_sizes(kwargs):
    with pytest.raises(ConfigError):
        CalibrationConfig(**kwargs)


def test_unknown_field_in_dict_lists_valid_fields():
    data = DynamicQuantConfig().to_dict()
    data["_data"]["per_chanel"] = True  # typo
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    message = str(info.value)
    assert "per_chanel" in message
    assert "per_channel" in message and "exclude" in message


def test_unknown_field_in_nested_calibration_dict():
    data = StaticQuantConfig().to_dict()
    data["_data"]["calibration"]["bins"] = 2048
    with pytest.raises(ConfigError, match="bins"):
        config_from_dict(data)


@pytest.mark.parametrize("type_name", ["os.system", "CalibrationConfig", "_QuantConfigBase", "dict"])
def test_type_outside_allow_list_is_refused(type_name):
    with pytest.raises(ConfigError) as info:
        config_from_dict({"_type": type_name, "_version": 1, "_data": {}})
    message = str(info.value)
    assert type_name in message
    for name in configuration.CONFIG_TYPES:
        assert repr(name) in message


def test_type_outside_allow_list_never_executes(monkeypatch):
    import os

    called = []
    monkeypatch.setattr(os, "system", lambda *args: called.append(args))
    with pytest.raises(ConfigError):
        config_from_json_string(json.dumps({"_type": "os.system", "_version": 1, "_data": {"command": "echo hi"}}))
    assert called == []


@pytest.mark.parametrize("data", [None, [], "StaticQuantConfig", {"_data": {}}])
def test_malformed_serialised_config(data):
    with pytest.raises(ConfigError, match="_type"):
        config_from_dict(data)


def test_newer_version_is_refused():
    data = DynamicQuantConfig().to_dict()
    data["_version"] = DynamicQuantConfig.VERSION + 1
    with pytest.raises(ConfigError, match="newer than this library") as info:
        config_from_dict(data)
    assert "upgrade" in str(info.value)


def test_older_or_missing_version_loads():
    data = DynamicQuantConfig(per_channel=True).to_dict()
    del data["_version"]
    assert config_from_dict(data) == DynamicQuantConfig(per_channel=True)


@pytest.mark.parametrize("value", ["yes", "true", 2, None, "AUTO"])
@pytest.mark.parametrize("cls", [DynamicQuantConfig, StaticQuantConfig])
def test_bad_reduce_range(cls, value):
    with pytest.raises(ConfigError, match="reduce_range") as info:
        cls(reduce_range=value)
    assert "'auto'" in str(info.value)


@pytest.mark.parametrize("value", [True, False, "auto"])
def test_good_reduce_range(value):
    assert DynamicQuantConfig(reduce_range=value).reduce_range == value


def test_static_symmetric_auto_takes_the_backend_default():
    config = StaticQuantConfig()
    assert config.symmetric == "auto"
    assert config.symmetric_activations(True) is True and config.symmetric_activations(False) is False
    for explicit in (True, False):
        assert StaticQuantConfig(symmetric=explicit).symmetric_activations(not explicit) is explicit
    _assert_round_trips(config)


@pytest.mark.parametrize("value", ["yes", 1, 0, None, "AUTO"])
def test_bad_static_symmetric(value):
    with pytest.raises(ConfigError, match="symmetric") as info:
        StaticQuantConfig(symmetric=value)
    assert "'auto'" in str(info.value)


@pytest.mark.parametrize("cls", [DynamicQuantConfig, StaticQuantConfig])
def test_exclude_as_plain_string_is_refused(cls):
    with pytest.raises(ConfigError, match="list of strings"):
        cls(exclude="classifier*")


def test_exclude_with_non_string_item_is_refused():
    with pytest.raises(ConfigError, match="exclude"):
        DynamicQuantConfig(exclude=["ok", 3])


def test_op_types_as_plain_string_is_refused():
    with pytest.raises(ConfigError, match="op_types"):
        DynamicQuantConfig(op_types="MatMul")


def test_exclude_tuple_is_normalised_to_list():
    config = DynamicQuantConfig(exclude=("a*", "b*"))
    assert config.exclude == ["a*", "b*"]
    assert config_from_json_string(config.to_json_string()) == config


def test_unknown_weight_type_lists_choices():
    with pytest.raises(ConfigError, match="'int8', 'uint8'"):
        DynamicQuantConfig(weight_type="int4")


def test_unknown_static_format_lists_choices():
    with pytest.raises(ConfigError, match="'qdq', 'qoperator'"):
        StaticQuantConfig(format="qlinear")


def test_config_error_is_a_value_error():
    with pytest.raises(ValueError):
        resolve_quant_config("nope")


# --------------------------------------------------------------------------------------------- exclusions / replace


@pytest.mark.parametrize("cls", [DynamicQuantConfig, StaticQuantConfig])
def test_exclusion_patterns_default_block_first(cls):
    config = cls(exclude=["encoder.layer.0.*", "lm_head", "pooler"])
    patterns = config.exclusion_patterns()
    defaults = list(cls.default_exclude)
    assert defaults[: len(DEFAULT_EXCLUDE)] == list(DEFAULT_EXCLUDE)  # the shared block is in every recipe
    assert patterns[: len(defaults)] == defaults
    # User patterns follow, in order, without duplicating the default block.
    assert patterns[len(defaults) :] == ["encoder.layer.0.*", "pooler"]
    assert patterns.count("lm_head") == 1


def test_static_keeps_heavy_tailed_projections_in_fp32_by_default():
    assert "*.output.dense" in StaticQuantConfig().exclusion_patterns()
    assert "*.output.dense" not in DynamicQuantConfig().exclusion_patterns()


def test_exclusion_patterns_without_defaults():
    config = DynamicQuantConfig(exclude=["lm_head", "x*"], keep_default_exclusions=False)
    assert config.exclusion_patterns() == ["lm_head", "x*"]
    assert DynamicQuantConfig(keep_default_exclusions=False).exclusion_patterns() == []


def test_exclusion_patterns_defaults_only():
    assert DynamicQuantConfig().exclusion_patterns() == list(DEFAULT_EXCLUDE)


def test_replace_does_not_mutate_original():
    original = StaticQuantConfig(exclude=["a*"], per_channel=True)
    snapshot = original.to_json_string()
    changed = original.replace(per_channel=False, format="qoperator", exclude=["b*"])
    assert changed is not original
    assert (changed.per_channel, changed.format, changed.exclude) == (False, "qoperator", ["b*"])
    assert (original.per_channel, original.format, original.exclude) == (True, "qdq", ["a*"])
    assert original.to_json_string() == snapshot


def test_replace_copy_does_not_share_mutable_fields():
    original = StaticQuantConfig(exclude=["a*"])
    snapshot = original.to_json_string()
    copy = original.replace()
    assert copy == original
    copy.exclude.append("b*")
    copy.calibration.method = "entropy"
    assert original.to_json_string() == snapshot


def test_replace_validates():
    with pytest.raises(ConfigError):
        DynamicQuantConfig().replace(reduce_range="maybe")
    with pytest.raises(ConfigError):
        StaticQuantConfig().replace(format="nope")


# --------------------------------------------------------------------------------------------- recipe


def _recipe(**overrides):
    fields = dict(
        backend="onnxruntime",
        task="text-classification",
        quantization=StaticQuantConfig(
            calibration=CalibrationConfig(method="percentile", percentile=99.9), exclude=["encoder.layer.0.*"]
        ),
        source_model="some/model",
        details={"op_types": ["MatMul"], "excluded_nodes": 3},
        metrics={"accuracy": 0.91},
        hardware={"model": "Test CPU", "isa": ["avx2"]},
        versions={"optimum-quantization": "0.1.0", "onnxruntime": "1.32.0"},
    )
    fields.update(overrides)
    return QuantizationRecipe(**fields)


def test_recipe_save_load_round_trip(tmp_path):
    recipe = _recipe()
    path = recipe.save(tmp_path)
    assert path == tmp_path / RECIPE_FILE
    assert path.is_file()

    loaded = QuantizationRecipe.load(tmp_path)
    assert loaded == recipe
    assert isinstance(loaded.quantization, StaticQuantConfig)
    assert loaded.quantization == recipe.quantization
    assert loaded.versions == {"optimum-quantization": "0.1.0", "onnxruntime": "1.32.0"}
    assert loaded.format_version == FORMAT_VERSION
    assert find_recipe(tmp_path) == recipe


def test_recipe_default_versions_recorded(tmp_path):
    recipe = QuantizationRecipe(backend="torch", task="feature-extraction", quantization=DynamicQuantConfig())
    assert recipe.versions.get("optimum-quantization") == "0.1.0"
    recipe.save(tmp_path)
    loaded = QuantizationRecipe.load(tmp_path)
    assert loaded.versions == recipe.versions
    assert loaded.quantization == DynamicQuantConfig()


def test_recipe_without_quantization_round_trips(tmp_path):
    recipe = _recipe(quantization=None)
    recipe.save(tmp_path)
    assert QuantizationRecipe.load(tmp_path) == recipe


def test_recipe_file_is_plain_json(tmp_path):
    _recipe().save(tmp_path)
    data = json.loads((tmp_path / RECIPE_FILE).read_text(encoding="utf-8"))
    assert data["quantization"]["_type"] == "StaticQuantConfig"
    assert data["format_version"] == FORMAT_VERSION


def test_recipe_too_new_format_version(tmp_path):
    data = _recipe().to_dict()
    data["format_version"] = FORMAT_VERSION + 1
    (tmp_path / RECIPE_FILE).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ConfigError, match="newer than this library"):
        QuantizationRecipe.load(tmp_path)


def test_recipe_with_too_new_config_version(tmp_path):
    data = _recipe().to_dict()
    data["quantization"]["_version"] = 99
    (tmp_path / RECIPE_FILE).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ConfigError, match="newer"):
        QuantizationRecipe.load(tmp_path)


def test_recipe_invalid_json(tmp_path):
    (tmp_path / RECIPE_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid JSON"):
        QuantizationRecipe.load(tmp_path)


def test_recipe_missing_required_keys():
    with pytest.raises(ConfigError, match="backend"):
        QuantizationRecipe.from_dict({"task": "text-classification", "quantization": None})


def test_recipe_ignores_unknown_keys():
    data = _recipe().to_dict()
    data["added_in_a_later_release"] = {"x": 1}
    assert QuantizationRecipe.from_dict(data) == _recipe()


def test_find_recipe_none_without_file(tmp_path):
    assert find_recipe(tmp_path) is None


# ------------------------------------------------------------------------------------- field types

def _typed_fields():
    import dataclasses
    import typing

    for cls in (CalibrationConfig, *configuration.CONFIG_TYPES.values()):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if hints[f.name] is not typing.Any:
                yield pytest.param(cls, f.name, id=f"{cls.__name__}.{f.name}")


@pytest.mark.parametrize("cls,name", list(_typed_fields()))
def test_every_field_refuses_a_value_of_another_type(cls, name):
    with pytest.raises(ConfigError, match=f"`{name}`"):
        cls(**{name: object()})


@pytest.mark.parametrize(
    "cls,name,value",
    [
        (DynamicQuantConfig, "per_channel", "yes"),
        (StaticQuantConfig, "per_channel", "no"),
        (DynamicQuantConfig, "keep_default_exclusions", "false"),
        (DynamicQuantConfig, "optimize_graph", 1),
        (configuration.QATConfig, "learn_ranges", "yes"),
        (AutoQuantConfig, "show_progress", "yes"),
        (CalibrationConfig, "num_samples", True),
        (CalibrationConfig, "num_samples", "128"),
        (CalibrationConfig, "percentile", "99.9"),
        (DynamicQuantConfig, "smoothing_samples", 64.0),
        (AutoQuantConfig, "seed", "0"),
        (configuration.QATConfig, "range_learning_rate", "0.01"),
        (DynamicQuantConfig, "reduce_range", 1),
        (DynamicQuantConfig, "exclude", ["classifier", 3]),
        (DynamicQuantConfig, "smoothing_without_data", 0),
    ],
)
def test_wrong_types_are_refused_naming_the_field_and_the_expected_shape(cls, name, value):
    with pytest.raises(ConfigError, match=f"`{name}`.* must be ") as info:
        cls(**{name: value})
    assert repr(value) in str(info.value)


def test_matching_types_still_load():
    import numpy as np

    config = CalibrationConfig(percentile=99, num_samples=np.int64(16))  # an int where a float goes; numpy ints
    assert config.num_samples == 16
    assert DynamicQuantConfig(exclude=("classifier",)).exclude == ["classifier"]
    assert configuration.QATConfig(quantize_residual_adds=None).quantize_residual_adds is None
