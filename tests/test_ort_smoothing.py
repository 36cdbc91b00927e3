"""Activation smoothing before ONNX Runtime dynamic INT8: same FP32 function, less INT8 error on outlier channels."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import transformers
from conftest import SENTENCES
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic
from test_onnxruntime_backend import assert_close_to_fp32, fp32_logits, onnx_file

from optimum.quantization import DynamicQuantConfig, QuantModelForSequenceClassification
from optimum.quantization.backends.onnxruntime import DYNAMIC_SMOOTHING_ALPHA, DYNAMIC_SMOOTHING_STATISTIC, fuse_graph
from optimum.quantization.backends.ort_smoothing import input_channel_amax, smooth_graph, smoothing_targets
from optimum.quantization.calibration import random_word_examples, tokenize_examples
from optimum.quantization.configuration import config_from_dict
from optimum.quantization.errors import ConfigError
from optimum.quantization.hardware import cpu_info

HIDDEN, OUT, TOKENS = 64, 32, 16


def layer_norm_gemm(outlier_gain: float) -> onnx.ModelProto:
    """LayerNorm -> MatMul, with one LayerNorm channel `outlier_gain` times the others (BERT's outlier dims)."""
    rng = np.random.default_rng(0)
    gamma = np.ones(HIDDEN, np.float32)
    gamma[3] = outlier_gain
    graph = helper.make_graph(
        [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], name="ln", axis=-1),
         helper.make_node("MatMul", ["h", "w"], ["y"], name="gemm")],
        "ln_gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, TOKENS, HIDDEN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, TOKENS, OUT])],
        [numpy_helper.from_array(gamma, "gamma"), numpy_helper.from_array(np.zeros(HIDDEN, np.float32), "beta"),
         numpy_helper.from_array(rng.normal(0, 0.05, (HIDDEN, OUT)).astype(np.float32), "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model: onnx.ModelProto | str, feed: dict) -> np.ndarray:
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, feed)[0]


def dynamic_int8(model: onnx.ModelProto, folder: Path) -> str:
    onnx.save(model, str(folder / "fp32.onnx"))
    quantize_dynamic(str(folder / "fp32.onnx"), str(folder / "int8.onnx"), weight_type=QuantType.QInt8, per_channel=True)
    return str(folder / "int8.onnx")


def test_smoothing_keeps_the_fp32_function_and_cuts_int8_error_on_an_outlier_channel(tmp_path):
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.normal(size=(1, TOKENS, HIDDEN)).astype(np.float32)} for _ in range(8)]
    plain = layer_norm_gemm(outlier_gain=60.0)
    smoothed = layer_norm_gemm(outlier_gain=60.0)
    details = smooth_graph(smoothed, feeds, alpha=0.5, skip=set())
    assert details["smoothed_nodes"] == ["gemm"] and details["largest_scale_ratio"] > 5
    assert [n.op_type for n in smoothed.graph.node] == ["LayerNormalization", "Mul", "MatMul"]
    test = {"x": rng.normal(size=(1, TOKENS, HIDDEN)).astype(np.float32)}
    reference = run(plain, test)
    # FP32: the rescaling is exact up to float rounding.
    np.testing.assert_allclose(run(smoothed, test), reference, rtol=1e-4, atol=1e-5)
    # INT8: one outlier channel no longer sets the scale of all 64.
    (tmp_path / "plain").mkdir()
    (tmp_path / "smoothed").mkdir()
    error_plain = np.abs(run(dynamic_int8(plain, tmp_path / "plain"), test) - reference).mean()
    error_smoothed = np.abs(run(dynamic_int8(smoothed, tmp_path / "smoothed"), test) - reference).mean()
    assert error_smoothed < 0.5 * error_plain, (error_smoothed, error_plain)


