"""Text-generation measurements for any model with transformers' `generate()`: per-token latency,
time to first token, and side-by-side generations for a human to read.

Per-token latency is measured the way a user feels it: `generate()` with N new tokens and with 1 new token
(prefill plus the first token) on the same prompt, per token = (t_N - t_1) / (N - 1). Generation is forced
to exactly N tokens by generating without an EOS token (`eos_token_id=None`), so a model that happens to
emit EOS early is not faster by luck. `min_new_tokens` would force the length too, but its two logits
processors scan the whole vocabulary for EOS at every step (about 1.2 ms per token for GPT-2's 50,257
tokens on the 2-core benchmark machine), a cost no real generation pays, which would hide the runtime's speed.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from typing import Mapping, Sequence

from ..errors import ConfigError
from .benchmark import synthetic_inputs


def fixed_length_kwargs(new_tokens: int, pad_token_id: int | None = 0) -> dict:
    """`generate()` arguments that produce exactly `new_tokens` greedy tokens per sequence."""
    return {
        "max_new_tokens": new_tokens,
        "eos_token_id": None,  # nothing stops early; see the module docstring
        "do_sample": False,
        "num_beams": 1,
        "pad_token_id": pad_token_id,
    }


def prompt_inputs(batch_size: int, prompt_length: int, vocab_size: int, seed: int = 0) -> dict:
    """Random prompt ids (no padding) of one shape; the same seed gives every model the same prompt."""
    return synthetic_inputs(batch_size, prompt_length, vocab_size, ("input_ids", "attention_mask"), seed)


def numpy_prompt_inputs(batch_size: int, prompt_length: int, vocab_size: int, seed: int = 0) -> dict:
    """`prompt_inputs` as numpy arrays, drawn without PyTorch (for torch-free models): same shape, other ids,
    which changes nothing in the cost of a step."""
    import numpy as np

    low = min(1000, vocab_size - 1)
    input_ids = np.random.default_rng(seed).integers(low, vocab_size, (batch_size, prompt_length), dtype=np.int64)
    return {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids)}


def no_grad():
    """`torch.no_grad()` where PyTorch is loaded; nothing for a torch-free model, whose process never imports it."""
    torch = sys.modules.get("torch")
    return torch.no_grad() if torch is not None else contextlib.nullcontext()


def _time_generate(model, inputs: dict, new_tokens: int, repeats: int) -> list[float]:
    kwargs = fixed_length_kwargs(new_tokens)
    times = []
    with no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            output = model.generate(**inputs, **kwargs)
            times.append((time.perf_counter() - start) * 1e3)
            if output.shape[1] != inputs["input_ids"].shape[1] + new_tokens:
                raise ConfigError(f"generate() returned {output.shape[1]} tokens, expected prompt + {new_tokens}.")
    return times


def tokens_per_second(batch_size: int, per_token_ms: float) -> float | None:
    """Throughput of the decode steps; None where noise left the per-token time at or below zero (tiny models)."""
    return 1e3 * batch_size / per_token_ms if per_token_ms > 0 else None


def per_token_latency(model, inputs: dict, new_tokens: int = 64, repeats: int = 5, warmup: int = 1) -> dict:
    """Median time of prefill + first token, of the whole generation, and per further token (ms).

    The per-token time is a difference of two medians: on a tiny model and a busy machine it can come out at or below
    zero, and `tokens_per_s` is then None.
    """
    if new_tokens < 2:
        raise ConfigError("Per-token latency needs at least 2 new tokens.")
    if repeats < 1 or warmup < 0:
        raise ConfigError("repeats must be >= 1 and warmup >= 0.")
    if warmup:
        _time_generate(model, inputs, new_tokens, warmup)
    first, total = [], []
    for _ in range(repeats):  # interleaved, so a load change hits both alike
        first += _time_generate(model, inputs, 1, 1)
        total += _time_generate(model, inputs, new_tokens, 1)
    first_ms, total_ms = statistics.median(first), statistics.median(total)
    per_token_ms = (total_ms - first_ms) / (new_tokens - 1)
    batch_size, prompt_length = inputs["input_ids"].shape
    return {
        "batch_size": int(batch_size),
        "prompt_length": int(prompt_length),
        "new_tokens": new_tokens,
        "first_token_ms": first_ms,
        "total_ms": total_ms,
        "per_token_ms": per_token_ms,
        "tokens_per_s": tokens_per_second(int(batch_size), per_token_ms),
        "repeats": repeats,
    }


def generate_texts(model, tokenizer, prompts: Sequence[str], seed: int = 0, **generate_kwargs) -> list[str]:
    """The continuation (prompt left out) of each prompt, one at a time; sampling is seeded per prompt."""
    import torch
    from transformers import set_seed

    texts = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        for index, prompt in enumerate(prompts):
            set_seed(seed + index)  # the same draws for every model on the same prompt
            inputs = tokenizer(prompt, return_tensors="pt")
            output = model.generate(**inputs, pad_token_id=pad, **generate_kwargs)
            texts.append(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
    return texts


def side_by_side_generations(
    models: Mapping[str, object], tokenizer, prompts: Sequence[str], seed: int = 0, **generate_kwargs
) -> dict:
    """Every model's continuation of every prompt, with the settings used: {"settings", "prompts": [...]}."""
    if not prompts:
        raise ConfigError("Give at least one prompt.")
    outputs = {name: generate_texts(model, tokenizer, prompts, seed, **generate_kwargs) for name, model in models.items()}
    return {
        "settings": {"seed": seed, **generate_kwargs},
        "models": list(models),
        "prompts": [
            {"prompt": prompt, "generations": {name: outputs[name][i] for name in models}} for i, prompt in enumerate(prompts)
        ],
    }


def _one_line(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def generations_markdown(result: dict, title: str = "Side-by-side generations") -> str:
    """One section per prompt, one line per model: for a human to judge whether quantization hurt fluency."""
    settings = ", ".join(f"{k}={v}" for k, v in result["settings"].items())
    lines = [f"# {title}", "", f"Settings: {settings}.", ""]
    for number, item in enumerate(result["prompts"], 1):
        lines += [f"## {number}. {_one_line(item['prompt'])}", "", "| model | continuation |", "|---|---|"]
        lines += [f"| {name} | {_one_line(text)} |" for name, text in item["generations"].items()]
        lines.append("")
    return "\n".join(lines)
