"""Task metrics for FP32 vs INT8 comparisons: classification, SQuAD, perplexity, logit divergence.

Every function takes plain predictions or a model with the transformers call convention (`model(**inputs)`
returning `.logits` / `.start_logits`), so the same code scores PyTorch, ONNX Runtime and OpenVINO models.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from ..errors import ConfigError


def _check_same_length(predictions: Sequence, references: Sequence) -> None:
    if len(predictions) != len(references):
        raise ConfigError(f"{len(predictions)} predictions for {len(references)} references: they must pair up.")
    if not len(predictions):
        raise ConfigError("No predictions to score.")


def classification_metrics(predictions: Sequence[int], references: Sequence[int], average: str | None = None) -> dict:
    """Accuracy and F1 in percent, GLUE-style: binary F1 of class 1 for two classes, macro F1 otherwise."""
    _check_same_length(predictions, references)
    preds, refs = np.asarray(predictions), np.asarray(references)
    labels = np.union1d(preds, refs)
    average = average or ("binary" if set(labels.tolist()) <= {0, 1} else "macro")
    if average not in ("binary", "macro"):
        raise ConfigError(f"average must be 'binary' or 'macro', not {average!r}.")

    def f1_of(label) -> float:
        tp = np.sum((preds == label) & (refs == label))
        predicted, actual = np.sum(preds == label), np.sum(refs == label)
        return 0.0 if predicted + actual == 0 else 2.0 * tp / (predicted + actual)

    f1 = f1_of(1) if average == "binary" else float(np.mean([f1_of(label) for label in labels]))
    return {"accuracy": 100.0 * float(np.mean(preds == refs)), "f1": 100.0 * float(f1), "examples": len(preds)}


def squad_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """SQuAD v1.1 exact match and F1 in percent: each prediction scored against its best gold answer.

    Uses the official normalisation as ported in transformers (`evaluate`'s squad metric is a Hub script,
    which cannot load offline).
    """
    from transformers.data.metrics.squad_metrics import compute_exact, compute_f1

    _check_same_length(predictions, references)
    exact, f1 = [], []
    for prediction, answers in zip(predictions, references):
        answers = list(answers) or [""]
        exact.append(max(compute_exact(gold, prediction) for gold in answers))
        f1.append(max(compute_f1(gold, prediction) for gold in answers))
    return {"exact_match": 100.0 * float(np.mean(exact)), "f1": 100.0 * float(np.mean(f1)), "examples": len(f1)}


def prediction_agreement(reference: Sequence, candidate: Sequence) -> float:
    """Share of examples (0..1) where two models predict the same label or answer."""
    _check_same_length(candidate, reference)
    return float(np.mean([a == b for a, b in zip(reference, candidate)]))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def logit_divergence(reference_logits, candidate_logits, mask=None) -> dict:
    """How far candidate logits are from reference logits over the last axis (vocabulary or classes).

    Returns max/mean absolute difference, KL(reference || candidate) averaged over positions, and top-1
    agreement. `mask` (same leading shape, 1 = real position) leaves padding out.
    """
    ref = np.asarray(reference_logits, dtype=np.float64)
    cand = np.asarray(candidate_logits, dtype=np.float64)
    if ref.shape != cand.shape:
        raise ConfigError(f"Logit shapes differ: {ref.shape} vs {cand.shape}.")
    ref, cand = ref.reshape(-1, ref.shape[-1]), cand.reshape(-1, cand.shape[-1])
    if mask is not None:
        keep = np.asarray(mask).reshape(-1).astype(bool)
        ref, cand = ref[keep], cand[keep]
    ref_logp, cand_logp = _log_softmax(ref), _log_softmax(cand)
    kl = (np.exp(ref_logp) * (ref_logp - cand_logp)).sum(axis=-1)
    diff = np.abs(ref - cand)
    return {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "kl_divergence": float(kl.mean()),
        "top1_agreement": float(np.mean(ref.argmax(-1) == cand.argmax(-1))),
        "positions": int(len(ref)),
    }


def _as_numpy(value) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def _batches(items: Sequence, batch_size: int):
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]


def classification_logits(model, tokenizer, texts: Sequence[str], batch_size: int = 32, max_length: int = 128) -> np.ndarray:
    """Logits of a sequence classifier for `texts`, batched and padded per batch."""
    import torch

    chunks = []
    with torch.no_grad():
        for batch in _batches(list(texts), batch_size):
            inputs = tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
            chunks.append(_as_numpy(model(**inputs).logits))
    return np.concatenate(chunks)


def evaluate_classification(model, tokenizer, texts: Sequence[str], labels: Sequence[int], **kwargs) -> dict:
    """Accuracy/F1 of `model` on labelled texts; also returns the predictions for agreement checks."""
    predictions = classification_logits(model, tokenizer, texts, **kwargs).argmax(-1)
    return {**classification_metrics(predictions, labels), "predictions": predictions.tolist()}


def answer_questions(
    model, tokenizer, examples: Sequence[dict], max_seq_len: int = 384, doc_stride: int = 128, max_answer_len: int = 30
) -> list[str]:
    """Extractive answers for `examples` (dicts with `question` and `context`), via transformers' QA pipeline.

    The pipeline does the windowing over long contexts and the span search: it is the post-processing users get.
    """
    from transformers import pipeline

    answerer = pipeline("question-answering", model=model, tokenizer=tokenizer)
    answers = []
    for example in examples:
        result = answerer(
            question=example["question"],
            context=example["context"],
            max_seq_len=max_seq_len,
            doc_stride=doc_stride,
            max_answer_len=max_answer_len,  # run_qa's default; the pipeline's 15 cuts long answers
        )
        answers.append(result["answer"])
    return answers


def evaluate_squad(model, tokenizer, examples: Sequence[dict], **kwargs) -> dict:
    """SQuAD EM/F1 of `model` on examples with `question`, `context` and `answers` (a list of strings)."""
    predictions = answer_questions(model, tokenizer, examples, **kwargs)
    return {**squad_metrics(predictions, [e["answers"] for e in examples]), "predictions": predictions}


def _causal_logits(model, input_ids) -> np.ndarray:
    import torch

    with torch.no_grad():
        outputs = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False)
    return _as_numpy(outputs.logits)[0]


def token_windows(num_tokens: int, max_length: int, stride: int):
    """(begin, end, scored_from) windows of the strided sliding-window perplexity.

    The first window scores tokens 1..max_length-1; each next one moves the end by `stride` and scores only
    the new tokens, with up to `max_length` tokens of context. Every token but the first is scored exactly
    once (transformers' recipe drops one token per window when stride equals the window).
    """
    if not 0 < stride < max_length:
        raise ConfigError(f"stride must be in 1..{max_length - 1} (below the window), not {stride}.")
    end = min(max_length, num_tokens)
    yield 0, end, 1
    while end < num_tokens:
        previous_end, end = end, min(end + stride, num_tokens)
        begin = max(0, end - max_length)
        yield begin, end, previous_end - begin


def perplexity(
    model,
    tokenizer,
    text: str,
    max_length: int = 512,
    stride: int = 256,
    max_tokens: int | None = None,
    progress: Callable | None = None,
) -> dict:
    """Perplexity of a causal LM on `text` with a strided sliding window (exp of the mean token NLL)."""
    import torch

    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise ConfigError("Perplexity needs a text of at least two tokens.")
    windows = list(token_windows(len(ids), max_length, stride))
    nll_sum, scored = 0.0, 0
    for begin, end, scored_from in progress(windows) if progress else windows:
        logits = _causal_logits(model, ids[begin:end].unsqueeze(0))
        logp = _log_softmax(logits[:-1])  # position t predicts token t + 1
        targets = ids[begin + 1 : end].numpy()
        token_logp = logp[np.arange(len(targets)), targets][scored_from - 1 :]
        nll_sum -= float(token_logp.sum())
        scored += len(token_logp)
    nll = nll_sum / scored
    return {"perplexity": math.exp(nll), "nll": nll, "tokens": scored, "windows": len(windows)}


def compare_causal_logits(reference, candidate, tokenizer, texts: Sequence[str], max_length: int = 128) -> dict:
    """Logit divergence of two causal LMs over next-token distributions on `texts` (one text at a time)."""
    import torch

    ref_all, cand_all = [], []
    for text in texts:
        ids = torch.as_tensor(tokenizer(text, truncation=True, max_length=max_length)["input_ids"]).unsqueeze(0)
        ref_all.append(_causal_logits(reference, ids))
        cand_all.append(_causal_logits(candidate, ids))
    return logit_divergence(np.concatenate(ref_all), np.concatenate(cand_all))
