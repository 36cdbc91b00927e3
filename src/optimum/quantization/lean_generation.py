"""Text generation without PyTorch or transformers: ONNX Runtime, numpy and tokenizers only.

For small serving containers, where memory decides the machine a service needs. A process that
can call transformers' `generate()` holds ~476 MB of PyTorch and transformers before it reads a weight, 0.43x of
PyTorch FP32's whole peak for GPT-2 small; this runner needs neither library installed and runs the ONNX causal
LMs our ONNX Runtime backend saves (KV cache as `past_key_values.N.key/value` inputs, `present.N.*` outputs),
e.g. `quantize=WeightOnlyQuantConfig(keep_default_exclusions=False)` (INT8 `lm_head` too). GPT-2 small shape,
that model: peak memory of the process 381 MB, 0.35x of PyTorch FP32's 1,102 MB
(benchmarks/results/generation_lean.md).

It does what serving needs and no more: greedy or sampling (temperature, top-k, top-p), repetition penalty,
EOS and length stopping, batches with left padding. Greedy decoding gives the same tokens as `generate()` on
the same ONNX model, and the penalty and the temperature/top-k/top-p filters equal transformers' (tested);
their defaults come from transformers and the model's `generation_config.json`, as for `generate()`. Sampling
draws from numpy's generator, so a seed reproduces this runner's own draws, not PyTorch's.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .backends.ort_session import with_intra_op_threads
from .errors import ConfigError, ModelNotFoundError

MODEL_FILE = "model.onnx"
PAST_PREFIX = "past_key_values."


@dataclass
class SamplingSettings:
    """How the next token is chosen; greedy unless `do_sample`. The defaults are transformers' (top-k 50), and
    a model's `generation_config.json` overrides them as it does for `generate()`."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def __post_init__(self):
        if not self.temperature > 0 or not self.repetition_penalty > 0:
            raise ConfigError("`temperature` and `repetition_penalty` must be > 0.")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ConfigError(f"`top_k` must be an int >= 0 (0: off), got {self.top_k!r}.")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"`top_p` must be in (0, 1], got {self.top_p!r}.")


SAMPLING_FIELDS = tuple(f.name for f in dataclasses.fields(SamplingSettings))


def penalized(logits: np.ndarray, generated: np.ndarray, penalty: float) -> np.ndarray:
    """CTRL's repetition penalty on each row's ids so far, as transformers applies it."""
    scores = logits.astype(np.float32, copy=True)
    if penalty != 1.0:
        rows = np.arange(scores.shape[0])[:, None]
        seen = scores[rows, generated]
        scores[rows, generated] = np.where(seen < 0, seen * penalty, seen / penalty)
    return scores


def warped(scores: np.ndarray, settings: SamplingSettings) -> np.ndarray:
    """Temperature, then top-k, then top-p (transformers' order); removed tokens get -inf."""
    scores = scores / settings.temperature
    if settings.top_k and settings.top_k < scores.shape[-1]:
        kth = np.partition(scores, -settings.top_k, axis=-1)[:, -settings.top_k][:, None]
        scores = np.where(scores < kth, -np.inf, scores)
    if settings.top_p < 1.0:
        probs = _softmax(scores)
        order = np.argsort(-probs, axis=-1, kind="stable")
        sorted_probs = np.take_along_axis(probs, order, -1)
        # keep the smallest set whose mass reaches top_p: a token stays if the mass before it is below top_p
        keep_sorted = (np.cumsum(sorted_probs, -1) - sorted_probs) < settings.top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, -1)
        scores = np.where(keep, scores, -np.inf)
    return scores


def _softmax(scores: np.ndarray) -> np.ndarray:
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    return probs / probs.sum(-1, keepdims=True)


def next_tokens(logits: np.ndarray, generated: np.ndarray, settings: SamplingSettings, rng: np.random.Generator) -> np.ndarray:
    """One token per row of `logits` ([batch, vocab]); `generated` holds each row's ids so far."""
    scores = penalized(logits, generated, settings.repetition_penalty)
    if not settings.do_sample:
        return scores.argmax(-1).astype(np.int64)
    probs = _softmax(warped(scores, settings))
    return np.array([rng.choice(probs.shape[-1], p=row) for row in probs], dtype=np.int64)


