"""Outlier channels of the FFN's second GEMM split into an FP32 side path before dynamic or static INT8: same FP32
function, less INT8 error when one channel sets the activation scale."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import OUTLIER_CHANNEL as OUTLIER
from conftest import SENTENCES
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic
from test_onnxruntime_backend import assert_close_to_fp32, fp32_logits, onnx_file
from test_ort_smoothing import run

from optimum.quantization import DynamicQuantConfig, QuantModelForSequenceClassification
from optimum.quantization.backends.ort_outlier_channels import feed_forwards, split_outlier_channels
from optimum.quantization.backends.outlier_channels import MAX_CHANNELS, outlier_channels
from optimum.quantization.configuration import config_from_dict
from optimum.quantization.errors import ConfigError

HIDDEN, INNER, TOKENS = 32, 128, 16


def feed_forward(outlier_gain: float, second_consumer: bool = False, erf_gelu: bool = False) -> onnx.ModelProto:
    """x -> MatMul -> bias Add -> Gelu -> MatMul -> bias Add -> Relu -> z, where inner channel OUTLIER is
    `outlier_gain` times larger than the others on token 0 only (BERT's [CLS] channel)."""
    rng = np.random.default_rng(0)
    w_in = rng.normal(0, 0.2, (HIDDEN, INNER)).astype(np.float32)
    w_in[:, OUTLIER] = 0.0
    w_in[0, OUTLIER] = outlier_gain  # x[..., 0] is large on token 0 only (see `feeds`)
    nodes = [
        helper.make_node("MatMul", ["x", "w_in"], ["h"], name="/ffn/intermediate/MatMul"),
        helper.make_node("Add", ["b_in", "h"], ["hb"], name="/ffn/intermediate/Add"),
        *(erf_gelu_nodes("hb", "g") if erf_gelu else [helper.make_node("Gelu", ["hb"], ["g"], name="/ffn/Gelu")]),
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


def erf_gelu_nodes(x: str, y: str) -> list[onnx.NodeProto]:
    """GELU as torch.onnx exports it: x * (erf(x / sqrt(2)) + 1) * 0.5, its scalars from Constant nodes."""
    def constant(name, value):
        return helper.make_node("Constant", [], [name], name=f"/ffn/act/{name}",
                                value=numpy_helper.from_array(np.array(value, np.float32)))
    return [
        constant("sqrt2", 2 ** 0.5), helper.make_node("Div", [x, "sqrt2"], ["d"], name="/ffn/act/Div"),
        helper.make_node("Erf", ["d"], ["e"], name="/ffn/act/Erf"),
        constant("one", 1.0), helper.make_node("Add", ["e", "one"], ["e1"], name="/ffn/act/Add"),
        helper.make_node("Mul", [x, "e1"], ["m"], name="/ffn/act/Mul"),
        constant("half", 0.5), helper.make_node("Mul", ["m", "half"], [y], name="/ffn/act/Mul_1"),
    ]


def feeds(count: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    result = []
    for _ in range(count):
        x = rng.normal(size=(1, TOKENS, HIDDEN)).astype(np.float32)
        x[0, :, 0] = np.abs(x[0, :, 0]) * 0.05
        x[0, 0, 0] = 1.0  # the [CLS]-like token
        result.append({"x": x})
    return result


def second_gemm_int8(model: onnx.ModelProto, folder: Path) -> str:
    """Dynamic INT8 of the FFN's second GEMM alone (7-bit weights, as AVX2 CPUs get by default)."""
    folder.mkdir()
    onnx.save(model, str(folder / "fp32.onnx"))
    quantize_dynamic(str(folder / "fp32.onnx"), str(folder / "int8.onnx"), weight_type=QuantType.QInt8,
                     per_channel=True, reduce_range=True, nodes_to_quantize=["/ffn/output/MatMul"])
    return str(folder / "int8.onnx")


def test_split_keeps_the_fp32_function_and_cuts_int8_error(tmp_path):
    plain, split = feed_forward(outlier_gain=40.0), feed_forward(outlier_gain=40.0)
    record = split_outlier_channels(split, feeds(8, 1), ratio=2.0, skip=set())
    assert list(record["split"]) == ["/ffn/output/MatMul"]
    assert record["split"]["/ffn/output/MatMul"]["channels"] == [OUTLIER]
    split_gemm = record["split"]["/ffn/output/MatMul"]
    assert split_gemm["channel_max"][0] > 4 * split_gemm["largest_left"]
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
    error_plain = np.abs(run(second_gemm_int8(plain, tmp_path / "plain"), test) - reference).mean()
    error_split = np.abs(run(second_gemm_int8(split, tmp_path / "split"), test) - reference).mean()
    assert error_split < 0.4 * error_plain, (error_split, error_plain)


def test_the_exported_erf_gelu_is_cloned_onto_the_side_path(tmp_path):
    plain, split = feed_forward(40.0, erf_gelu=True), feed_forward(40.0, erf_gelu=True)
    record = split_outlier_channels(split, feeds(8, 1), ratio=2.0, skip=set())
    assert record["split"]["/ffn/output/MatMul"]["channels"] == [OUTLIER]
    side = [n for n in split.graph.node if n.name in record["side_path_nodes"]]
    assert [n.op_type for n in side] == ["MatMul", "Add", "Div", "Erf", "Add", "Mul", "Mul", "MatMul", "Add"]
    onnx.checker.check_model(split)
    test = feeds(1, 2)[0]
    np.testing.assert_allclose(run(split, test), run(plain, test), rtol=1e-4, atol=1e-5)


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


# Everything but the first layer's FFN output stays FP32, unsmoothed: the logit error is that GEMM's alone (on a
# random BERT the other GEMMs' errors are as large and partly cancel, which would hide it).
ONLY_FIRST_FFN_OUTPUT = dict(op_types=["MatMul"], smoothing_alpha=None, keep_default_exclusions=False,
                             exclude=["classifier*", "*.intermediate.dense", "*.attention.*", "*.layer.1.output.dense",
                                      "bert.pooler*"])


@pytest.mark.parametrize("config_class", ["DynamicQuantConfig", "StaticQuantConfig"])
def test_the_split_cuts_the_int8_error_of_the_gemm_it_is_for(outlier_bert, config_class):
    import optimum.quantization as oq

    reference, inputs = fp32_logits(outlier_bert)
    errors = {}
    for ratio in (2.0, None):
        model = QuantModelForSequenceClassification.from_pretrained(
            outlier_bert, calibration_dataset=SENTENCES,
            quantize=getattr(oq, config_class)(outlier_channel_ratio=ratio, **ONLY_FIRST_FFN_OUTPUT))
        quantized = model.quantization_recipe.details["quantized_units"]
        assert quantized == ["bert.encoder.layer.0.output.dense"], quantized
        assert bool(model.quantization_recipe.details["outlier_channels"]["applied"]) == (ratio is not None)
        errors[ratio] = np.abs(model(**inputs).logits.numpy() - reference).mean()
    assert errors[2.0] < 0.6 * errors[None], errors


def test_without_data_the_split_measures_random_words_and_a_plain_bert_keeps_its_channels(tiny_dir, outlier_bert):
    data_free = QuantModelForSequenceClassification.from_pretrained(outlier_bert, quantize="dynamic")
    record = data_free.quantization_recipe.details["outlier_channels"]
    assert record["statistics"] == "random-words"
    assert list(record["split"]) == ["/bert/encoder/layer.0/output/dense/MatMul"]
    plain = QuantModelForSequenceClassification.from_pretrained(tiny_dir("text-classification"), quantize="dynamic")
    assert plain.quantization_recipe.details["outlier_channels"]["split"] == {}


def test_static_default_splits_and_quantizes_the_output_projections(outlier_bert):
    """On ONNX Runtime the static default splits outlier channels (on the plain graph, cloning its exported erf GELU)
    and so quantizes `*.output.dense`, keeping only the heads FP32; `outlier_channel_ratio=None` keeps the old block."""
    from optimum.quantization import StaticQuantConfig

    split = QuantModelForSequenceClassification.from_pretrained(
        outlier_bert, quantize="static", calibration_dataset=SENTENCES)
    details = split.quantization_recipe.details
    assert list(details["outlier_channels"]["split"]) == ["/bert/encoder/layer.0/output/dense/MatMul"]
    assert details["outlier_channels"]["ratio"] == 2.0  # "auto"
    assert {"bert.encoder.layer.0.output.dense", "bert.encoder.layer.0.attention.output.dense"} <= set(
        details["quantized_units"])
    side = [n for n in onnx.load(str(onnx_file(split))).graph.node if "/outlier_channels/" in n.name]
    assert [n.op_type for n in side].count("Erf") == 1 and not any(n.op_type == "QuantizeLinear" for n in side)
    reference, inputs = fp32_logits(outlier_bert)
    assert_close_to_fp32(reference, split(**inputs).logits.numpy())

    unsplit = QuantModelForSequenceClassification.from_pretrained(
        outlier_bert, quantize=StaticQuantConfig(outlier_channel_ratio=None), calibration_dataset=SENTENCES)
    details = unsplit.quantization_recipe.details
    assert details["outlier_channels"] == {"applied": False, "reason": "outlier_channel_ratio=None"}
    assert not any(unit.endswith("output.dense") for unit in details["quantized_units"])


def test_outlier_channels_alone_still_read_calibration_texts():
    assert DynamicQuantConfig(smoothing_alpha=None).calibration_samples() == 64
    assert DynamicQuantConfig(smoothing_alpha=None, outlier_channel_ratio=None).calibration_samples() is None


@pytest.mark.parametrize("ratio", [1.0, 0.5, -2, True, "2"])
def test_bad_outlier_channel_ratio(ratio):
    with pytest.raises(ConfigError, match="outlier_channel_ratio"):
        DynamicQuantConfig(outlier_channel_ratio=ratio)


def test_outlier_channel_ratio_round_trips():
    from optimum.quantization import StaticQuantConfig

    for config in (DynamicQuantConfig(outlier_channel_ratio=None), DynamicQuantConfig(outlier_channel_ratio=3.0),
                   StaticQuantConfig(), StaticQuantConfig(outlier_channel_ratio=None)):
        assert config_from_dict(config.to_dict()) == config
    assert StaticQuantConfig().resolved_outlier_channel_ratio(2.0) == 2.0
    assert StaticQuantConfig(outlier_channel_ratio=None).resolved_outlier_channel_ratio(2.0) is None
    with pytest.raises(ConfigError, match="outlier_channel_ratio"):
        StaticQuantConfig(outlier_channel_ratio=1.0)
