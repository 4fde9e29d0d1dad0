"""The training loss, with the output layer applied only where a label is.

A causal LM's forward computes logits at every position, but supervised fine-tuning
scores only the response tokens. :func:`response_loss` runs the decoder stack, picks the
hidden states that predict a labelled token, and applies the output layer to those rows
alone; the loss is the same mean token cross-entropy as ``model(**batch).loss``.
For SmolLM2-135M the output layer (49k x 576) is about a fifth of the forward FLOPs at
every prompt position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from semrec.data.batching import IGNORE_INDEX

MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")
# config keys of models that transform logits after the output layer (Gemma 2, Cohere)
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale")


def base_causal_lm(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (LoRA layers stay injected), or ``model``."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def response_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy of the labelled tokens of ``batch`` (``labels``, ``-100``: none).

    ``batch`` holds ``input_ids``, ``labels`` and optionally ``attention_mask`` (2-D
    padding or a 4-D mask) and ``position_ids``; other entries are ignored. Labels are
    aligned with ``input_ids``: position ``t``'s label is predicted at ``t - 1``.
    """
    lm = base_causal_lm(model)
    decoder, head = lm.get_decoder(), lm.get_output_embeddings()
    if decoder is None or head is None:
        raise TypeError(
            f"{type(lm).__name__} exposes no decoder/output layer (get_decoder, "
            "get_output_embeddings); response_loss needs a transformers causal LM"
        )
    inputs = {name: batch[name] for name in MODEL_INPUTS if name in batch}
    if any(getattr(lm.config, key, None) for key in LOGIT_TRANSFORMS):
        # the model changes its logits after the output layer: use its own loss
        return model(**inputs, labels=batch["labels"], use_cache=False).loss
    hidden = decoder(**inputs, use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    logits = head(hidden[:, :-1][keep])
    if logits.shape[0] == 0:  # no labelled token: zero loss that still has a graph
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), targets[keep])