def test_targets_are_layer_norm_fed_gemms_with_their_own_weight_and_skip_is_honoured():
    model = layer_norm_gemm(outlier_gain=1.0)
    assert [n.name for n in smoothing_targets(model.graph, skip=set())] == ["gemm"]
    assert smoothing_targets(model.graph, skip={"gemm"}) == []
    # A weight shared with another node cannot be rescaled for one of them.
    model.graph.node.append(helper.make_node("MatMul", ["h", "w"], ["y2"], name="tied"))
    assert smoothing_targets(model.graph, skip=set()) == []


def test_fused_bert_smoothing_targets_attention_and_ffn_input_and_keeps_fp32_logits(tiny_dir):
    folder = tiny_dir("text-classification")
    with tempfile.TemporaryDirectory() as tmp:
        QuantModelForSequenceClassification.from_pretrained(folder, quantize=None).save_pretrained(tmp)
        fused = Path(tmp) / "fused.onnx"
        fuse_graph(Path(tmp) / "model.onnx", fused, transformers.AutoConfig.from_pretrained(folder))
        model = onnx.load(str(fused))
    names = [i.name for i in model.graph.input]
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    feeds = tokenize_examples(SENTENCES, tokenizer, sequence_length=64, input_names=names, pad=False)
    before = onnx.ModelProto()
    before.CopyFrom(model)
    details = smooth_graph(model, feeds, alpha=0.5, skip={"/classifier/Gemm"})
    kinds = sorted(n.op_type for n in before.graph.node if n.name in details["smoothed_nodes"])
    assert kinds == ["Attention", "Attention", "MatMul", "MatMul"]  # per layer: Q/K/V and the FFN input
    inputs = {k: v for k, v in tokenizer(SENTENCES[:4], return_tensors="np", padding=True).items() if k in names}
    np.testing.assert_allclose(run(model, inputs), run(before, inputs), rtol=1e-4, atol=1e-4)


# The smoothing tests count nodes of the graph whose every layer computes every token (test_head_token.py has the
# graph whose last layer computes the [CLS] row only).
ALL_TOKENS = DynamicQuantConfig(head_token_only=False)


def test_dynamic_smooths_with_calibration_data_and_says_when_it_did_not(tiny_dir):
    folder = tiny_dir("text-classification")
    smoothed = QuantModelForSequenceClassification.from_pretrained(
        folder, quantize=ALL_TOKENS, calibration_dataset=SENTENCES)
    details = smoothed.quantization_recipe.details
    smoothing = details["smoothing"]
    assert smoothing["applied"] and len(smoothing["smoothed_nodes"]) == 4
    assert smoothing["alpha"] == DYNAMIC_SMOOTHING_ALPHA["7-bit" if details["reduce_range"] else "8-bit"]  # "auto"
    assert smoothing["calibration_samples"] == min(len(SENTENCES), 64)
    graph = onnx.load(str(onnx_file(smoothed)))
    assert sum(n.name.endswith("_smoothing") for n in graph.graph.node) == 4
    assert {"QAttention", "MatMulInteger"} <= {n.op_type for n in graph.graph.node}
    reference, inputs = fp32_logits(folder)
    assert_close_to_fp32(reference, smoothed(**inputs).logits.numpy())

    assert smoothing["statistics"] == "calibration_dataset"

    # Without data the default measures texts of random vocabulary words; smoothing_without_data=None skips it.
    data_free = QuantModelForSequenceClassification.from_pretrained(folder, quantize=ALL_TOKENS)
    smoothing = data_free.quantization_recipe.details["smoothing"]
    assert smoothing["applied"] and smoothing["statistics"] == "random-words" and smoothing["calibration_samples"] == 64
    assert sum(n.name.endswith("_smoothing") for n in onnx.load(str(onnx_file(data_free))).graph.node) == 4
    assert_close_to_fp32(reference, data_free(**inputs).logits.numpy())
    plain = QuantModelForSequenceClassification.from_pretrained(
        folder, quantize=DynamicQuantConfig(smoothing_without_data=None)
    )
    assert plain.quantization_recipe.details["smoothing"] == {
        "applied": False, "reason": "no calibration_dataset given (smoothing_without_data=None)"
    }
    assert not any(n.name.endswith("_smoothing") for n in onnx.load(str(onnx_file(plain))).graph.node)
    off = QuantModelForSequenceClassification.from_pretrained(
        folder, quantize=DynamicQuantConfig(smoothing_alpha=None), calibration_dataset=SENTENCES
    )
    assert off.quantization_recipe.details["smoothing"] == {"applied": False, "reason": "smoothing_alpha=None"}


