"""Torch-free generation (ONNX Runtime + numpy): the same greedy tokens as generate() on the same ONNX model,
left padding, EOS, seeded sampling, and a process that never imports PyTorch or transformers."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from optimum.quantization import QuantModelForCausalLM
from optimum.quantization.errors import ConfigError, ModelNotFoundError
from optimum.quantization.lean_generation import LeanCausalLM, SamplingSettings, next_tokens, penalized, warped

PROMPT = [[5, 17, 42, 8, 99, 3]]


@pytest.fixture(scope="module")
def saved(tiny_dir, tmp_path_factory):
    """saved(kind) -> (folder of our saved w8 ONNX model, the loaded QuantModelForCausalLM)."""
    built = {}

    def get(kind):
        if kind not in built:
            folder = tmp_path_factory.mktemp("lean") / kind
            model = QuantModelForCausalLM.from_pretrained(tiny_dir(kind), quantize="w8")
            model.save_pretrained(folder)
            built[kind] = folder, model
        return built[kind]

    return get


@pytest.mark.parametrize("kind", ["text-generation", "llama-text-generation"])
def test_greedy_tokens_equal_generate_on_the_same_model(saved, kind):
    folder, model = saved(kind)
    lean = LeanCausalLM.from_pretrained(folder)
    ids = torch.tensor(PROMPT)
    with torch.no_grad():
        expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                                  eos_token_id=None, pad_token_id=0)
    got = lean.generate(np.array(PROMPT), max_new_tokens=12, eos_token_id=None)
    assert got.tolist() == expected.tolist()


def test_left_padded_batch_equals_one_by_one(saved):
    lean = LeanCausalLM.from_pretrained(saved("text-generation")[0])
    short, long = [7, 21, 4], [5, 17, 42, 8, 99, 3]
    ids = np.array([[0] * 3 + short, long])
    mask = np.array([[0] * 3 + [1] * 3, [1] * 6])
    batch = lean.generate(ids, attention_mask=mask, max_new_tokens=8, eos_token_id=None)
    assert batch[0, 6:].tolist() == lean.generate(np.array([short]), max_new_tokens=8, eos_token_id=None)[0, 3:].tolist()
    assert batch[1].tolist() == lean.generate(np.array([long]), max_new_tokens=8, eos_token_id=None)[0].tolist()


def test_eos_stops_and_pads_finished_rows(saved):
    lean = LeanCausalLM.from_pretrained(saved("text-generation")[0])
    free = lean.generate(np.array(PROMPT), max_new_tokens=8, eos_token_id=None)[0, 6:].tolist()
    # the first token not seen before it (the first one if the model repeats a single token)
    stop_at = next((i for i in range(1, len(free)) if free[i] not in free[:i]), 0)
    stopped = lean.generate(np.array(PROMPT), max_new_tokens=8, eos_token_id=free[stop_at])
    assert stopped[0, 6:].tolist() == free[: stop_at + 1]
    # in a batch, the finished row is padded while a row that never meets this EOS goes on to the limit
    other = next(p for p in ([7, 21, 4, 9, 11, 13], [8, 30, 2, 14, 60, 5], [40, 41, 42, 43, 44, 45])
                 if free[stop_at] not in lean.generate(np.array([p]), max_new_tokens=8, eos_token_id=None)[0, 6:].tolist())
    alone = lean.generate(np.array([other]), max_new_tokens=8, eos_token_id=None)[0]
    batch = lean.generate(np.array([PROMPT[0], other]), max_new_tokens=8, eos_token_id=free[stop_at], pad_token_id=1)
    assert batch.shape[1] == 6 + 8 and batch[1].tolist() == alone.tolist()
    assert batch[0, 6:].tolist() == free[: stop_at + 1] + [1] * (8 - stop_at - 1)


def test_sampling_is_reproducible_under_a_seed_and_top_k_1_is_greedy(saved):
    lean = LeanCausalLM.from_pretrained(saved("text-generation")[0])
    kwargs = dict(max_new_tokens=16, eos_token_id=None, do_sample=True, temperature=1.5, top_k=50, top_p=0.95)
    first = lean.generate(np.array(PROMPT), seed=3, **kwargs)
    assert first.tolist() == lean.generate(np.array(PROMPT), seed=3, **kwargs).tolist()
    assert first.tolist() != lean.generate(np.array(PROMPT), seed=4, **kwargs).tolist()
    greedy = lean.generate(np.array(PROMPT), max_new_tokens=16, eos_token_id=None)
    assert lean.generate(np.array(PROMPT), max_new_tokens=16, eos_token_id=None, do_sample=True, top_k=1, seed=0).tolist() == greedy.tolist()


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(1.0, 50, 1.0), (0.7, 5, 0.9), (1.3, 0, 0.5), (1.0, 1, 1.0)])
def test_penalty_and_filters_equal_transformers(temperature, top_k, top_p):
    from transformers import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (3, 200)).astype(np.float32)  # negative and positive scores
    generated = rng.integers(0, 200, (3, 12))  # repeated ids included
    ids, scores = torch.from_numpy(generated), torch.from_numpy(logits)
    expected = RepetitionPenaltyLogitsProcessor(1.3)(ids, scores.clone())
    ours = penalized(logits, generated, 1.3)
    np.testing.assert_allclose(ours, expected.numpy(), rtol=1e-6)
    for warper in [TemperatureLogitsWarper(temperature)] + ([TopKLogitsWarper(top_k)] if top_k else []) + (
        [TopPLogitsWarper(top_p)] if top_p < 1 else []
    ):
        expected = warper(ids, expected)
    filtered = warped(ours, SamplingSettings(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p))
    assert np.array_equal(np.isinf(filtered), np.isinf(expected.numpy()))  # the same tokens removed
    kept = ~np.isinf(filtered)
    np.testing.assert_allclose(filtered[kept], expected.numpy()[kept], rtol=1e-5)


def test_sampling_defaults_come_from_the_generation_config(saved):
    lean = LeanCausalLM.from_pretrained(saved("text-generation")[0])
    greedy = lean.generate(np.array(PROMPT), max_new_tokens=10, eos_token_id=None)
    lean.generation_config = {**lean.generation_config, "do_sample": True, "top_k": 1}
    assert lean.generate(np.array(PROMPT), max_new_tokens=10, eos_token_id=None, seed=0).tolist() == greedy.tolist()
    lean.generation_config["top_k"] = 0
    sampled = lean.generate(np.array(PROMPT), max_new_tokens=10, eos_token_id=None, seed=0, temperature=5.0)
    assert sampled.tolist() != greedy.tolist()  # the config's do_sample is honoured; an argument still wins


def test_next_tokens_respects_top_p_top_k_and_repetition_penalty():
    rng = np.random.default_rng(0)
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]] * 400, dtype=np.float32))
    none = np.zeros((400, 0), dtype=np.int64)
    drawn = next_tokens(logits, none, SamplingSettings(do_sample=True, top_p=0.6), rng)
    assert set(drawn.tolist()) == {0, 1}  # 0.5 alone is below 0.6; 0.5 + 0.3 reaches it
    drawn = next_tokens(logits, none, SamplingSettings(do_sample=True, top_k=3), rng)
    assert set(drawn.tolist()) == {0, 1, 2}
    penalised = next_tokens(np.array([[2.0, 1.9]]), np.array([[0]]), SamplingSettings(repetition_penalty=1.2), rng)
    assert penalised.tolist() == [1]  # 2.0 / 1.2 < 1.9


def test_text_in_text_out_and_no_torch_or_transformers_imported(saved):
    folder = saved("text-generation")[0]
    script = (
        "import sys, json\n"
        "from optimum.quantization import LeanCausalLM\n"
        f"m = LeanCausalLM.from_pretrained({str(folder)!r})\n"
        "texts = m(['the movie is', 'a good script , good actors'], max_new_tokens=5)\n"
        "print(json.dumps({'texts': texts, 'modules': [n for n in ('torch', 'transformers') if n in sys.modules]}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["modules"] == []
    assert len(result["texts"]) == 2 and all(isinstance(t, str) for t in result["texts"])


def test_bad_input_raises_clear_errors(saved, tmp_path):
    with pytest.raises(ModelNotFoundError, match="model.onnx"):
        LeanCausalLM.from_pretrained(tmp_path)
    lean = LeanCausalLM.from_pretrained(saved("text-generation")[0])
    with pytest.raises(ConfigError, match="top_p"):
        lean.generate(np.array(PROMPT), top_p=0.0)
    with pytest.raises(ConfigError, match="num_beams"):
        lean.generate(np.array(PROMPT), num_beams=4)
    with pytest.raises(ConfigError, match="Unknown generation option"):
        lean.generate(np.array(PROMPT), typical_p=0.5)
    with pytest.raises(ConfigError, match="not both"):
        LeanCausalLM.from_pretrained(saved("text-generation")[0], threads=1, session_options=object())
    with pytest.raises(ConfigError, match="No prompts"):
        lean([])
    with pytest.raises(ConfigError, match="attention_mask"):
        lean.generate(np.array(PROMPT), attention_mask=np.ones((1, 2)))
    with pytest.raises(ConfigError, match="max_new_tokens"):
        lean.generate(np.array(PROMPT), max_new_tokens=0)


def test_generation_benchmark_runs_the_lean_variant_in_a_torch_free_process(tiny_dir):
    from optimum.quantization.generation_benchmark import GenerationBenchmarkConfig, run_generation_benchmark

    config = GenerationBenchmarkConfig(batch_sizes=[1, 2], prompt_length=4, new_tokens=3, repeats=1, warmup=0, threads=1)
    result = run_generation_benchmark(str(tiny_dir("text-generation")), ["lean-ort-w8-head"], baseline="lean-ort-w8-head",
                                      config=config)
    row = result["variants"][0]
    assert "error" not in row, row
    assert row["imported"] == []  # neither torch nor transformers was loaded in the measuring process
    assert [r["batch_size"] for r in row["latency"]] == [1, 2]  # times are not asserted: tiny model, shared machine
    assert all(math.isfinite(r["per_token_ms"]) and r["first_token_ms"] > 0 for r in row["latency"])
    stages = {s["stage"]: s["rss_bytes"] for s in row["memory_stages"]}
    assert stages["+ transformers generation"] == pytest.approx(stages["python + optimum.quantization"], abs=5e6)
