"""Side-by-side FP32 vs INT8 checks: output agreement and latency on real inputs, for any backend's model."""

from __future__ import annotations

import statistics
import time
from typing import Sequence

import numpy as np


def _primary_output(outputs, task: str) -> np.ndarray:
    """The array that carries the model's answer for `task`, as float64 numpy."""
    if task == "question-answering":
        value = np.concatenate([outputs.start_logits.detach().numpy(), outputs.end_logits.detach().numpy()], axis=-1)
    elif task == "feature-extraction":
        value = outputs.last_hidden_state.detach().numpy()
    else:
        value = outputs.logits.detach().numpy()
    return np.asarray(value, dtype=np.float64)


def _pooled(value: np.ndarray, mask: np.ndarray, task: str) -> np.ndarray:
    """One vector per example: mean over real tokens for token-level outputs, last real token for LMs."""
    mask = mask.astype(np.float64)
    if task == "text-classification":
        return value
    if task == "text-generation":
        last = mask.sum(axis=1).astype(int) - 1
        return value[np.arange(len(value)), last]
    return (value * mask[..., None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


def output_agreement(reference, candidate, tokenizer, texts: Sequence[str], task: str) -> dict:
    """Cosine similarity and top-1 agreement of `candidate` against `reference`, one text at a time."""
    import torch

    cosines, agree, max_abs = [], [], 0.0
    for text in texts:
        inputs = tokenizer(text, return_tensors="pt", truncation=True, max_length=128)
        with torch.no_grad():
            ref = _primary_output(reference(**inputs), task)
            cand = _primary_output(candidate(**inputs), task)
        max_abs = max(max_abs, float(np.abs(ref - cand).max()))
        mask = inputs["attention_mask"].numpy()
        ref_vec, cand_vec = _pooled(ref, mask, task), _pooled(cand, mask, task)
        cosines.extend(_cosine(ref_vec, cand_vec).tolist())
        agree.extend((ref_vec.argmax(-1) == cand_vec.argmax(-1)).tolist())
    return {
        "examples": len(texts),
        "cosine_mean": float(np.mean(cosines)),
        "cosine_min": float(np.min(cosines)),
        # An argmax over embedding dimensions means nothing: top-1 only for tasks whose outputs are scores.
        "top1_agreement": None if task == "feature-extraction" else float(np.mean(agree)),
        "max_abs_diff": max_abs,
    }


def latency_ms(model, tokenizer, texts: Sequence[str], warmup: int = 3, repeats: int = 1) -> dict:
    """Per-example latency (batch 1) over `texts` after `warmup` calls: p50 and p90 in milliseconds."""
    import torch

    batches = [tokenizer(t, return_tensors="pt", truncation=True, max_length=128) for t in texts]
    with torch.no_grad():
        for inputs in batches[:warmup]:
            model(**inputs)
        times = []
        for _ in range(repeats):
            for inputs in batches:
                start = time.perf_counter()
                model(**inputs)
                times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return {"p50": statistics.median(times), "p90": times[int(0.9 * (len(times) - 1))], "calls": len(times)}

