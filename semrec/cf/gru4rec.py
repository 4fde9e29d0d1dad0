"""GRU4Rec (Hidasi et al., 2016) as RecBole 1.2.1 builds it.

Item embeddings with dropout feed a bias-free GRU; a linear layer maps its state at the
last real position back to the embedding size, and items are scored against the same
embedding table that encodes them. Defaults are RecBole's ``GRU4Rec.yaml``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from semrec.cf.base import PADDING, SequenceNetwork, SequentialRecommender


class GRU4RecNetwork(SequenceNetwork):
    """The GRU4Rec encoder over internal item ids (see :mod:`semrec.cf.base` for padding)."""

    def __init__(
        self, num_items: int, embedding_size: int, hidden_size: int, num_layers: int, dropout: float
    ) -> None:
        super().__init__()
        self.item_embedding = nn.Embedding(num_items + 1, embedding_size, padding_idx=PADDING)
        self.embedding_dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(embedding_size, hidden_size, num_layers, bias=False, batch_first=True)
        self.output = nn.Linear(hidden_size, embedding_size)
        nn.init.xavier_normal_(self.item_embedding.weight)  # RecBole's initialisation
        for name, weight in self.gru.named_parameters():
            if name.startswith("weight_"):
                nn.init.xavier_uniform_(weight)
        with torch.no_grad():
            self.item_embedding.weight[PADDING].zero_()

    def encode(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # Right padding: the GRU reads real items first, so its state at length - 1 has
        # seen exactly the history (no packing needed).
        states, _ = self.gru(self.embedding_dropout(self.item_embedding(items)))
        return self.last_position(self.output(states), lengths)


class GRU4Rec(SequentialRecommender):
    """GRU4Rec with RecBole 1.2.1's defaults (embedding 64, hidden 128, 1 layer, dropout 0.3).

    Training arguments are those of :class:`~semrec.cf.base.SequentialRecommender`.
    """

    def __init__(
        self,
        *,
        embedding_size: int = 64,
        hidden_size: int = 128,
        num_layers: int = 1,
        dropout: float = 0.3,
        **training: Any,
    ) -> None:
        super().__init__(**training)
        self.embedding_size = embedding_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = dropout

    def build_network(self, num_items: int, max_history: int) -> GRU4RecNetwork:
        return GRU4RecNetwork(
            num_items, self.embedding_size, self.hidden_size, self.num_layers, self.dropout
        )
