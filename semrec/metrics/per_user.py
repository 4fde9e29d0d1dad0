"""Every test user's result, per method: what paired significance tests between runs need.

A run writes ``ranks.json``: the test users (external ids, in evaluation order) and, for
``semrec`` and each baseline, the 0-based rank of the user's held-out item in that method's
top-``k`` list (``null`` when it is not in the list). Per-user HR/NDCG/MRR follow from a rank
exactly as in :mod:`semrec.metrics.ranking`, so their mean is the run's metric.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from semrec.artifacts import read_json, write_json
from semrec.data.split import Example

RANKS_FILE = "ranks.json"
_METRIC = re.compile(r"^(hr|ndcg|mrr)@(\d+)$")


def per_user_metric(ranks: np.ndarray, metric: str) -> np.ndarray:
    """``hr@k``, ``ndcg@k`` or ``mrr@k`` of each user from 0-based ranks (``inf``: a miss)."""
    match = _METRIC.match(metric)
    if match is None:
        raise ValueError(f"per-user metric {metric!r}: expected hr@k, ndcg@k or mrr@k")
    name, k = match.group(1), int(match.group(2))
    ranks = np.asarray(ranks, dtype=np.float64)
    hit = ranks < k
    safe = np.where(hit, ranks, 0.0)
    if name == "hr":
        return hit.astype(np.float64)
    if name == "ndcg":
        return np.where(hit, 1.0 / np.log2(safe + 2.0), 0.0)
    return np.where(hit, 1.0 / (safe + 1.0), 0.0)


@dataclass
class PerUserRanks:
    """Test users (external ids) and, per method, each user's target rank (``inf``: absent
    from the top ``k``)."""

    users: list[str]
    k: int
    methods: dict[str, np.ndarray]

    @classmethod
    def of_examples(
        cls,
        examples: Sequence[Example],
        user_ids: Sequence[str],
        k: int,
        methods: Mapping[str, torch.Tensor | None],
    ) -> PerUserRanks:
        """From ranks aligned with ``examples`` (methods without ranks are left out)."""
        kept = {}
        for name, ranks in methods.items():
            if ranks is None:
                continue
            if len(ranks) != len(examples):
                raise ValueError(
                    f"internal: {name} has {len(ranks)} per-user ranks for {len(examples)} "
                    "test examples"
                )
            kept[name] = np.asarray(ranks, dtype=np.float64)
        return cls([str(user_ids[ex.user]) for ex in examples], k, kept)

    def metric(self, method: str, metric: str) -> np.ndarray:
        """Per-user ``metric`` (e.g. ``hr@10``) of ``method``, in :attr:`users` order."""
        if method not in self.methods:
            raise KeyError(f"no per-user ranks for {method!r}; have {sorted(self.methods)}")
        k = int(metric.split("@")[-1]) if "@" in metric else self.k
        if k > self.k:
            raise ValueError(f"{metric}: ranks were kept for the top {self.k} only")
        return per_user_metric(self.methods[method], metric)

    def save(self, path: str | Path) -> None:
        write_json(
            path,
            {
                "k": self.k,
                "users": self.users,
                "ranks": {
                    name: [None if math.isinf(r) else int(r) for r in ranks.tolist()]
                    for name, ranks in self.methods.items()
                },
            },
        )

    @classmethod
    def load(cls, path: str | Path) -> PerUserRanks:
        data = read_json(path)
        try:
            methods = {
                name: np.array([math.inf if r is None else float(r) for r in ranks])
                for name, ranks in data["ranks"].items()
            }
            ranks = cls([str(u) for u in data["users"]], int(data["k"]), methods)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: not a per-user ranks file ({err})") from None
        for name, values in methods.items():
            if len(values) != len(ranks.users):
                raise ValueError(
                    f"{path}: {name} has {len(values)} ranks for {len(ranks.users)} users"
                )
        return ranks
