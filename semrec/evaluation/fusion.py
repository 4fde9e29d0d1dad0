"""Rank fusion of two rankings of the same users (``eval.fusion``): a labelled extra row.

semrec and SASRec often hit different test users (``semrec compare`` reports the overlap);
fusing their rankings is a way to use both. The fused row never replaces semrec's own.
"""

from __future__ import annotations

import torch


def reciprocal_rank_fusion(
    first: torch.Tensor, second: torch.Tensor, *, weight: float, rrf_k: int = 60
) -> torch.Tensor:
    """Weighted reciprocal rank fusion of two rankings ``[n, K]`` (item ids, best first,
    ``-1`` for empty slots) into one ``[n, K]``.

    An item scores ``weight / (rrf_k + r1) + (1 - weight) / (rrf_k + r2)`` over the ranks
    ``r`` (from 1) at which it appears in each list (Cormack, Clarke and Buettcher 2009,
    with weights); ties go to the item ``first`` ranks higher, then to ``second``'s order.
    Slots beyond the union of the lists hold -1.
    """
    if first.shape[0] != second.shape[0]:
        raise ValueError(f"rankings of {first.shape[0]} and {second.shape[0]} users differ")
    depth = max(first.shape[1], second.shape[1])
    fused = torch.full((first.shape[0], depth), -1, dtype=torch.long)
    for row, (a, b) in enumerate(zip(first.tolist(), second.tolist())):
        scores: dict[int, float] = {}
        order: dict[int, int] = {}
        for share, ranking in ((weight, a), (1.0 - weight, b)):
            for rank, item in enumerate(ranking, 1):
                if item < 0:
                    continue
                scores[item] = scores.get(item, 0.0) + share / (rrf_k + rank)
                order.setdefault(item, len(order))
        best = sorted(scores, key=lambda item: (-scores[item], order[item]))[:depth]
        fused[row, : len(best)] = torch.tensor(best, dtype=torch.long)
    return fused
