"""Text generation on ONNX Runtime: KV cache, IO binding with reused buffers, sampling, left padding, EOS.

Tiny random-init GPT-2 and LLaMA-style models (conftest): what is checked is token-for-token equality,
which a broken cache, binding, position or mask handling would break within a few steps.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import transformers

from optimum.quantization import QuantModelForCausalLM
from optimum.quantization.backends.ort_kv_buffers import KVBufferPool
from optimum.quantization.evaluation.generation import (
    generations_markdown,
    per_token_latency,
    prompt_inputs,
    side_by_side_generations,
)

PROMPTS = ["the movie is", "a good script , good actors and a great director", "it 's slow"]
NEW_TOKENS = 16
KINDS = ["text-generation", "llama-text-generation"]
SAMPLING = dict(do_sample=True, top_k=50, top_p=0.95, temperature=0.95, repetition_penalty=1.2)


@pytest.fixture(scope="module")
def models(tiny_dir):
    """Factory: models(kind, recipe) -> (our ORT model, tokenizer, PyTorch FP32 model), built once per module."""
    built = {}

    def get(kind: str, recipe=None):
        if (kind, recipe) not in built:
            folder = tiny_dir(kind)
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
            ours = QuantModelForCausalLM.from_pretrained(folder, quantize=recipe, use_io_binding=True)
            reference = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
            built[kind, recipe] = ours, tokenizer, reference
        return built[kind, recipe]

    return get


def generate(model, tokenizer, prompt, seed=None, **kwargs):
    if seed is not None:
        transformers.set_seed(seed)
    inputs = tokenizer(prompt, return_tensors="pt")
    kwargs = {"max_new_tokens": NEW_TOKENS, "do_sample": False, "pad_token_id": tokenizer.eos_token_id, **kwargs}
    with torch.no_grad():
        return model.generate(**inputs, **kwargs)[0].tolist()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("io_binding", [True, False])
def test_fp32_greedy_equals_pytorch_token_for_token(models, kind, io_binding):
    ours, tokenizer, reference = models(kind)
    ours.use_io_binding = io_binding
    try:
        for prompt in PROMPTS:
            assert generate(ours, tokenizer, prompt) == generate(reference, tokenizer, prompt), prompt
    finally:
        ours.use_io_binding = True


@pytest.mark.parametrize("kind", KINDS)
def test_fp32_sampling_equals_pytorch_under_the_same_seed(models, kind):
    """top-k, top-p, temperature and repetition penalty are transformers' own processors on our logits."""
    ours, tokenizer, reference = models(kind)
    for seed, prompt in enumerate(PROMPTS):
        assert generate(ours, tokenizer, prompt, seed, **SAMPLING) == generate(reference, tokenizer, prompt, seed, **SAMPLING)


@pytest.mark.parametrize(("kind", "recipe"), [("text-generation", "dynamic"), ("text-generation", "w8"), ("llama-text-generation", "w8")])
def test_int8_tokens_identical_with_and_without_io_binding(models, kind, recipe):
    ours, tokenizer, _ = models(kind, recipe)
    assert ours.quantization_recipe.details["int8_ops"]  # really quantized
    runs = {}
    for io_binding in (True, False):
        ours.use_io_binding = io_binding
        runs[io_binding] = [generate(ours, tokenizer, p) for p in PROMPTS] + [
            generate(ours, tokenizer, p, seed, **SAMPLING) for seed, p in enumerate(PROMPTS)
        ]
    ours.use_io_binding = True
    assert runs[True] == runs[False]


def test_sampling_is_reproducible_under_a_seed(models):
    ours, tokenizer, _ = models("text-generation", "w8")
    first = generate(ours, tokenizer, PROMPTS[0], 7, **SAMPLING)
    assert generate(ours, tokenizer, PROMPTS[0], 7, **SAMPLING) == first
    assert generate(ours, tokenizer, PROMPTS[0], 8, **SAMPLING) != first  # the seed really drives the draws
    assert first != generate(ours, tokenizer, PROMPTS[0])  # and it is not greedy decoding


