"""The distances between vectors and codebooks that every quantiser in semrec uses.

Two kinds: ``"l2"``, the squared Euclidean distance (RQ-VAE, residual k-means, TTDS), and
``"cosine"``, ``1 - cos`` (Semantic Convergence's example ``Dist``). :func:`nearest` is the
memory-bounded argmin that k-means and encoding run on large catalogues.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DISTANCES = ("l2", "cosine")

#: Rows per block in :func:`nearest` (bounds memory to ~block x K). Small enough that a
#: block's [block, K] scores stay in cache-friendly reused memory: with 65536 rows (64 MB
#: per temporary at K=256) a k-means fit spent a third of its time in page faults.
BLOCK_ROWS = 8192


def _check_kind(kind: str) -> None:
    if kind not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {kind!r}")


def pairwise_distances(x: torch.Tensor, codebook: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    """Distance [n, K] from every row of ``x`` [n, d] to every code of ``codebook`` [K, d].

    ``"l2"`` is clamped at 0 against rounding. Differentiable in both arguments.
    """
    _check_kind(kind)
    if kind == "cosine":
        return 1.0 - F.normalize(x, dim=1, eps=1e-8) @ F.normalize(codebook, dim=1, eps=1e-8).T
    scores = torch.addmm(codebook.pow(2).sum(dim=1), x, codebook.T, alpha=-2.0)
    return (scores + x.pow(2).sum(dim=1, keepdim=True)).clamp_min(0.0)


def row_distances(a: torch.Tensor, b: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    """Distance [n] between matching rows of ``a`` and ``b`` [n, d], as :func:`pairwise_distances`."""
    _check_kind(kind)
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(a, b, dim=-1, eps=1e-8)
    return (a - b).pow(2).sum(dim=-1)


@torch.no_grad()
def nearest(
    x: torch.Tensor, codebook: torch.Tensor, kind: str = "l2"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of each row's nearest code and the distance to it: ``(LongTensor [n], Tensor [n])``.

    Computed in blocks of :data:`BLOCK_ROWS` rows; ties go to the lowest code index.
    """
    if x.ndim != 2 or codebook.ndim != 2 or x.shape[1] != codebook.shape[1]:
        raise ValueError(
            f"nearest() needs x [n, d] and codebook [k, d]; got {tuple(x.shape)} "
            f"and {tuple(codebook.shape)}"
        )
    _check_kind(kind)
    code_sq = codebook.pow(2).sum(dim=1)
    indices, distances = [], []
    for block in x.split(BLOCK_ROWS):
        if kind == "l2":
            # ||x||^2 is the same for every code, so the argmin only needs the rest.
            scores = torch.addmm(code_sq, block, codebook.T, alpha=-2.0)  # one temporary
            best, index = scores.min(dim=1)
            best = (best + block.pow(2).sum(dim=1)).clamp_min(0.0)
        else:
            best, index = pairwise_distances(block, codebook, kind).min(dim=1)
        indices.append(index)
        distances.append(best)
    return torch.cat(indices), torch.cat(distances)
