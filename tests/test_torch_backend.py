"""PyTorch dynamic INT8 backend: nn.Linear really swapped, outputs close, INT8 safetensors round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from conftest import SENTENCES
from safetensors import safe_open
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

from optimum.quantization import DynamicQuantConfig, QuantModelForCausalLM, QuantModelForSequenceClassification


def logits(model, tokenizer):
    inputs = tokenizer(SENTENCES, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**inputs).logits.numpy()


@pytest.mark.parametrize("per_channel", [True, False])
def test_linears_swapped_head_kept_and_round_trip_identical(tiny_dir, tmp_path, per_channel):
    folder = tiny_dir("text-classification")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    reference = logits(transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval(), tokenizer)
    model = QuantModelForSequenceClassification.from_pretrained(
        folder, backend="torch", quantize=DynamicQuantConfig(per_channel=per_channel)
    )
    assert isinstance(model, transformers.BertForSequenceClassification)
    swapped = [n for n, m in model.named_modules() if isinstance(m, DynamicLinear)]
    # 2 layers x (q, k, v, attention output, intermediate, output) + pooler; the classifier stays FP32.
    assert len(swapped) == 2 * 6 + 1
    assert isinstance(model.classifier, torch.nn.Linear)
    before = logits(model, tokenizer)
    cosine = (reference * before).sum(-1) / (np.linalg.norm(reference, axis=-1) * np.linalg.norm(before, axis=-1))
    assert cosine.min() > 0.95 and cosine.mean() > 0.99

    model.save_pretrained(tmp_path / "q")
    with safe_open(str(tmp_path / "q" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("bert.encoder.layer.0.attention.self.query.weight_int8").dtype == torch.int8
    assert "bert.encoder.layer.0.attention.self.query.weight" not in keys
    assert json.loads((tmp_path / "q" / "quantization_config.json").read_text())["backend"] == "torch"
    reloaded = QuantModelForSequenceClassification.from_pretrained(tmp_path / "q")
    np.testing.assert_array_equal(logits(reloaded, tokenizer), before)
    assert model.quantization_recipe.details["excluded_modules"] == ["classifier"]
    reloaded.save_pretrained(tmp_path / "again")  # a reloaded model saves a complete folder, tokenizer included
    assert {p.name for p in (tmp_path / "q").iterdir()} == {p.name for p in (tmp_path / "again").iterdir()}


def test_int8_weights_file_shrinks(tiny_dir, tmp_path):
    folder = tiny_dir("large-text-classification")
    model = QuantModelForSequenceClassification.from_pretrained(folder, backend="torch", quantize="dynamic")
    model.save_pretrained(tmp_path / "q")
    ratio = (tmp_path / "q" / "model.safetensors").stat().st_size / (folder / "model.safetensors").stat().st_size
    assert ratio <= 0.30, ratio


def test_causal_lm_with_tied_head_round_trips(tiny_dir, tmp_path):
    folder = tiny_dir("text-generation")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = QuantModelForCausalLM.from_pretrained(folder, backend="torch", quantize="dynamic")
    ids = tokenizer("the movie is", return_tensors="pt")
    expected = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    model.save_pretrained(tmp_path / "q")
    reloaded = QuantModelForCausalLM.from_pretrained(tmp_path / "q")
    assert reloaded.lm_head.weight.data_ptr() == reloaded.transformer.wte.weight.data_ptr()
    got = reloaded.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert got.tolist() == expected.tolist()


def test_damaged_weights_file_is_refused(tiny_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    from optimum.quantization import ConfigError, ModelFileError

    model = QuantModelForSequenceClassification.from_pretrained(tiny_dir("text-classification"), backend="torch", quantize="dynamic")
    model.save_pretrained(tmp_path / "q")
    tensors = load_file(str(tmp_path / "q" / "model.safetensors"))
    tensors.pop("bert.embeddings.word_embeddings.weight")
    save_file(tensors, str(tmp_path / "q" / "model.safetensors"))
    with pytest.raises(ModelFileError, match="model.safetensors differs from the file saved"):
        QuantModelForSequenceClassification.from_pretrained(tmp_path / "q")
    # A folder whose recipe lists no files (saved by an earlier version) is checked by the loader itself.
    recipe = json.loads((tmp_path / "q" / "quantization_config.json").read_text())
    (tmp_path / "q" / "quantization_config.json").write_text(json.dumps({**recipe, "files": {}}))
    with pytest.raises(ConfigError, match="does not match the architecture"):
        QuantModelForSequenceClassification.from_pretrained(tmp_path / "q")