@pytest.mark.parametrize("kind", KINDS)
def test_left_padded_batch_equals_one_by_one(models, kind):
    ours, tokenizer, _ = models(kind, "w8")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer.name_or_path, padding_side="left")
    tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    assert (batch["attention_mask"] == 0).any()  # prompts of different lengths: really padded
    with torch.no_grad():
        out = ours.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    width = batch["input_ids"].shape[1]
    for row, prompt in zip(out.tolist(), PROMPTS):
        single = generate(ours, tokenizer, prompt)[len(tokenizer(prompt).input_ids) :]  # may stop early at EOS
        assert row[width : width + len(single)] == single, prompt
        assert set(row[width + len(single) :]) <= {tokenizer.eos_token_id}, prompt


def test_eos_stops_generation(models):
    ours, tokenizer, _ = models("text-generation", "w8")
    prompt_len = len(tokenizer(PROMPTS[0]).input_ids)
    free_run = generate(ours, tokenizer, PROMPTS[0])[prompt_len:]
    # The first token that did not appear before it becomes the end-of-sequence token.
    stop_at = next(i for i in range(1, len(free_run)) if free_run[i] not in free_run[:i])
    eos = free_run[stop_at]
    stopped = generate(ours, tokenizer, PROMPTS[0], eos_token_id=eos)
    assert stopped[prompt_len:] == free_run[: stop_at + 1]
    # In a batch, a finished sequence is padded while the other goes on to the length limit.
    pad = next(t for t in range(len(tokenizer)) if t not in free_run and t != eos)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer.name_or_path, padding_side="left")
    tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer([PROMPTS[0], PROMPTS[2]], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = ours.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=eos, pad_token_id=pad)
    first = out[0, batch["input_ids"].shape[1] :].tolist()
    assert first[: stop_at + 1] == free_run[: stop_at + 1] and set(first[stop_at + 1 :]) <= {pad}


def test_io_binding_allocates_kv_buffers_once_per_generate(models):
    ours, tokenizer, _ = models("text-generation", "w8")
    pool = ours._kv_buffer_pool()
    before = pool.allocations
    generate(ours, tokenizer, PROMPTS[1], max_new_tokens=24)
    # Two buffers (read one, write the other) per present key/value, for all 24 steps.
    assert pool.allocations - before == 2 * len(ours.key_value_output_names)


def test_io_binding_outside_generate_never_overwrites_returned_outputs(models):
    ours, tokenizer, _ = models("text-generation", "w8")
    inputs = tokenizer(PROMPTS[0], return_tensors="pt")
    with torch.no_grad():
        first = ours(**inputs)
        kept = first.past_key_values[0][0].clone()
        ours(**tokenizer(PROMPTS[1], return_tensors="pt"))
    assert torch.equal(first.past_key_values[0][0], kept)


def test_kv_pool_swaps_two_buffers_and_grows_past_its_hint():
    pool = KVBufferPool(["past.0.key"], ["present.0.key"], torch.float32)
    pool.capacity_hint = 12
    a = pool.output_buffer("present.0.key", None, (1, 2, 3))
    b = pool.output_buffer("present.0.key", a, (1, 2, 4))
    c = pool.output_buffer("present.0.key", b, (1, 2, 5))
    assert a.data_ptr() == c.data_ptr() != b.data_ptr() and pool.allocations == 2
    d = pool.output_buffer("present.0.key", c, (1, 2, 7))  # 14 > 12: the other buffer grows once
    assert d.numel() == 14 and pool.allocations == 3


def test_text_generation_pipeline_with_io_binding(models):
    ours, tokenizer, _ = models("llama-text-generation", "w8")
    ours.use_io_binding = True
    out = transformers.pipeline("text-generation", model=ours, tokenizer=tokenizer)(PROMPTS[0], max_new_tokens=5, do_sample=False)
    assert out[0]["generated_text"].startswith(PROMPTS[0]) and len(out[0]["generated_text"]) > len(PROMPTS[0])


def test_io_binding_choice_survives_save_and_reload(models, tmp_path):
    ours, _, _ = models("text-generation", "w8")
    ours.save_pretrained(tmp_path / "w8")
    assert QuantModelForCausalLM.from_pretrained(tmp_path / "w8", use_io_binding=False).use_io_binding is False
    assert QuantModelForCausalLM.from_pretrained(tmp_path / "w8", use_io_binding=True).use_io_binding is True


