"""ONNX Runtime with OpenVINOExecutionProvider. Its wheel replaces `onnxruntime`, so these tests run in their own
environment (`make test-onnxruntime-openvino`, marker `onnxruntime_openvino`); the main one skips them, saying why,
and checks that asking for the backend there gives a clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from conftest import SENTENCES

from optimum.quantization import BackendUnavailableError, ConfigError, QuantModelForSequenceClassification, get_backend


def openvino_ep_available() -> bool:
    try:
        import onnxruntime
    except ImportError:
        return False
    return "OpenVINOExecutionProvider" in onnxruntime.get_available_providers()


needs_ep = pytest.mark.skipif(
    not openvino_ep_available(),
    reason="onnxruntime has no OpenVINOExecutionProvider here: these run in the onnxruntime-openvino "
    "environment (make test-onnxruntime-openvino)",
)


@pytest.mark.skipif(openvino_ep_available(), reason="the OpenVINO EP is installed: nothing is missing to report")
def test_missing_execution_provider_names_the_extra_and_the_separate_environment():
    with pytest.raises(BackendUnavailableError) as err:
        get_backend("onnxruntime-openvino")
    message = str(err.value)
    assert "optimum-quantization[onnxruntime-openvino]" in message and "separate virtual environment" in message


@pytest.mark.onnxruntime_openvino
@needs_ep
@pytest.mark.parametrize("quantize, int8_op", [(None, None), ("dynamic", "MatMulInteger"), ("static", "QuantizeLinear")])
def test_runs_our_onnx_artifacts_on_the_openvino_ep(tiny_dir, tmp_path, quantize, int8_op):
    folder = tiny_dir("text-classification")
    model = QuantModelForSequenceClassification.from_pretrained(
        folder, backend="onnxruntime-openvino", quantize=quantize, calibration_dataset=SENTENCES
    )
    assert model.model.get_providers()[0] == "OpenVINOExecutionProvider"
    details = model.quantization_recipe.details
    assert details["execution_provider"] == {"name": "OpenVINOExecutionProvider", "options": {"device_type": "CPU", "precision": "FP32"}}
    if int8_op:
        assert details["int8_ops"].get(int8_op, 0) > 0, details["int8_ops"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer(SENTENCES, return_tensors="pt", padding=True)
    with torch.no_grad():
        reference = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()(**inputs).logits.numpy()
    logits = model(**inputs).logits.numpy()
    assert np.abs(reference - logits).max() < (1e-3 if quantize is None else 1.0)
    assert (reference.argmax(-1) == logits.argmax(-1)).mean() >= 0.9
    model.save_pretrained(tmp_path / "saved")
    reloaded = QuantModelForSequenceClassification.from_pretrained(tmp_path / "saved", precision="accuracy")
    assert reloaded.quantization_recipe.details["execution_provider"]["options"]["precision"] == "ACCURACY"
    assert reloaded.quantization_recipe.backend == "onnxruntime-openvino"
    np.testing.assert_allclose(reloaded(**inputs).logits.numpy(), logits, atol=1e-3)
    assert len(transformers.pipeline("text-classification", model=reloaded, tokenizer=tokenizer)(SENTENCES[:2])) == 2


@pytest.mark.onnxruntime_openvino
@needs_ep
def test_bad_options_are_refused(tiny_dir):
    folder = tiny_dir("text-classification")
    with pytest.raises(ConfigError, match="precision"):
        QuantModelForSequenceClassification.from_pretrained(folder, backend="onnxruntime-openvino", precision="FP16")
    with pytest.raises(ConfigError, match="qdq"):
        QuantModelForSequenceClassification.from_pretrained(
            folder, backend="onnxruntime-openvino", quantize={"_type": "StaticQuantConfig", "_data": {"format": "qoperator"}},
            calibration_dataset=SENTENCES,
        )

