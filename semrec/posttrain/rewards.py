"""Rewards of GRPO rollouts: each prompt's ``G`` distinct items, best beam first.

A reward maps ``items`` ``[B, G]`` (item ids, ``-1`` in empty slots), ``valid`` ``[B, G]``
and the batch (``targets``, ``histories``) to ``[B, G]`` float rewards; empty slots are
ignored by the advantages. Registered under the names ``train.post.reward`` takes:

- ``exact``: 1 for the target, 0 otherwise (MiniOneRec's rule reward).
- ``ranking``: MiniOneRec's ranking reward: the exact reward, plus, in a group that holds
  the target, a penalty for each other item by its beam rank ``r`` (0 = best),
  ``-(1 / log2(r + 2)) / sum_j 1 / log2(j + 2)`` over the ``G`` ranks, so the penalties of
  a group sum to at most -1 and a wrong item ranked high costs most. A group without the
  target gets 0 everywhere, as in MiniOneRec.
- ``collaborative``: a collaborative model's score (logit) of each item after the prompt's
  history (the in-framework SASRec, fitted on the training split), as MiniOneRec's SASRec
  reward; it rewards items the collaborative model finds likely even when none is the
  target.
"""

from __future__ import annotations

from typing import Protocol

import torch

from semrec.registry import Registry


class Reward(Protocol):
    def __call__(
        self, items: torch.Tensor, valid: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """``[B, G]`` rewards of each prompt's items (see the module docstring)."""


REWARDS: Registry[type] = Registry("post-training reward")


def _hits(items: torch.Tensor, valid: torch.Tensor, batch: dict[str, torch.Tensor]):
    return (items == batch["targets"].to(items.device)[:, None]) & valid


@REWARDS.register("exact")
class ExactReward:
    """1 for the target, 0 for every other item."""

    def __call__(self, items, valid, batch):
        return _hits(items, valid, batch).float()


@REWARDS.register("ranking")
class RankingReward:
    """The exact reward plus MiniOneRec's rank penalty for the other items of a group that
    holds the target (see the module docstring)."""

    def __call__(self, items, valid, batch):
        hits = _hits(items, valid, batch)
        ranks = torch.arange(items.shape[1], device=items.device, dtype=torch.float32)
        discount = 1.0 / torch.log2(ranks + 2.0)
        penalty = -discount / discount.sum()
        found = hits.any(dim=1, keepdim=True)
        wrong = valid & ~hits & found
        return hits.float() + penalty * wrong.float()


@REWARDS.register("collaborative")
class CollaborativeReward:
    """A collaborative model's score of each item after the prompt's history.

    ``recommender`` has ``score(histories) -> [n, num_items]`` logits (the in-framework
    SASRec or GRU4Rec, fitted). The reward is the raw logit, as MiniOneRec's SASRec reward;
    the group normalisation of the advantages removes its scale.
    """

    def __init__(self, recommender) -> None:
        self.recommender = recommender

    def __call__(self, items, valid, batch):
        histories = [[i for i in row if i >= 0] for row in batch["histories"].tolist()]
        logits = self.recommender.score(histories).to(items.device)
        return logits.gather(1, items.clamp(min=0)).masked_fill(~valid, 0.0)
