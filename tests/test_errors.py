"""Each bad input raises the documented, typed error with a message that says what to do."""

from __future__ import annotations

import pytest

from optimum.quantization import (
    BackendUnavailableError,
    ConfigError,
    ModelNotFoundError,
    QuantModelForQuestionAnswering,
    QuantModelForSequenceClassification,
    UnsupportedModelError,
)
from optimum.quantization import registry


def test_unknown_backend_lists_valid_ones(tiny_dir):
    with pytest.raises(ConfigError, match="Unknown backend 'tensorflow'.*'onnxruntime'.*'torch'"):
        QuantModelForSequenceClassification.from_pretrained(tiny_dir("text-classification"), backend="tensorflow")


def test_unknown_method_lists_presets(tiny_dir):
    with pytest.raises(ConfigError, match="Unknown quantization preset 'int4'.*'dynamic'.*'static'"):
        QuantModelForSequenceClassification.from_pretrained(tiny_dir("text-classification"), quantize="int4")


def test_static_without_calibration_data_says_what_to_pass(tiny_dir):
    with pytest.raises(ConfigError, match="calibration_dataset=.*quantize='dynamic'"):
        QuantModelForSequenceClassification.from_pretrained(tiny_dir("text-classification"), quantize="static")


def test_missing_model_folder(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        QuantModelForSequenceClassification.from_pretrained(tmp_path / "nowhere", quantize="dynamic")


def test_file_instead_of_folder(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"\0")
    with pytest.raises(ModelNotFoundError, match="is a file"):
        QuantModelForSequenceClassification.from_pretrained(path)


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelNotFoundError, match="holds no config.json"):
        QuantModelForSequenceClassification.from_pretrained(tmp_path)


def test_unreadable_config_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises((ModelNotFoundError, UnsupportedModelError, ConfigError)):
        QuantModelForSequenceClassification.from_pretrained(tmp_path)


def test_backend_without_its_extra_names_the_pip_extra(tiny_dir):
    registry.register_backend("fakeopenvino", "nowhere:Backend", requires=("not_installed_openvino_xyz",), extra="openvino")
    try:
        with pytest.raises(BackendUnavailableError, match=r'pip install "optimum-quantization\[openvino\]"'):
            QuantModelForSequenceClassification.from_pretrained(tiny_dir("text-classification"), backend="fakeopenvino")
    finally:
        registry._REGISTRY.pop("fakeopenvino", None)


def test_model_type_the_exporter_does_not_support(tiny_dir):
    with pytest.raises(UnsupportedModelError, match="'fnet' cannot be exported to ONNX"):
        QuantModelForSequenceClassification.from_pretrained(tiny_dir("unsupported"), quantize="dynamic")


def test_static_config_on_torch_backend_is_refused(tiny_dir):
    with pytest.raises(ConfigError, match="does not support StaticQuantConfig"):
        QuantModelForSequenceClassification.from_pretrained(
            tiny_dir("text-classification"), backend="torch", quantize="static", calibration_dataset=["a"]
        )


def test_quantized_folder_refuses_requantization_and_wrong_task(tiny_dir, tmp_path):
    model = QuantModelForSequenceClassification.from_pretrained(tiny_dir("text-classification"), quantize="dynamic")
    model.save_pretrained(tmp_path / "q")
    with pytest.raises(ConfigError, match="already holds a model quantized"):
        QuantModelForSequenceClassification.from_pretrained(tmp_path / "q", quantize="dynamic")
    with pytest.raises(ConfigError, match="holds a 'text-classification' model"):
        QuantModelForQuestionAnswering.from_pretrained(tmp_path / "q")
    with pytest.raises(ConfigError, match="saved by backend 'onnxruntime', not 'torch'"):
        QuantModelForSequenceClassification.from_pretrained(tmp_path / "q", backend="torch")


def test_export_false_on_plain_checkpoint(tiny_dir):
    with pytest.raises(ConfigError, match="not a quantized model: pass export=True"):
        QuantModelForSequenceClassification.from_pretrained(tiny_dir("text-classification"), export=False)


def test_factory_classes_cannot_be_instantiated():
    with pytest.raises(TypeError, match="from_pretrained"):
        QuantModelForSequenceClassification()