def test_decoders_are_not_smoothed_and_still_quantize(tiny_dir):
    """A causal LM's graph is not fused and its past key/value inputs are not in the calibration feeds."""
    from optimum.quantization import QuantModelForCausalLM

    model = QuantModelForCausalLM.from_pretrained(tiny_dir("text-generation"), quantize="dynamic",
                                                  calibration_dataset=SENTENCES)
    smoothing = model.quantization_recipe.details["smoothing"]
    assert smoothing["applied"] is False and "fused encoder" in smoothing["reason"]


@pytest.mark.parametrize("alpha", [0, 1, 1.5, -0.1, True, "0.5"])
def test_bad_smoothing_alpha(alpha):
    with pytest.raises(ConfigError, match="smoothing_alpha"):
        DynamicQuantConfig(smoothing_alpha=alpha)


@pytest.mark.parametrize("value", ["random", "", False, 0])
def test_bad_smoothing_without_data(value):
    with pytest.raises(ConfigError, match="smoothing_without_data"):
        DynamicQuantConfig(smoothing_without_data=value)


def test_random_word_examples_are_seeded_whole_words_from_the_vocabulary(tiny_dir):
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_dir("text-classification"))
    vocab = set(tokenizer.get_vocab())
    texts = random_word_examples(tokenizer, 20)
    assert texts == random_word_examples(tokenizer, 20) != random_word_examples(tokenizer, 20, seed=1)
    words = [w for t in texts for w in t.split()]
    assert len(texts) == 20 and all(4 <= len(t.split()) <= 250 for t in texts)
    assert all(w in vocab and w.isalpha() and len(w) > 2 for w in words)
    pairs = random_word_examples(tokenizer, 3, pairs=True)
    assert [(len(q.split()), len(c.split())) for q, c in pairs] == [(10, 250)] * 3


def test_random_word_examples_strip_word_start_marks():
    class Vocabulary:
        def get_vocab(self):
            return {"\u0120house": 0, "\u2581garden": 1, "ab": 2, "##ing": 3, "42nd": 4, "<|endoftext|>": 5}

    assert set(" ".join(random_word_examples(Vocabulary(), 10)).split()) == {"house", "garden"}
    assert random_word_examples(type("Empty", (), {"get_vocab": lambda self: {"a": 0}})(), 5) == []


def test_smoothing_statistics_are_the_largest_value_or_the_mean_of_each_texts_largest():
    """Per channel: "max" is the larger of the two feeds' maxima, "mean-max" their average."""
    model = layer_norm_gemm(outlier_gain=1.0)
    rng = np.random.default_rng(2)
    feeds = [{"x": rng.normal(size=(1, TOKENS, HIDDEN)).astype(np.float32)} for _ in range(2)]
    per_feed = [np.abs(run_output(model, "h", feed)).reshape(-1, HIDDEN).max(axis=0) for feed in feeds]
    largest = input_channel_amax(model, ["h"], feeds, "max")["h"]
    mean = input_channel_amax(model, ["h"], feeds, "mean-max")["h"]
    np.testing.assert_allclose(largest, np.maximum(*per_feed), rtol=1e-6)
    np.testing.assert_allclose(mean, (per_feed[0] + per_feed[1]) / 2, rtol=1e-6)
    assert input_channel_amax(model, ["h"], feeds)["h"].tolist() == largest.tolist()  # SmoothQuant's is the default
    # The mean over four copies of one text is that text's maximum: it does not grow with the number of texts.
    assert np.allclose(input_channel_amax(model, ["h"], feeds[:1] * 4, "mean-max")["h"], per_feed[0], rtol=1e-6)


