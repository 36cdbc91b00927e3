"""Sequence classifiers that read one token: the last encoder layer computed for that token alone.

A BERT-style classification head reads only the first token's final hidden state ([CLS], <s>). The last layer
computes every other token's row too, and the head throws them away. Here that layer takes its queries from the
first token only, while its keys and values still see every token, so the logits stay the same. At 128 tokens that
skips the last layer's query, attention-output and feed-forward GEMMs for 127 tokens: about 1/14 of a 12-layer
model's multiply-adds (BERT-base) and 1/7 of a 6-layer one's (MiniLM-L6). It is done to the PyTorch model before
export, so every runtime (and every quantization recipe) runs the smaller graph.

Architectures register which module of the last layer to change and its first-token forward
(`register_head_token_layer`). Nothing here trusts a head to read the first token: `keep_head_token_only` runs the
model on a padded test batch before and after, and undoes the change if the logits differ.
"""

from __future__ import annotations

import logging
import types
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Largest logit change accepted between the full and the first-token last layer, relative to the logits' scale.
# Measured: 1.5e-8 on BERT-base shape (float rounding only); a head that reads other tokens moves them by far more.
LOGIT_TOLERANCE = 1e-4


def _first_query_rows(mask: torch.Tensor | None) -> torch.Tensor | None:
    """The first query's rows of an attention mask expanded to (batch, 1, queries, keys); other shapes as given."""
    if mask is not None and mask.dim() == 4:
        return mask[:, :, :1]  # keeps a (batch, 1, 1, keys) mask as it is
    return mask


def bert_attention_first_token(attention: nn.Module, hidden_states, attention_mask=None, *args, **kwargs):
    """A BERT-style attention block's (BertAttention, RobertaAttention, ...) forward for the first token's row only.

    Its self-attention runs through its cross-attention path: queries from the first token, keys and values from
    all of them. The output block adds the first token's residual. The layer's own forward then runs the
    feed-forward block on that one row."""
    first = hidden_states[:, :1]
    attended = attention.self(
        first, attention_mask=_first_query_rows(attention_mask), encoder_hidden_states=hidden_states
    )[0]
    return (attention.output(attended, first),)


def distilbert_block_first_token(block: nn.Module, x, attn_mask=None, *args, **kwargs):
    """DistilBERT's TransformerBlock forward for the first token's row: its attention takes query, key and value
    apart, and the residual adds need the first row too; the rest is the block's own LayerNorm order."""
    first = x[:, :1]
    attended = block.attention(query=first, key=x, value=x, mask=_first_query_rows(attn_mask))[0]
    attended = block.sa_layer_norm(attended + first)
    return (block.output_layer_norm(block.ffn(attended) + attended),)


@dataclass(frozen=True)
class HeadTokenLayout:
    """Which module of an architecture's last encoder layer gets the first-token forward, and that forward.

    The forward replaces the module's own on the instance and calls the same submodules in the same nesting, so
    the exported graph's node names (`/bert/encoder/layer.1/attention/self/query/MatMul`, ...) stay as they were:
    `exclude` patterns, default exclusions and the outlier-channel split still find the last layer's parts."""

    module: Callable[[nn.Module], nn.Module]
    forward: Callable


HEAD_TOKEN_LAYOUTS: dict[str, HeadTokenLayout] = {}


def register_head_token_layer(*model_types: str, module: Callable[[nn.Module], nn.Module], forward: Callable):
    layout = HeadTokenLayout(module, forward)
    for model_type in model_types:
        HEAD_TOKEN_LAYOUTS[model_type] = layout


def _base_model(model: nn.Module) -> nn.Module:
    return getattr(model, model.base_model_prefix)


register_head_token_layer(
    "bert", "roberta", "xlm-roberta", "camembert", "electra",
    module=lambda model: _base_model(model).encoder.layer[-1].attention, forward=bert_attention_first_token,
)
register_head_token_layer(
    "distilbert", module=lambda model: _base_model(model).transformer.layer[-1], forward=distilbert_block_first_token,
)


def unregistered_reason(model_type: str) -> str | None:
    """Why a model type cannot be cut (no layout registered), or None when it can be tried."""
    if model_type in HEAD_TOKEN_LAYOUTS:
        return None
    return f"no first-token layer registered for model type {model_type!r}"


def _test_batch(model: nn.Module) -> dict[str, torch.Tensor]:
    """Two random sequences of 12 tokens, the second padded after 7: a head or mask that mixes rows shows up."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def keep_head_token_only(model: nn.Module) -> dict:
    """Give `model`'s last encoder layer its first-token forward, in place, if the logits stay the same.

    Returns what happened, for the recipe: {"applied": bool, "reason" or "module" (the module whose forward changed)
    and "max_logit_difference" (on the test batch)}."""
    model_type = model.config.model_type
    reason = unregistered_reason(model_type)
    if reason is not None:
        return {"applied": False, "reason": reason}
    layout = HEAD_TOKEN_LAYOUTS[model_type]
    try:  # a model of a registered type laid out otherwise (remote code, an odd config) is exported whole
        target = layout.module(model)
        batch = _test_batch(model)
        with torch.no_grad():
            before = model(**batch).logits
    except Exception as error:
        return {"applied": False, "reason": f"the model did not run as a registered {model_type!r}: {error}"}
    target.forward = types.MethodType(layout.forward, target)
    try:
        with torch.no_grad():
            after = model(**batch).logits
    except Exception as error:  # modules that do not take these calls (e.g. output_attentions in the config)
        del target.forward
        return {"applied": False, "reason": f"the first-token forward failed on a test batch: {error}"}
    difference = float((after - before).abs().max()) if after.shape == before.shape else float("inf")
    # Written so that NaN logits fail the check too.
    if not difference <= LOGIT_TOLERANCE * max(1.0, float(before.abs().max())):
        del target.forward
        return {"applied": False, "max_logit_difference": difference,
                "reason": "the logits changed on a test batch: the head reads more than the first token"}
    logger.info("The last encoder layer computes the first token only (max logit difference %.1e).", difference)
    module = next(name for name, candidate in model.named_modules() if candidate is target)
    return {"applied": True, "module": module, "max_logit_difference": difference}