def test_per_token_latency_and_side_by_side_markdown(models):
    ours, tokenizer, reference = models("text-generation", "w8")
    # Times are not asserted (a busy machine can even make the per-token difference negative on a tiny model).
    timing = per_token_latency(ours, prompt_inputs(2, 8, len(tokenizer)), new_tokens=8, repeats=3, warmup=1)
    assert timing["batch_size"] == 2 and timing["prompt_length"] == 8 and timing["new_tokens"] == 8
    assert timing["first_token_ms"] > 0 and math.isfinite(timing["per_token_ms"])
    result = side_by_side_generations({"fp32": reference, "w8": ours}, tokenizer, PROMPTS[:2], max_new_tokens=6, **SAMPLING)
    assert [list(p["generations"]) for p in result["prompts"]] == [["fp32", "w8"]] * 2
    markdown = generations_markdown(result)
    assert markdown.count("| fp32 |") == 2 and "top_p=0.95" in markdown and PROMPTS[1] in markdown


def test_int8_preset_means_weight_only_8_bit_for_causal_lms(models):
    from optimum.quantization.configuration import DynamicQuantConfig, WeightOnlyQuantConfig, resolve_quant_config

    assert resolve_quant_config("int8", "text-generation") == WeightOnlyQuantConfig(bits=8)
    assert isinstance(resolve_quant_config("int8", "text-classification"), DynamicQuantConfig)
    assert isinstance(resolve_quant_config("dynamic", "text-generation"), DynamicQuantConfig)  # explicit is honoured
    ours, _, _ = models("text-generation", "int8")
    assert isinstance(ours.quantization_config, WeightOnlyQuantConfig)
    assert ours.quantization_recipe.details["int8_ops"] == {"MatMulNBits": 2 * 4}


@pytest.mark.slow  # three fresh interpreters, each loading torch and ONNX Runtime: ~30 s on a quiet machine
def test_generation_benchmark_measures_each_variant_in_a_fresh_process(tiny_dir):
    from optimum.quantization.generation_benchmark import (
        GenerationBenchmarkConfig,
        generation_benchmark_markdown,
        run_generation_benchmark,
    )

    config = GenerationBenchmarkConfig(batch_sizes=[1, 2], prompt_length=4, new_tokens=3, repeats=1, warmup=0, threads=1)
    result = run_generation_benchmark(str(tiny_dir("text-generation")), ["pytorch-fp32", "ort-int8", "ort-int8-no-iobinding"],
                                      config=config)
    rows = {row["name"]: row for row in result["variants"]}
    assert all("error" not in row for row in rows.values()), rows
    assert rows["ort-int8"]["spec"]["options"]["load"] == {"use_io_binding": True}
    for row in rows.values():
        assert [r["batch_size"] for r in row["latency"]] == [1, 2]
        assert row["peak_rss_bytes"] > 0 and row["time_to_first_token_s"] > row["load_s"] > 0
    assert rows["ort-int8"]["size_bytes"] == rows["ort-int8-no-iobinding"]["size_bytes"] < rows["pytorch-fp32"]["size_bytes"]
    for row in rows.values():  # memory by stage: imports, runtime, load, first token, each batch size; peak last
        stages = row["memory_stages"]
        assert [s["stage"] for s in stages][-3:] == ["first token", "generate b1", "generate b2"]
        assert stages[1]["rss_bytes"] > stages[0]["rss_bytes"] + 50e6  # importing torch costs well over 50 MB
        assert all(a["peak_rss_bytes"] <= b["peak_rss_bytes"] <= row["peak_rss_bytes"] for a, b in zip(stages, stages[1:]))
    markdown = generation_benchmark_markdown(result)
    assert "| ort-int8-no-iobinding |" in markdown and "| variant | python + optimum.quantization | + torch |" in markdown


def test_generations_command_writes_side_by_side_markdown(tiny_dir, tmp_path):
    from optimum.quantization.commands.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[:2]) + "\n", encoding="utf-8")
    code = main(["generations", "--model", str(tiny_dir("text-generation")), "--prompts", str(prompts), "--greedy",
                 "--max-new-tokens", "4", "-o", str(tmp_path / "out")])
    assert code == 0
    markdown = (tmp_path / "out" / "generations.md").read_text(encoding="utf-8")
    assert markdown.count("| pytorch-fp32 |") == 2 and markdown.count("| ort-int8 |") == 2
    runs = json.loads((tmp_path / "out" / "generations.json").read_text(encoding="utf-8"))["runs"]["run"]
    # Greedy on FP32 vs weight-only 8-bit of the tiny model: the same continuation (logit diffs ~0.006).
    assert all(len(set(p["generations"].values())) == 1 for p in runs["prompts"])
