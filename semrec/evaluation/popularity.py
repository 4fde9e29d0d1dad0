"""The most-popular baseline: every user gets the items most frequent in training."""

from __future__ import annotations

import numpy as np
import torch

from semrec.data.split import Example, Split
from semrec.evaluation.metrics import TopKRankingMetrics


def popularity_ranking(split: Split, k: int) -> torch.Tensor:
    """The ``k`` items with most training interactions (ties: lower item index first)."""
    counts = split.train_item_counts()
    order = np.lexsort((np.arange(len(counts)), -counts))
    return torch.as_tensor(order[:k], dtype=torch.long)


def evaluate_popularity(split: Split, examples: list[Example], ks: list[int]) -> dict[str, float]:
    """Ranking metrics of the popularity list on ``examples``, same protocol as the LLM."""
    top = popularity_ranking(split, max(ks))
    metric = TopKRankingMetrics(ks, split.num_items)
    targets = torch.tensor([ex.target for ex in examples], dtype=torch.long)
    metric.update(top.expand(len(examples), -1), targets)
    return metric.compute()
