"""Runtime causal LMs generate with one PyTorch thread (its spinning workers otherwise take the runtime's cores),
and the latency benchmark forces a fixed length without per-step EOS scans."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers import LogitsProcessor, LogitsProcessorList

from optimum.quantization import QuantModelForCausalLM
from optimum.quantization.backends.generate_threads import torch_threads
from optimum.quantization.errors import ConfigError
from optimum.quantization.evaluation.generation import fixed_length_kwargs, per_token_latency


class ThreadCountSeen(LogitsProcessor):
    """Records PyTorch's thread count at every step of `generate()`."""

    def __init__(self):
        self.counts = []

    def __call__(self, input_ids, scores):
        self.counts.append(torch.get_num_threads())
        return scores


@pytest.fixture
def two_torch_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_torch_threads_sets_and_restores_even_on_error(two_torch_threads):
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError, match="boom"):
        with torch_threads(1):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == 2
    with torch_threads(None):
        assert torch.get_num_threads() == 2


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_runtime_generate_uses_one_torch_thread_and_restores_it(tiny_dir, two_torch_threads, backend):
    folder = tiny_dir("text-generation")
    model = QuantModelForCausalLM.from_pretrained(folder, backend=backend, quantize="w8")
    inputs = {"input_ids": torch.tensor([[5, 17, 42, 8]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    kwargs = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0}

    seen = ThreadCountSeen()
    with torch.no_grad():
        one_thread = model.generate(**inputs, logits_processor=LogitsProcessorList([seen]), **kwargs)
    assert seen.counts == [1] * 5
    assert torch.get_num_threads() == 2  # the caller's setting is back

    model.generate_torch_threads = None  # opt out: PyTorch's setting is left alone
    seen = ThreadCountSeen()
    with torch.no_grad():
        untouched = model.generate(**inputs, logits_processor=LogitsProcessorList([seen]), **kwargs)
    assert seen.counts == [2] * 5
    assert torch.equal(one_thread, untouched)  # threads change the speed, never the tokens

    model.generate_torch_threads = 0
    with pytest.raises(ConfigError, match="generate_torch_threads"):
        model.generate(**inputs, **kwargs)


def test_fixed_length_generation_ignores_the_models_eos(tiny_dir):
    folder = tiny_dir("text-generation")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    inputs = {"input_ids": torch.tensor([[5, 17, 42, 8]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    with torch.no_grad():
        first_token = int(model.generate(**inputs, max_new_tokens=1, do_sample=False, pad_token_id=0)[0, -1])
        model.generation_config.eos_token_id = first_token  # the model now "ends" at once
        assert model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=0).shape[1] == 5
        assert model.generate(**inputs, **fixed_length_kwargs(6)).shape[1] == 4 + 6
    # per_token_latency raises if generate() returned another length. Its times are not asserted: on a tiny model a
    # busy machine can put the per-token difference of medians at or below zero (then tokens_per_s is None).
    timing = per_token_latency(model, inputs, new_tokens=6, repeats=1, warmup=0)
    assert timing["new_tokens"] == 6 and timing["total_ms"] > 0
    assert timing["tokens_per_s"] is None or timing["tokens_per_s"] > 0
    assert "min_new_tokens" not in fixed_length_kwargs(6)  # its per-step EOS scans would be timed too
