"""Outlier channels of the FFN's second GEMM split into a float side path before OpenVINO static INT8: the same FP32
function, the side path outside NNCF's quantization, and less INT8 error when one channel sets the activation scale."""

from __future__ import annotations

import numpy as np
import pytest
import transformers
from conftest import OUTLIER_CHANNEL, SENTENCES

pytest.importorskip("openvino", reason="the openvino extra is not installed (pip install 'optimum-quantization[openvino,nncf]')")
pytest.importorskip("nncf", reason="the nncf extra is not installed (pip install 'optimum-quantization[openvino,nncf]')")

import openvino as ov  # noqa: E402
from test_openvino_backend import F32_COMPUTE, STATIC, assert_close, torch_logits  # noqa: E402

from optimum.quantization import QuantModelForSequenceClassification, StaticQuantConfig  # noqa: E402
from optimum.quantization.backends.ov_outlier_channels import feed_forwards, split_outlier_channels  # noqa: E402

FIRST_FFN_OUTPUT = "__module.bert.encoder.layer.0.output.dense/aten::linear/MatMul"
SIDE_PATH = "__module.bert.encoder.layer.0.output.dense.outlier_channels/"


def exported(folder):
    """(the FP32 OpenVINO model of `folder`, tokenized SENTENCES as feeds)."""
    from optimum.intel import OVModelForSequenceClassification

    model = OVModelForSequenceClassification.from_pretrained(folder, export=True, compile=False).model
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    names = {i.get_any_name() for i in model.inputs}
    feeds = [{k: v.astype(np.int64) for k, v in tokenizer(s, return_tensors="np").items() if k in names}
             for s in SENTENCES]
    return model, feeds


def run_f32(model: ov.Model, feeds) -> np.ndarray:
    compiled = ov.Core().compile_model(model, "CPU", F32_COMPUTE)
    return np.concatenate([np.asarray(compiled(feed)[0]) for feed in feeds])


def test_split_finds_the_outlier_and_keeps_the_fp32_function(outlier_bert):
    model, feeds = exported(outlier_bert)
    untouched = model.clone()  # for the skip check below: one export, not two
    # Both layers' FFNs, and the pooler (dense -> tanh -> classifier), which the static default skips as a head.
    assert len(feed_forwards(model, skip=set())) == 3
    before = run_f32(model, feeds)
    record = split_outlier_channels(model, feeds, ratio=2.0, skip=set())
    assert list(record["split"]) == [FIRST_FFN_OUTPUT]
    split = record["split"][FIRST_FFN_OUTPUT]
    assert split["channels"] == [OUTLIER_CHANNEL] and split["channel_max"][0] > 2 * split["largest_left"]
    assert {n.rsplit("/", 1)[1].split("_")[0] for n in record["side_path_nodes"]} == {"MatMul", "Add", "Gelu"}
    assert all(n.startswith(SIDE_PATH) for n in record["side_path_nodes"])
    # The INT8 GEMMs lost the channel: 127 of the tiny BERT's 128.
    matmuls = {op.get_friendly_name(): op for op in model.get_ops() if op.get_type_name() == "MatMul"}
    assert matmuls[FIRST_FFN_OUTPUT].input_value(0).get_partial_shape()[-1].get_length() == 127
    np.testing.assert_allclose(run_f32(model, feeds), before, atol=1e-4)

    assert split_outlier_channels(untouched, feeds, ratio=2.0, skip={FIRST_FFN_OUTPUT})["split"] == {}


