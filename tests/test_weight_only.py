"""Weight-only quantization (ORT MatMulNBits): config, presets, graph census, accuracy, generation, round trip."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
import transformers
from conftest import SENTENCES

from optimum.quantization import QuantModelForCausalLM, QuantModelForSequenceClassification, WeightOnlyQuantConfig
from optimum.quantization.backends.base import matches_any
from optimum.quantization.configuration import config_from_dict, config_from_json_string, resolve_quant_config
from optimum.quantization.errors import ConfigError
from optimum.quantization.evaluation.census import int8_op_counts
from optimum.quantization.recipe import RECIPE_FILE

PROMPTS = ["the movie is", "a good script , good actors"]
# Tiny random-init GPT-2: logits span about +-1. Measured max |diff| vs FP32 over two prompts: w8 0.006,
# w4 0.06; top-1 agreement w8 100%, w4 95-97%. Bounds leave ~3x headroom.
W8_MAX_ABS_LOGIT_DIFF = 0.02
W4_MAX_ABS_LOGIT_DIFF = 0.2
W4_MIN_TOP1 = 0.9
GREEDY_STEPS = 8


def onnx_file(model):
    folder = model.model_save_dir
    return folder / "model" / "model.onnx" if (folder / "model").is_dir() else folder / "model.onnx"


def linear_modules(folder, patterns):
    """Names of the weight layers (nn.Linear, GPT-2's Conv1D) of the PyTorch causal LM, minus those matching `patterns`."""
    from transformers.pytorch_utils import Conv1D

    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    return [
        name for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Linear, Conv1D)) and not matches_any(name, patterns)
    ]


def nbits_nodes(path):
    return [n for n in onnx.load(str(path)).graph.node if n.op_type == "MatMulNBits"]


def fp32_causal_logits(folder, prompt):
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits.numpy(), inputs


# --------------------------------------------------------------------------------------------- config


def test_presets_resolve_to_weight_only_configs():
    assert resolve_quant_config("w8") == WeightOnlyQuantConfig(bits=8, block_size=32)
    assert resolve_quant_config("w4") == WeightOnlyQuantConfig(bits=4, block_size=32)
    assert WeightOnlyQuantConfig().symmetric is True and WeightOnlyQuantConfig().accuracy_level == 4


def test_weight_only_config_round_trips():
    config = WeightOnlyQuantConfig(bits=4, block_size=128, symmetric=False, accuracy_level=0, exclude=["h.0.*"],
                                   keep_default_exclusions=False, op_types=["MatMul"])
    data = config.to_dict()
    assert data["_type"] == "WeightOnlyQuantConfig" and data["_data"]["bits"] == 4
    assert config_from_dict(json.loads(json.dumps(data))) == config
    assert config_from_json_string(config.to_json_string()) == config
    assert config_from_json_string(config.to_json_string()) != WeightOnlyQuantConfig()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"bits": 3}, "`bits` must be 8 or 4"),
        ({"bits": 2}, "`bits` must be 8 or 4"),
        ({"bits": True}, "`bits` .*must be an integer"),
        ({"block_size": 10}, "power of two >= 16"),
        ({"block_size": 8}, "power of two >= 16"),
        ({"block_size": 48}, "power of two >= 16"),
        ({"accuracy_level": 7}, "0..4"),
        ({"accuracy_level": -1}, "0..4"),
        ({"symmetric": "yes"}, "symmetric"),
        ({"per_channel": False}, "`per_channel` does not apply to weight-only"),
        ({"reduce_range": True}, "`reduce_range` does not apply to weight-only"),
        ({"weight_type": "uint8"}, "`weight_type` does not apply to weight-only"),
        ({"exclude": "lm_head"}, "list of strings"),
    ],
)
def test_weight_only_config_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        WeightOnlyQuantConfig(**kwargs)


def test_invalid_weight_only_config_in_a_saved_recipe_is_refused():
    data = WeightOnlyQuantConfig().to_dict()
    data["_data"]["block_size"] = 10
    with pytest.raises(ConfigError, match="block_size"):
        config_from_dict(data)


def test_torch_backend_refuses_weight_only(tiny_dir):
    with pytest.raises(ConfigError, match="'torch' does not support WeightOnlyQuantConfig; it supports DynamicQuantConfig"):
        QuantModelForCausalLM.from_pretrained(tiny_dir("text-generation"), backend="torch", quantize="w8")


def test_gather_is_refused_for_8_bits(tiny_dir):
    with pytest.raises(ConfigError, match=r"cannot handle op type\(s\) \['Gather'\]"):
        QuantModelForCausalLM.from_pretrained(tiny_dir("text-generation"), quantize=WeightOnlyQuantConfig(op_types=["MatMul", "Gather"]))