class LeanCausalLM:
    """An ONNX causal LM with a KV cache, run by ONNX Runtime; ids in, ids out (or text with `tokenizer.json`)."""

    def __init__(self, session, generation_config: dict | None = None, tokenizer=None):
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]
        past = [i for i in session.get_inputs() if i.name.startswith(PAST_PREFIX)]
        if not past:
            raise ConfigError("This ONNX model has no past_key_values inputs: export it with the KV cache (text-generation-with-past).")
        self.past_names = [i.name for i in past]
        self.present_names = [n.replace(PAST_PREFIX, "present.") for n in self.past_names]
        shape, cache_types = past[0].shape, {"tensor(float)": np.float32, "tensor(float16)": np.float16}
        if len(shape) != 4 or not all(isinstance(d, int) for d in (shape[1], shape[3])) or past[0].type not in cache_types:
            raise ConfigError(f"Unsupported KV cache input {past[0].name}: {past[0].type} {shape}; this runner takes "
                              "float/float16 caches shaped [batch, heads, past_length, head_size].")
        self.kv_heads, self.head_size = shape[1], shape[3]
        self.cache_type = cache_types[past[0].type]
        self.generation_config = generation_config or {}
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, folder: str | Path, threads: int | None = None, session_options=None) -> "LeanCausalLM":
        """Load `model.onnx` (and `generation_config.json`, `tokenizer.json` when present) from a saved folder."""
        import onnxruntime

        if threads is not None and session_options is not None:
            raise ConfigError("Pass `threads` or `session_options`, not both (set intra_op_num_threads on your options).")
        folder = Path(folder)
        if not (folder / MODEL_FILE).is_file():
            raise ModelNotFoundError(f"No {MODEL_FILE} in {folder}: save a causal LM with backend='onnxruntime' first.")
        options = session_options or onnxruntime.SessionOptions()
        if threads is not None:
            options = with_intra_op_threads(options, threads)
        session = onnxruntime.InferenceSession(str(folder / MODEL_FILE), options, providers=["CPUExecutionProvider"])
        config_file = folder / "generation_config.json"
        generation_config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
        tokenizer = None
        if (folder / "tokenizer.json").is_file():
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        return cls(session, generation_config, tokenizer)

    def _eos_ids(self, eos_token_id) -> list[int]:
        eos = self.generation_config.get("eos_token_id") if eos_token_id == "default" else eos_token_id
        return [] if eos is None else [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]

    def generate(
        self,
        input_ids,
        attention_mask=None,
        max_new_tokens: int = 20,
        eos_token_id="default",
        pad_token_id: int | None = None,
        seed: int | None = None,
        num_beams: int = 1,
        **sampling,
    ) -> np.ndarray:
        """Prompt ids ([batch, length], left-padded with `attention_mask` 0) plus up to `max_new_tokens` new ids.

        Stops when every sequence has produced an EOS id (`eos_token_id`: the model's by default, None: never);
        finished sequences are filled with `pad_token_id` (default: the first EOS id, else 0).
        `sampling`: `do_sample`, `temperature`, `top_k`, `top_p`, `repetition_penalty` (`SamplingSettings`).
        """
        if num_beams != 1:
            raise ConfigError(f"Beam search is not supported by this runner (num_beams={num_beams!r}); use generate().")
        unknown = set(sampling) - set(SAMPLING_FIELDS)
        if unknown:
            raise ConfigError(f"Unknown generation option(s) {sorted(unknown)}: this runner takes max_new_tokens, "
                              "eos_token_id, pad_token_id, seed, num_beams=1, do_sample, temperature, top_k, top_p, "
                              "repetition_penalty.")
        defaults = {k: self.generation_config[k] for k in SAMPLING_FIELDS if self.generation_config.get(k) is not None}
        settings = SamplingSettings(**{**defaults, **sampling})
        ids = np.asarray(input_ids, dtype=np.int64)
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ConfigError(f"`input_ids` must be [batch, length] with length >= 1, got shape {ids.shape}.")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigError(f"`max_new_tokens` must be an int >= 1, got {max_new_tokens!r}.")
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
        if mask.shape != ids.shape:
            raise ConfigError(f"`attention_mask` shape {mask.shape} differs from `input_ids` shape {ids.shape}.")
        eos = self._eos_ids(eos_token_id)
        if pad_token_id is None:
            pad_token_id = self.generation_config.get("pad_token_id")
        pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
        rng = np.random.default_rng(seed)
        batch = ids.shape[0]
        past = {name: np.zeros((batch, self.kv_heads, 0, self.head_size), self.cache_type) for name in self.past_names}
        step_ids, generated, finished = ids, ids, np.zeros(batch, dtype=bool)
        for _ in range(max_new_tokens):
            outputs = self._forward(step_ids, mask, past)
            token = next_tokens(outputs[0][:, -1, :], generated, settings, rng)
            token = np.where(finished, pad, token)
            finished |= np.isin(token, eos)
            generated = np.concatenate([generated, token[:, None]], axis=1)
            if finished.all():
                break
            past = dict(zip(self.past_names, outputs[1:]))
            step_ids = token[:, None]
            mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
        return generated

    def _forward(self, step_ids: np.ndarray, mask: np.ndarray, past: dict) -> list[np.ndarray]:
        feed = {"input_ids": step_ids, "attention_mask": mask, **past}
        if "position_ids" in self.input_names:
            # as optimum does: count the real tokens; padded slots get 1, they are masked anyway
            positions = np.cumsum(mask, axis=1) - 1
            positions[mask == 0] = 1
            feed["position_ids"] = positions[:, -step_ids.shape[1]:]
        if "use_cache_branch" in self.input_names:  # older merged decoders
            feed["use_cache_branch"] = np.array([next(iter(past.values())).shape[2] > 0])
        return self.session.run(["logits"] + self.present_names, feed)

    def __call__(self, prompts: str | Sequence[str], **generate_kwargs) -> list[str]:
        """Continuations of `prompts` (the prompt left out), one batch, left-padded."""
        if self.tokenizer is None:
            raise ConfigError("No tokenizer.json beside the model: pass ids to generate() instead.")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ConfigError("No prompts given.")
        self.tokenizer.no_padding()  # we pad on the left ourselves
        encoded = [self.tokenizer.encode(p).ids for p in prompts]
        width = max(len(e) for e in encoded)
        pad = self._eos_ids("default")[0] if self._eos_ids("default") else 0
        ids = np.array([[pad] * (width - len(e)) + e for e in encoded], dtype=np.int64)
        mask = np.array([[0] * (width - len(e)) + [1] * len(e) for e in encoded], dtype=np.int64)
        output = self.generate(ids, attention_mask=mask, **generate_kwargs)
        eos = set(self._eos_ids(generate_kwargs.get("eos_token_id", "default")))
        texts = []
        for row in output[:, width:]:
            row = row.tolist()
            stop = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
            texts.append(self.tokenizer.decode(row[:stop], skip_special_tokens=True))
        return texts
