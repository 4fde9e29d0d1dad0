"""The training loss, with the output layer applied only where a label is.

A causal LM's forward computes logits at every position, but supervised fine-tuning
scores only the response tokens. :func:`response_loss` runs the decoder stack, picks the
hidden states that predict a labelled token, and applies the output layer to those rows
alone; the loss is the same mean token cross-entropy as ``model(**batch).loss``.
For SmolLM2-135M the output layer (49k x 576) is about a fifth of the forward FLOPs at
every prompt position.

With ``output_ids`` (``train.softmax: sid_tokens``) the softmax runs over those tokens only
(the SID tokens): the output layer computes their rows alone, and the model never has to
learn to push 49k text tokens below the new ones. Its scores then match a decoder that
renormalises over the allowed SID tokens (``eval.score_mode: renormalized``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from semrec.decoding.model_calls import head_rows
from semrec.prompts.batching import IGNORE_INDEX

MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")
# config keys of models that transform logits after the output layer (Gemma 2, Cohere)
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale")


def base_causal_lm(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (LoRA layers stay injected), or ``model``."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def response_loss(
    model: nn.Module, batch: dict[str, torch.Tensor], output_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross-entropy of the labelled tokens of ``batch`` (``labels``, ``-100``: none).

    ``batch`` holds ``input_ids``, ``labels`` and optionally ``attention_mask`` (2-D
    padding or a 4-D mask) and ``position_ids``; other entries are ignored. Labels are
    aligned with ``input_ids``: position ``t``'s label is predicted at ``t - 1``.
    ``output_ids`` (sorted token ids) restricts the softmax to those tokens; every label
    must be one of them.
    """
    scored = labelled_logits(model, batch, output_ids)
    if scored is None:  # the model changes its logits after the output layer: its own loss
        inputs = {name: batch[name] for name in MODEL_INPUTS if name in batch}
        return model(**inputs, labels=batch["labels"], use_cache=False).loss
    logits, columns = scored
    if logits.shape[0] == 0:  # no labelled token: zero loss that still has a graph
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), columns)


def labelled_logits(
    model: nn.Module, batch: dict[str, torch.Tensor], output_ids: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The logits at the positions that predict a labelled token, in row-major order, and
    each label's column among them (its token id, or its index in ``output_ids``).

    None for models that transform their logits after the output layer
    (:data:`LOGIT_TRANSFORMS`), where only the model's own loss is exact.
    """
    lm = base_causal_lm(model)
    decoder, head = lm.get_decoder(), lm.get_output_embeddings()
    if decoder is None or head is None:
        raise TypeError(
            f"{type(lm).__name__} exposes no decoder/output layer (get_decoder, "
            "get_output_embeddings); response_loss needs a transformers causal LM"
        )
    if any(getattr(lm.config, key, None) for key in LOGIT_TRANSFORMS):
        return None
    inputs = {name: batch[name] for name in MODEL_INPUTS if name in batch}
    hidden = decoder(**inputs, use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    states, labels = hidden[:, :-1][keep], targets[keep]
    if output_ids is None:
        return head(states), labels
    return _restricted_logits(head, states, labels, output_ids)


def _restricted_logits(
    head: nn.Module, states: torch.Tensor, labels: torch.Tensor, output_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits over ``output_ids`` only, and each label's column among them."""
    output_ids = output_ids.to(labels.device)
    columns = torch.searchsorted(output_ids, labels).clamp(max=len(output_ids) - 1)
    if not bool((output_ids[columns] == labels).all()):
        stray = labels[output_ids[columns] != labels][:5].tolist()
        raise ValueError(
            f"train.softmax: sid_tokens: labelled tokens {stray} are not SID tokens; this "
            "training data needs the full-vocabulary softmax (train.softmax: full_vocab)"
        )
    rows = head_rows(head, output_ids)
    if rows is None:  # a head semrec cannot slice (e.g. LoRA on lm_head): slice its output
        return head(states)[:, output_ids], columns
    weight, bias = rows
    logits = states @ weight.to(states.dtype).T
    return (logits if bias is None else logits + bias.to(logits.dtype)), columns