# --------------------------------------------------------------------------------------------- decoder


@pytest.fixture(scope="module")
def w8_gpt2(tiny_dir):
    return QuantModelForCausalLM.from_pretrained(tiny_dir("text-generation"), quantize="w8")


def test_graph_holds_one_matmulnbits_per_linear_layer_and_none_for_the_head(tiny_dir, w8_gpt2):
    folder = tiny_dir("text-generation")
    expected = linear_modules(folder, WeightOnlyQuantConfig().exclusion_patterns())
    assert len(expected) == 2 * 4  # c_attn, attn.c_proj, c_fc, mlp.c_proj per layer; lm_head excluded
    nodes = nbits_nodes(onnx_file(w8_gpt2))
    assert len(nodes) == len(expected)
    assert all(n.name.split("/")[-2] in {"c_attn", "c_proj", "c_fc"} for n in nodes)
    assert not any("lm_head" in n.name for n in nodes)
    assert {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}.items() >= {
        "bits": 8, "block_size": 32, "accuracy_level": 4
    }.items()
    details = w8_gpt2.quantization_recipe.details
    assert details["excluded_nodes"] == ["/lm_head/MatMul"]
    assert details["int8_ops"] == {"MatMulNBits": len(expected)}
    assert details["quantized_nodes"] == len(expected)
    assert (details["bits"], details["block_size"], details["graph_fused"]) == (8, 32, False)
    # Attention's two activation x activation MatMuls per layer are reported, not silently skipped.
    assert len(details["not_quantized_nodes"]) == 2 * 2
    lm_head = next(n for n in onnx.load(str(onnx_file(w8_gpt2))).graph.node if n.name == "/lm_head/MatMul")
    assert lm_head.op_type == "MatMul"


def test_lm_head_is_quantized_when_default_exclusions_are_dropped(tiny_dir):
    model = QuantModelForCausalLM.from_pretrained(
        tiny_dir("text-generation"), quantize=WeightOnlyQuantConfig(keep_default_exclusions=False)
    )
    names = [n.name for n in nbits_nodes(onnx_file(model))]
    assert len(names) == 2 * 4 + 1 and "/lm_head/MatMul_Q8" in names
    # GPT-2 ties lm_head to the embedding: ONNX computes it as Transpose(wte), given its own constant here.
    assert model.quantization_recipe.details["tied_weights_materialised"] == ["/lm_head/MatMul"]


def test_exclude_pattern_keeps_a_layer_in_fp32(tiny_dir):
    config = WeightOnlyQuantConfig(exclude=["transformer.h.1.mlp.*", "no.such.module"])
    model = QuantModelForCausalLM.from_pretrained(tiny_dir("text-generation"), quantize=config)
    nodes = nbits_nodes(onnx_file(model))
    assert len(nodes) == 2 * 4 - 2
    assert not any("/h.1/mlp/" in n.name for n in nodes)
    details = model.quantization_recipe.details
    assert set(details["excluded_nodes"]) == {"/lm_head/MatMul", "/transformer/h.1/mlp/c_fc/Gemm", "/transformer/h.1/mlp/c_proj/Gemm"}
    assert details["unused_exclude_patterns"] == ["no.such.module"]


def test_op_types_select_what_is_quantized(tiny_dir):
    """GPT-2's linear layers export as Gemm, its (tied) head as MatMul: each op type picks its own nodes."""
    folder = tiny_dir("text-generation")
    gemm_only = WeightOnlyQuantConfig(op_types=["Gemm"], keep_default_exclusions=False)
    model = QuantModelForCausalLM.from_pretrained(folder, quantize=gemm_only)  # holds the temp folder
    names = [n.name for n in nbits_nodes(onnx_file(model))]
    assert len(names) == 2 * 4 and all(name.endswith("/Gemm_MatMul_Q8") for name in names)
    matmul_only = WeightOnlyQuantConfig(op_types=["MatMul"], keep_default_exclusions=False)
    model = QuantModelForCausalLM.from_pretrained(folder, quantize=matmul_only)
    names = [n.name for n in nbits_nodes(onnx_file(model))]
    assert names == ["/lm_head/MatMul_Q8"]