def run_output(model: onnx.ModelProto, name: str, feed: dict) -> np.ndarray:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([name], feed)[0]


def test_dynamic_smoothing_statistic_reaches_the_graph_and_the_recipe(tiny_dir):
    """Each statistic given reaches the recipe, and the two give different scales."""
    folder = tiny_dir("text-classification")
    built = {}
    for statistic in ("mean-max", "max"):
        model = QuantModelForSequenceClassification.from_pretrained(
            folder, quantize=DynamicQuantConfig(smoothing_statistic=statistic), calibration_dataset=SENTENCES)
        assert model.quantization_recipe.details["smoothing"]["statistic"] == statistic
        graph = onnx.load(str(onnx_file(model)))
        built[statistic] = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer
                            if i.name.endswith("_smoothing_inverse_scale")}
    assert DynamicQuantConfig().smoothing_statistic == "auto"
    # Layer 0: fused Q/K/V and the FFN input. Layer 1 computes the [CLS] row only (head_token_only): K and V share
    # one scale, Q has its own on that row, and the FFN input.
    assert built["max"].keys() == built["mean-max"].keys() and len(built["max"]) == 5
    assert all(not np.allclose(built["max"][name], built["mean-max"][name]) for name in built["max"])


@pytest.mark.parametrize("value", ["mean", "MAX", None, ""])
def test_bad_smoothing_statistic(value):
    with pytest.raises(ConfigError, match="smoothing.statistic"):
        DynamicQuantConfig(smoothing_statistic=value)


def test_smoothing_fields_round_trip():
    config = DynamicQuantConfig(smoothing_alpha=0.3, smoothing_samples=16, smoothing_without_data=None,
                                smoothing_statistic="max")
    assert config_from_dict(config.to_dict()) == config and config.calibration_samples() == 16
    with pytest.raises(ConfigError, match="smoothing_samples"):
        DynamicQuantConfig(smoothing_samples=0)


def test_static_smoothing_shares_one_scale_per_tensor_on_the_plain_graph(tiny_dir):
    """Unfused graph: Q, K and V read one LayerNorm output and share one Mul, so it is still quantized once."""
    from optimum.quantization import StaticQuantConfig

    folder = tiny_dir("text-classification")
    config = StaticQuantConfig(
        calibration={"num_samples": len(SENTENCES), "sequence_length": 32}, head_token_only=False)
    assert config.smoothing_alpha == "auto"
    smoothed = QuantModelForSequenceClassification.from_pretrained(folder, quantize=config, calibration_dataset=SENTENCES)
    smoothing = smoothed.quantization_recipe.details["smoothing"]
    assert smoothing["applied"] and smoothing["alpha"] == 0.7  # "auto" on ONNX Runtime
    assert len(smoothing["smoothed_nodes"]) == 2 * 4  # per layer: Q, K, V, FFN input
    graph = onnx.load(str(onnx_file(smoothed))).graph
    muls = [n for n in graph.node if n.name.endswith("_smoothing")]
    assert len(muls) == 2 * 2  # per layer: one for Q/K/V, one for the FFN input
    consumers = {m.output[0]: [n.op_type for n in graph.node if m.output[0] in n.input] for m in muls}
    assert all(ops == ["QuantizeLinear"] for ops in consumers.values()), consumers
    reference, inputs = fp32_logits(folder)
    assert_close_to_fp32(reference, smoothed(**inputs).logits.numpy())
    plain = QuantModelForSequenceClassification.from_pretrained(
        folder, quantize=config.replace(smoothing_alpha=None), calibration_dataset=SENTENCES)
    assert plain.quantization_recipe.details["smoothing"] == {"applied": False, "reason": "smoothing_alpha=None"}
    assert not any(n.name.endswith("_smoothing") for n in onnx.load(str(onnx_file(plain))).graph.node)


