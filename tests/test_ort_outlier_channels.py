"""Outlier channels of the FFN's second GEMM split into an FP32 side path before dynamic INT8: same FP32 function,
less INT8 error when one channel sets the activation scale."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
import torch
import transformers
from conftest import SENTENCES
from onnx import TensorProto, helper, numpy_helper
from test_onnxruntime_backend import assert_close_to_fp32, fp32_logits, onnx_file
from test_ort_smoothing import dynamic_int8, run

from optimum.quantization import DynamicQuantConfig, QuantModelForSequenceClassification
from optimum.quantization.backends.ort_outlier_channels import (
    MAX_CHANNELS,
    feed_forwards,
    outlier_channels,
    split_outlier_channels,
)
from optimum.quantization.configuration import config_from_dict
from optimum.quantization.errors import ConfigError

HIDDEN, INNER, TOKENS, OUTLIER = 32, 128, 16, 5


def feed_forward(outlier_gain: float, second_consumer: bool = False) -> onnx.ModelProto:
    """x -> MatMul -> bias Add -> Gelu -> MatMul -> bias Add -> Relu -> z, where inner channel OUTLIER is `outlier_gain` times
    larger than the others on token 0 only (BERT's [CLS] channel)."""
    rng = np.random.default_rng(0)
    w_in = rng.normal(0, 0.2, (HIDDEN, INNER)).astype(np.float32)
    w_in[:, OUTLIER] = 0.0
    w_in[0, OUTLIER] = outlier_gain  # x[..., 0] is large on token 0 only (see `feeds`)
    nodes = [
        helper.make_node("MatMul", ["x", "w_in"], ["h"], name="/ffn/intermediate/MatMul"),
        helper.make_node("Add", ["b_in", "h"], ["hb"], name="/ffn/intermediate/Add"),
        helper.make_node("Gelu", ["hb"], ["g"], name="/ffn/Gelu"),
        helper.make_node("MatMul", ["g", "w_out"], ["o"], name="/ffn/output/MatMul"),
        helper.make_node("Add", ["o", "b_out"], ["y"], name="/ffn/output/Add"),
        helper.make_node("Relu", ["y"], ["z"], name="/next/Relu"),
    ]
    outputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, TOKENS, HIDDEN])]
    if second_consumer:  # the GELU output also leaves the graph: its channels cannot be taken out
        outputs.append(helper.make_tensor_value_info("g", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes, "ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, TOKENS, HIDDEN])], outputs,
        [numpy_helper.from_array(w_in, "w_in"),
         numpy_helper.from_array(rng.normal(0, 0.1, INNER).astype(np.float32), "b_in"),
         numpy_helper.from_array(rng.normal(0, 0.1, (INNER, HIDDEN)).astype(np.float32), "w_out"),
         numpy_helper.from_array(rng.normal(0, 0.1, HIDDEN).astype(np.float32), "b_out")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def feeds(count: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    result = []
    for _ in range(count):
        x = rng.normal(size=(1, TOKENS, HIDDEN)).astype(np.float32)
        x[0, :, 0] = np.abs(x[0, :, 0]) * 0.05
        x[0, 0, 0] = 1.0  # the [CLS]-like token
        result.append({"x": x})
    return result


def test_split_keeps_the_fp32_function_and_cuts_int8_error(tmp_path):
    plain, split = feed_forward(outlier_gain=40.0), feed_forward(outlier_gain=40.0)
    record = split_outlier_channels(split, feeds(8, 1), ratio=2.0, skip=set())
    assert list(record["split"]) == ["/ffn/output/MatMul"]
    assert record["split"]["/ffn/output/MatMul"]["channels"] == [OUTLIER]
    assert record["split"]["/ffn/output/MatMul"]["channel_max"][0] > 4 * record["split"]["/ffn/output/MatMul"]["largest_left"]
    weights = {i.name: numpy_helper.to_array(i) for i in split.graph.initializer}
    assert weights["w_in"].shape == (HIDDEN, INNER - 1) and weights["b_in"].shape == (INNER - 1,)
    assert weights["w_out"].shape == (INNER - 1, HIDDEN)
    side = record["side_path_nodes"]
    assert side == ["/ffn/output/outlier_channels/MatMul_in", "/ffn/output/outlier_channels/Add_bias",
                    "/ffn/output/outlier_channels/Gelu", "/ffn/output/outlier_channels/MatMul_out",
                    "/ffn/output/outlier_channels/Add"]
    onnx.checker.check_model(split)

    test = feeds(1, 2)[0]
    reference = run(plain, test)
    np.testing.assert_allclose(run(split, test), reference, rtol=1e-4, atol=1e-5)
    (tmp_path / "plain").mkdir()
    (tmp_path / "split").mkdir()
    error_plain = np.abs(run(dynamic_int8(plain, tmp_path / "plain"), test) - reference).mean()
    error_split = np.abs(run(dynamic_int8(split, tmp_path / "split"), test) - reference).mean()
    assert error_split < 0.5 * error_plain, (error_split, error_plain)


def test_nothing_is_split_without_an_outlier_or_where_it_cannot_be():
    model = feed_forward(outlier_gain=0.5)
    before = model.SerializeToString()
    assert split_outlier_channels(model, feeds(4, 1), ratio=2.0, skip=set()) == {
        "ratio": 2.0, "split": {}, "side_path_nodes": []}
    assert model.SerializeToString() == before
    # The second GEMM excluded from quantization (FP32 anyway), or the GELU output used elsewhere: left alone.
    assert feed_forwards(feed_forward(40.0).graph, skip={"/ffn/output/MatMul"}) == []
    assert feed_forwards(feed_forward(40.0, second_consumer=True).graph, skip=set()) == []
    assert [c.second.name for c in feed_forwards(feed_forward(40.0).graph, skip=set())] == ["/ffn/output/MatMul"]


def test_outlier_channels_are_far_past_the_99th_percentile_largest_first_and_capped():
    amax = np.ones(1000)
    amax[[7, 3]] = [5.0, 9.0]
    assert outlier_channels(amax, ratio=2.0) == [3, 7]
    assert outlier_channels(amax, ratio=6.0) == [3]
    assert outlier_channels(np.ones(1000), ratio=2.0) == []
    wide = np.ones(10_000)
    wide[100:100 + 2 * MAX_CHANNELS] = 50.0 + np.arange(2 * MAX_CHANNELS)
    chosen = outlier_channels(wide, ratio=2.0)
    assert len(chosen) == MAX_CHANNELS and chosen[0] == 100 + 2 * MAX_CHANNELS - 1
    # More than 1% of the channels large: the percentile is large too, and none stands out.
    assert outlier_channels(wide[:1000], ratio=2.0) == []


@pytest.fixture(scope="module")
def outlier_bert(tiny_dir, tmp_path_factory):
    """The tiny random BERT with one GELU channel of its first layer 20 above the rest, on every token."""
    folder = tmp_path_factory.mktemp("outlier-bert")
    shutil.copytree(tiny_dir("text-classification"), folder, dirs_exist_ok=True)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder)
    with torch.no_grad():
        model.bert.encoder.layer[0].intermediate.dense.bias[OUTLIER] += 20.0
    model.save_pretrained(folder)
    return folder


def test_dynamic_default_splits_an_outlier_channel_of_a_bert_and_records_it(outlier_bert):
    split = QuantModelForSequenceClassification.from_pretrained(
        outlier_bert, quantize="dynamic", calibration_dataset=SENTENCES)
    record = split.quantization_recipe.details["outlier_channels"]
    assert record["applied"] and record["statistics"] == "calibration_dataset" and record["ratio"] == 2.0
    assert list(record["split"]) == ["/bert/encoder/layer.0/output/dense/MatMul"]
    assert record["split"]["/bert/encoder/layer.0/output/dense/MatMul"]["channels"] == [OUTLIER]
    graph = onnx.load(str(onnx_file(split))).graph
    side = [n for n in graph.node if "/outlier_channels/" in n.name]
    # The side path stays FP32 (plain MatMuls), beside the INT8 GEMMs.
    assert sorted(n.op_type for n in side) == ["Add", "Add", "Gelu", "MatMul", "MatMul"]
    assert "MatMulInteger" in {n.op_type for n in graph.node}

    reference, inputs = fp32_logits(outlier_bert)
    assert_close_to_fp32(reference, split(**inputs).logits.numpy())
    unsplit = QuantModelForSequenceClassification.from_pretrained(
        outlier_bert, quantize=DynamicQuantConfig(outlier_channel_ratio=None), calibration_dataset=SENTENCES)
    assert unsplit.quantization_recipe.details["outlier_channels"] == {
        "applied": False, "reason": "outlier_channel_ratio=None"}
    assert not any("/outlier_channels/" in n.name for n in onnx.load(str(onnx_file(unsplit))).graph.node)
    error_split = np.abs(split(**inputs).logits.numpy() - reference).mean()
    error_unsplit = np.abs(unsplit(**inputs).logits.numpy() - reference).mean()
    assert error_split < 0.7 * error_unsplit, (error_split, error_unsplit)


def test_without_data_the_split_measures_random_words_and_a_plain_bert_keeps_its_channels(tiny_dir, outlier_bert):
    data_free = QuantModelForSequenceClassification.from_pretrained(outlier_bert, quantize="dynamic")
    record = data_free.quantization_recipe.details["outlier_channels"]
    assert record["statistics"] == "random-words" and list(record["split"]) == ["/bert/encoder/layer.0/output/dense/MatMul"]
    plain = QuantModelForSequenceClassification.from_pretrained(tiny_dir("text-classification"), quantize="dynamic")
    assert plain.quantization_recipe.details["outlier_channels"]["split"] == {}


def test_outlier_channels_alone_still_read_calibration_texts():
    assert DynamicQuantConfig(smoothing_alpha=None).calibration_samples() == 64
    assert DynamicQuantConfig(smoothing_alpha=None, outlier_channel_ratio=None).calibration_samples() is None


@pytest.mark.parametrize("ratio", [1.0, 0.5, -2, True, "2"])
def test_bad_outlier_channel_ratio(ratio):
    with pytest.raises(ConfigError, match="outlier_channel_ratio"):
        DynamicQuantConfig(outlier_channel_ratio=ratio)


def test_outlier_channel_ratio_round_trips():
    for ratio in (None, 3.0):
        config = DynamicQuantConfig(outlier_channel_ratio=ratio)
        assert config_from_dict(config.to_dict()) == config