def test_split_of_a_decomposed_gelu_between_untransposed_weights():
    """x -> MatMul([in, out] weight) -> bias Add -> erf GELU as elementwise nodes -> MatMul -> bias Add -> Relu: the
    side path clones the five GELU nodes, and the function stays the same."""
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    # 256 inner channels: the 99th-percentile channel maximum the outlier is compared with is a typical channel's.
    w_in, w_out = rng.normal(0, 0.3, (8, 256)).astype(np.float32), rng.normal(0, 0.3, (256, 8)).astype(np.float32)
    bias = np.zeros(256, np.float32)
    bias[3] = 20.0  # channel 3 is the outlier on every token
    x = ops.parameter([-1, 8], np.float32, name="x")
    pre = ops.add(ops.matmul(x, ops.constant(w_in), False, False), ops.constant(bias))
    erf = ops.erf(ops.divide(pre, ops.constant(np.float32(np.sqrt(2)))))
    gelu = ops.multiply(ops.multiply(pre, ops.constant(np.float32(0.5))), ops.add(erf, ops.constant(np.float32(1))))
    second = ops.matmul(gelu, ops.constant(w_out), False, False)
    second.set_friendly_name("ffn.output/MatMul")
    out = ops.relu(ops.add(second, ops.constant(np.full(8, 0.1, np.float32))))
    model = ov.Model([out], [x])
    feeds = [{"x": rng.normal(0, 1, (4, 8)).astype(np.float32)} for _ in range(4)]
    before = run_f32(model, feeds)

    record = split_outlier_channels(model, feeds, ratio=2.0, skip=set())
    assert record["split"]["ffn.output/MatMul"]["channels"] == [3] and len(model.outputs) == 1
    kinds = [name.rsplit("/", 1)[1].rsplit("_", 1)[0] for name in record["side_path_nodes"]]
    assert sorted(kinds) == sorted(["MatMul", "Add", "Divide", "Erf", "Add", "Multiply", "Multiply", "MatMul", "Add"])
    np.testing.assert_allclose(run_f32(model, feeds), before, atol=1e-4)


def test_static_default_splits_and_keeps_the_side_path_out_of_int8(outlier_bert):
    model = QuantModelForSequenceClassification.from_pretrained(
        outlier_bert, backend="openvino", quantize=STATIC, precision="int8", calibration_dataset=SENTENCES)
    details = model.quantization_recipe.details
    record = details["outlier_channels"]
    assert record["ratio"] == 1.5 and list(record["split"]) == [FIRST_FFN_OUTPUT]  # "auto"
    assert set(record["side_path_nodes"]) <= set(details["excluded_nodes"])
    ops = {op.get_friendly_name(): op for op in model.model.get_ops()}
    side = [ops[name] for name in record["side_path_nodes"]]
    # No FakeQuantize on the side path's inputs; its GEMMs' weights stay float, unlike the GEMM beside it.
    assert not any(v.get_node().get_type_name() == "FakeQuantize" for op in side for v in op.input_values())
    assert details["quantized_nodes"]["FakeQuantize"] > 0

    tokenizer = transformers.AutoTokenizer.from_pretrained(outlier_bert)
    inputs = tokenizer(SENTENCES, return_tensors="pt", padding=True)
    # Static INT8 loads with the f32 hint by default (test_openvino_backend checks it): no second build to compare.
    assert model.ov_config.get("INFERENCE_PRECISION_HINT") == F32_COMPUTE["INFERENCE_PRECISION_HINT"]
    assert_close(torch_logits(outlier_bert, **inputs).logits.numpy(), model(**inputs).logits.numpy())
    # outlier_channel_ratio=None builds no side path: checked on the unsplit build of the next test.


def test_the_split_cuts_the_int8_error_of_the_gemm_it_is_for(outlier_bert):
    """Only the first layer's FFN output in INT8, unsmoothed: the logit error is that GEMM's alone."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(outlier_bert)
    inputs = tokenizer(SENTENCES, return_tensors="pt", padding=True)
    reference = torch_logits(outlier_bert, **inputs).logits.numpy()
    errors = {}
    for ratio in (2.0, None):
        config = StaticQuantConfig(
            calibration=STATIC.calibration, outlier_channel_ratio=ratio, smoothing_alpha=None,
            activation_matmuls=False, keep_default_exclusions=False,
            exclude=["classifier", "bert.pooler.dense", "*.intermediate.dense", "*.attention.*",
                     "bert.encoder.layer.1.output.dense"])
        model = QuantModelForSequenceClassification.from_pretrained(
            outlier_bert, backend="openvino", quantize=config, precision="int8", calibration_dataset=SENTENCES,
            ov_config=F32_COMPUTE)
        errors[ratio] = np.abs(model(**inputs).logits.numpy() - reference).mean()
        if ratio is None:  # the split turned off: recorded as such, and no side path in the IR
            assert model.quantization_recipe.details["outlier_channels"] == {
                "applied": False, "reason": "outlier_channel_ratio=None"}
            assert not any(".outlier_channels/" in op.get_friendly_name() for op in model.model.get_ops())
    assert errors[2.0] < 0.6 * errors[None], errors
