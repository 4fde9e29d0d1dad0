"""The most-popular baseline: every user gets the items most frequent in training."""

from __future__ import annotations

import numpy as np
import torch

from semrec.data.split import Example, Split
from semrec.metrics.ranking import evaluate_ranked


def popularity_ranking(split: Split, k: int) -> torch.Tensor:
    """The ``k`` items with most training interactions (ties: lower item index first)."""
    counts = split.train_item_counts()
    order = np.lexsort((np.arange(len(counts)), -counts))
    return torch.as_tensor(order[:k], dtype=torch.long)


def popularity_lists(
    split: Split, n_examples: int, k: int, exclude: list[list[int]] | None = None
) -> torch.Tensor:
    """The popularity top-``k`` for ``n_examples`` examples: LongTensor [n_examples, k].

    ``exclude[i]`` (``eval.mask_history``) are items left out of example ``i``'s list;
    slots left without an item hold ``-1``.
    """
    if exclude is None:
        return popularity_ranking(split, k).expand(n_examples, -1)
    order = popularity_ranking(split, split.num_items).tolist()
    ranked = torch.full((n_examples, k), -1, dtype=torch.long)
    for row, banned in enumerate(exclude):
        banned_set = set(banned)
        kept = [item for item in order if item not in banned_set][:k]
        ranked[row, : len(kept)] = torch.tensor(kept, dtype=torch.long)
    return ranked


def evaluate_popularity(
    split: Split,
    examples: list[Example],
    ks: list[int],
    exclude: list[list[int]] | None = None,
) -> dict[str, float]:
    """Ranking metrics of the popularity list on ``examples``, same protocol as the LLM.

    ``exclude[i]`` (``eval.mask_history``) are items left out of example ``i``'s list.
    """
    targets = torch.tensor([ex.target for ex in examples], dtype=torch.long)
    ranked = popularity_lists(split, len(examples), max(ks), exclude)
    return evaluate_ranked(ranked, targets, ks, split.num_items)[0]