@pytest.mark.parametrize("alpha", [0, 1.5, True, "0.5", "AUTO"])
def test_bad_static_smoothing_alpha(alpha):
    from optimum.quantization import StaticQuantConfig

    with pytest.raises(ConfigError, match="smoothing_alpha"):
        StaticQuantConfig(smoothing_alpha=alpha)


def test_smoothing_alpha_auto_round_trips_on_both_configs():
    from optimum.quantization import StaticQuantConfig

    for config_class in (StaticQuantConfig, DynamicQuantConfig):
        assert config_class().smoothing_alpha == "auto"
        for alpha in ("auto", None, 0.3):
            config = config_class(smoothing_alpha=alpha)
            assert config_from_dict(config.to_dict()) == config
        assert config_class().smoothing(0.5) == 0.5 and config_class(smoothing_alpha=0.3).smoothing(0.5) == 0.3
        assert config_class(smoothing_alpha=None).smoothing(0.5) is None
    with pytest.raises(ConfigError, match="smoothing_alpha"):
        DynamicQuantConfig(smoothing_alpha="AUTO")
    for statistic in ("auto", "max", "mean-max"):
        config = DynamicQuantConfig(smoothing_statistic=statistic)
        assert config_from_dict(config.to_dict()) == config
    assert DynamicQuantConfig().resolved_smoothing_statistic("max") == "max"
    assert DynamicQuantConfig(smoothing_statistic="mean-max").resolved_smoothing_statistic("max") == "mean-max"


def test_dynamic_auto_smoothing_follows_the_weight_range(tiny_dir):
    """7-bit weights get the 7-bit alpha and statistic, 8-bit ones the 8-bit ones, whatever this CPU is; values given
    win over both."""
    folder = tiny_dir("text-classification")
    reference, inputs = fp32_logits(folder)
    seven = DYNAMIC_SMOOTHING_ALPHA["7-bit"], DYNAMIC_SMOOTHING_STATISTIC["7-bit"]
    eight = DYNAMIC_SMOOTHING_ALPHA["8-bit"], DYNAMIC_SMOOTHING_STATISTIC["8-bit"]
    assert seven[0] != eight[0] and seven[1] != eight[1]
    scales = {}
    for reduce_range, given, expected in ((True, ("auto", "auto"), seven), (False, ("auto", "auto"), eight),
                                          ("pair-safe", ("auto", "auto"), eight), (True, eight, eight)):
        config = DynamicQuantConfig(reduce_range=reduce_range, smoothing_alpha=given[0], smoothing_statistic=given[1])
        model = QuantModelForSequenceClassification.from_pretrained(folder, quantize=config,
                                                                    calibration_dataset=SENTENCES)
        smoothing = model.quantization_recipe.details["smoothing"]
        assert smoothing["applied"], smoothing
        assert (smoothing["alpha"], smoothing["statistic"]) == expected, (reduce_range, smoothing)
        if reduce_range is not False or cpu_info().has_vnni:  # 8-bit s8 weights can saturate AVX2's 16-bit pair sums
            assert_close_to_fp32(reference, model(**inputs).logits.numpy())
        graph = onnx.load(str(onnx_file(model))).graph
        smoothing_muls = {n.input[1] for n in graph.node if n.name.endswith("_smoothing")}
        scales[(reduce_range, given)] = np.concatenate(
            [numpy_helper.to_array(t).ravel() for t in graph.initializer if t.name in smoothing_muls])
    # The choice really reaches the graph: 7-bit "auto" smooths differently from 8-bit, the 8-bit values alike on both.
    auto = ("auto", "auto")
    assert not np.allclose(scales[(True, auto)], scales[(False, auto)])
    np.testing.assert_allclose(scales[(True, eight)], scales[(False, auto)], rtol=1e-6)
