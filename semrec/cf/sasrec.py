"""SASRec (Kang & McAuley, 2018) as RecBole 1.2.1 builds it.

Learned positional embeddings added to the item embeddings, layer norm and dropout on the
input, then post-norm transformer blocks (causal self-attention, GELU feed-forward) whose
output at the last real position is the user state; items are scored against the same
embedding table that encodes them. Defaults are RecBole's ``SASRec.yaml``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from semrec.cf.base import PADDING, SequenceNetwork, SequentialRecommender

MASKED_ATTENTION = -10000.0  # RecBole's additive mask value (finite: no NaN on empty rows)


class SelfAttentionBlock(nn.Module):
    """One post-norm transformer block: ``LN(x + attn(x))``, then ``LN(x + FFN(x))``.

    Dropout sits on the attention probabilities and on each sub-layer's output (not inside
    the feed-forward network, unlike ``nn.TransformerEncoderLayer``), as in RecBole.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        inner_size: int,
        hidden_dropout: float,
        attention_dropout: float,
        layer_norm_eps: float,
    ) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(
                f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}"
            )
        self.num_heads = num_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key_value = nn.Linear(hidden_size, 2 * hidden_size)
        self.attention_output = nn.Linear(hidden_size, hidden_size)
        self.attention_dropout = nn.Dropout(attention_dropout)
        self.attention_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.feed_forward = nn.Sequential(
            nn.Linear(hidden_size, inner_size), nn.GELU(), nn.Linear(inner_size, hidden_size)
        )
        self.output_dropout = nn.Dropout(hidden_dropout)
        self.output_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def forward(
        self,
        states: torch.Tensor,
        attention_bias: torch.Tensor,
        only_at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``states`` [B, L, d]; ``attention_bias`` [B, 1, L, L] (0 = may attend).

        Returns [B, L, d], or with ``only_at`` (positions [B]) just those rows, [B, 1, d]:
        the same values at a fraction of the cost when only one position is read.
        """
        batch, _, hidden = states.shape
        head_size = hidden // self.num_heads
        if only_at is not None:
            rows = torch.arange(batch, device=states.device)
            attention_bias = attention_bias[rows, :, only_at].unsqueeze(2)
            query_states = states[rows, only_at].unsqueeze(1)
        else:
            query_states = states

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, -1, self.num_heads, head_size).transpose(1, 2)

        query = heads(self.query(query_states))
        key, value = map(heads, self.key_value(states).chunk(2, dim=-1))
        logits = query @ key.transpose(-1, -2) / math.sqrt(head_size) + attention_bias
        attended = self.attention_dropout(logits.softmax(dim=-1)) @ value
        attended = attended.transpose(1, 2).reshape(batch, -1, hidden)
        out = self.attention_norm(
            query_states + self.output_dropout(self.attention_output(attended))
        )
        return self.output_norm(out + self.output_dropout(self.feed_forward(out)))


class SASRecNetwork(SequenceNetwork):
    """The SASRec encoder over internal item ids (see :mod:`semrec.cf.base` for padding)."""

    def __init__(
        self,
        num_items: int,
        max_history: int,
        hidden_size: int,
        num_layers: int,
        num_heads: int,
        inner_size: int,
        hidden_dropout: float,
        attention_dropout: float,
        layer_norm_eps: float,
        initializer_range: float,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.item_embedding = nn.Embedding(num_items + 1, hidden_size, padding_idx=PADDING)
        self.position_embedding = nn.Embedding(max_history, hidden_size)
        self.input_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.input_dropout = nn.Dropout(hidden_dropout)
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(
                hidden_size,
                num_heads,
                inner_size,
                hidden_dropout,
                attention_dropout,
                layer_norm_eps,
            )
            for _ in range(num_layers)
        )
        for module in self.modules():  # RecBole's (BERT's) initialisation
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=initializer_range)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.item_embedding.weight[PADDING].zero_()

    def encode(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        length = items.shape[1]
        positions = torch.arange(length, device=items.device)
        states = self.item_embedding(items) + self.position_embedding(positions)
        states = self.input_dropout(self.input_norm(states))
        causal = torch.ones(length, length, dtype=torch.bool, device=items.device).tril()
        allowed = causal & (items != PADDING)[:, None, None, :]
        attention_bias = torch.zeros(allowed.shape, dtype=states.dtype, device=items.device)
        attention_bias = attention_bias.masked_fill(~allowed, MASKED_ATTENTION)
        *inner_blocks, last_block = self.blocks
        for block in inner_blocks:
            states = block(states, attention_bias)
        # Only the last real position is read: the last block computes just that row.
        return last_block(states, attention_bias, only_at=lengths - 1).squeeze(1)


class SASRec(SequentialRecommender):
    """SASRec with RecBole 1.2.1's defaults (2 blocks, 2 heads, d=64, FFN 256, dropout 0.5).

    Training arguments (``learning_rate``, ``batch_size``, ``max_epochs``, ``patience``,
    ``eval_every``, ``seed``, ``num_threads``, ...) are those of
    :class:`~semrec.cf.base.SequentialRecommender`.
    """

    def __init__(
        self,
        *,
        hidden_size: int = 64,
        num_layers: int = 2,
        num_heads: int = 2,
        inner_size: int = 256,
        hidden_dropout: float = 0.5,
        attention_dropout: float = 0.5,
        layer_norm_eps: float = 1e-12,
        initializer_range: float = 0.02,
        **training: Any,
    ) -> None:
        super().__init__(**training)
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.inner_size = inner_size
        self.hidden_dropout = hidden_dropout
        self.attention_dropout = attention_dropout
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range

    def build_network(self, num_items: int, max_history: int) -> SASRecNetwork:
        return SASRecNetwork(
            num_items,
            max_history,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            inner_size=self.inner_size,
            hidden_dropout=self.hidden_dropout,
            attention_dropout=self.attention_dropout,
            layer_norm_eps=self.layer_norm_eps,
            initializer_range=self.initializer_range,
        )