@pytest.mark.parametrize("preset", ["w8", "w4"])
def test_logits_close_to_fp32(tiny_dir, w8_gpt2, preset):
    folder = tiny_dir("text-generation")
    model = w8_gpt2 if preset == "w8" else QuantModelForCausalLM.from_pretrained(folder, quantize="w4")
    for prompt in PROMPTS:
        reference, inputs = fp32_causal_logits(folder, prompt)
        logits = model(**inputs).logits.numpy()
        diff = np.abs(reference - logits).max()
        top1 = (reference.argmax(-1) == logits.argmax(-1)).mean()
        if preset == "w8":
            assert diff < W8_MAX_ABS_LOGIT_DIFF and top1 == 1.0, (diff, top1)
        else:
            assert 0 < diff < W4_MAX_ABS_LOGIT_DIFF and top1 >= W4_MIN_TOP1, (diff, top1)


def test_greedy_generation_with_kv_cache_equals_fp32(tiny_dir, w8_gpt2):
    folder = tiny_dir("text-generation")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert w8_gpt2.use_cache
    for prompt in PROMPTS:
        inputs = tokenizer(prompt, return_tensors="pt")
        kwargs = dict(max_new_tokens=GREEDY_STEPS, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        assert w8_gpt2.generate(**inputs, **kwargs).tolist() == reference.generate(**inputs, **kwargs).tolist()


def test_text_generation_pipeline(tiny_dir, w8_gpt2):
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_dir("text-generation"))
    out = transformers.pipeline("text-generation", model=w8_gpt2, tokenizer=tokenizer)("the movie is", max_new_tokens=5, do_sample=False)
    assert out[0]["generated_text"].startswith("the movie is") and len(out[0]["generated_text"]) > len("the movie is")


def test_save_reload_round_trip_is_identical(tiny_dir, tmp_path, w8_gpt2):
    _, inputs = fp32_causal_logits(tiny_dir("text-generation"), PROMPTS[0])
    before = w8_gpt2(**inputs).logits.numpy()
    out = tmp_path / "saved"
    w8_gpt2.save_pretrained(out)
    recipe = json.loads((out / RECIPE_FILE).read_text())
    assert recipe["quantization"]["_type"] == "WeightOnlyQuantConfig"
    reloaded = QuantModelForCausalLM.from_pretrained(out)
    assert reloaded.model_save_dir == out  # loaded as saved, not quantized again
    assert reloaded.quantization_config == w8_gpt2.quantization_config
    assert len(nbits_nodes(out / "model.onnx")) == 2 * 4
    np.testing.assert_array_equal(reloaded(**inputs).logits.numpy(), before)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    kwargs = dict(max_new_tokens=GREEDY_STEPS, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert reloaded.generate(**inputs, **kwargs).tolist() == w8_gpt2.generate(**inputs, **kwargs).tolist()


def test_causal_lm_weights_are_saved_beside_the_graph(tmp_path, w8_gpt2):
    """ONNX Runtime maps model.onnx_data instead of copying every weight out of a parsed protobuf (peak memory)."""
    out = tmp_path / "saved"
    w8_gpt2.save_pretrained(out)
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False)
    external = [t.name for t in graph.graph.initializer if onnx.external_data_helper.uses_external_data(t)]
    assert any(name.endswith("_Q8") for name in external) and "transformer.wte.weight" in external
    assert (out / "model.onnx_data").stat().st_size > (out / "model.onnx").stat().st_size  # tiny model: the graph is big
    assert json.loads((out / RECIPE_FILE).read_text())["details"]["external_data_file"] == "model.onnx_data"


# --------------------------------------------------------------------------------------------- encoder


def test_encoder_weight_only_on_plain_graph_shrinks_the_file(tiny_dir):
    """BERT whose linear layers dominate: w8 < 0.5x FP32, w4 smaller still, every Linear but the classifier."""
    folder = tiny_dir("large-text-classification")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer(SENTENCES, return_tensors="pt", padding=True)
    with torch.no_grad():
        reference = transformers.AutoModelForSequenceClassification.from_pretrained(folder)(**inputs).logits.numpy()
    sizes = {}
    for preset in ("w8", "w4"):
        model = QuantModelForSequenceClassification.from_pretrained(folder, quantize=preset)
        details = model.quantization_recipe.details
        sizes[preset] = details["int8_size_bytes"]
        # The plain graph keeps Q/K/V as separate MatMuls: 6 per layer + pooler (a fused Attention would hide 3).
        assert details["int8_ops"] == {"MatMulNBits": 4 * 6 + 1} and not details["graph_fused"]
        assert details["excluded_nodes"] == ["/classifier/Gemm"]
        if preset == "w8":
            assert (model(**inputs).logits.numpy().argmax(-1) == reference.argmax(-1)).all()
    assert sizes["w8"] < 0.5 * details["fp32_size_bytes"], (sizes, details["fp32_size_bytes"])
    assert sizes["w4"] < sizes["w8"]
