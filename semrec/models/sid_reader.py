"""X^S of TTDS Eq. 12: the LLM's representation of a SID token sequence, differentiably.

The SID's tokens come in as per-level weights over that level's token embeddings, and the
representation is the mean of the last hidden states over the SID positions (the pooling
:class:`~semrec.text.encoders.LLMMeanEncoder` applies to texts, which gives X^I). With
straight-through one-hot weights the forward pass sees exactly the chosen tokens'
embeddings, and the gradient flows into whatever produced the weights (the tokenizer) as
well as into the LLM (LoRA, SID rows).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from semrec.models.loss import base_causal_lm


def _decoder(model: nn.Module) -> nn.Module:
    decoder = base_causal_lm(model).get_decoder()
    if decoder is None:
        raise TypeError(f"{type(model).__name__} exposes no decoder (get_decoder)")
    return decoder


class LLMSIDReader:
    """X^S of SIDs given as per-level weights [b, size_l] over ``level_token_ids[l]``.

    Not an ``nn.Module``: it only reads the model it is given (which the LightningModule
    owns), so the model's parameters are not registered twice.
    """

    def __init__(self, model: nn.Module, level_token_ids: Sequence[Sequence[int]]) -> None:
        self.model = model
        self.level_token_ids = [
            torch.tensor(list(ids), dtype=torch.long) for ids in level_token_ids
        ]

    def __call__(self, weights: list[torch.Tensor]) -> torch.Tensor:
        if len(weights) > len(self.level_token_ids):
            raise ValueError(
                f"{len(weights)} levels of weights for {len(self.level_token_ids)} token levels"
            )
        embed = self.model.get_input_embeddings()
        device = weights[0].device
        tokens = []
        for level, w in enumerate(weights):
            rows = embed(self.level_token_ids[level].to(device))  # [size_l, hidden]
            if w.shape[1] != rows.shape[0]:
                raise ValueError(
                    f"level {level}: weights over {w.shape[1]} codes, {rows.shape[0]} tokens"
                )
            tokens.append(w.to(rows.dtype) @ rows)
        inputs = torch.stack(tokens, dim=1)  # [b, levels, hidden]
        hidden = _decoder(self.model)(inputs_embeds=inputs, use_cache=False).last_hidden_state
        return hidden.mean(dim=1)
