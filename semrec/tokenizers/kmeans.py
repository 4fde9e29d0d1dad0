"""K-means and residual k-means in plain torch, deterministic for a seed.

:func:`kmeans` seeds with k-means++ (drawn from a seeded ``torch.Generator``) and runs
Lloyd iterations until no assignment changes. :class:`ResidualKMeans` stacks one k-means
codebook per level, each fitted on what the previous levels left unexplained (TS-Rec,
Eq. 1-3; the "RQ-KMeans" of OneRec).

Edge cases follow fixed rules:

* fewer distinct points than ``k``: every distinct point becomes a centroid; the spare
  centroids copy the first one and are never the nearest (ties go to the lowest index),
  so they stay unused;
* a cluster that empties during Lloyd iterations is re-seeded at the point farthest from
  its own centroid (one distinct point per empty cluster).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

#: Rows per block when computing point-to-centroid distances (bounds memory to ~block x k).
#: Small enough that a block's [block, k] scores stay in cache-friendly reused memory: with
#: 65536 rows (64 MB per temporary at k=256) the fit spent a third of its time in page faults.
_BLOCK_ROWS = 8192


@dataclass(frozen=True)
class KMeansResult:
    """Outcome of :func:`kmeans`."""

    centroids: torch.Tensor  # [k, d]
    assignments: torch.Tensor  # [n] long, index of each point's nearest centroid
    inertia: float  # sum of squared distances of the points to their centroids
    n_iter: int  # Lloyd iterations run
    converged: bool  # True if assignments stopped changing before max_iter


def nearest(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of each row's nearest centroid and the squared distance to it.

    Ties go to the lowest centroid index. Returns ``(LongTensor [n], Tensor [n])``.
    """
    if x.ndim != 2 or centroids.ndim != 2 or x.shape[1] != centroids.shape[1]:
        raise ValueError(
            f"nearest() needs x [n, d] and centroids [k, d]; got {tuple(x.shape)} "
            f"and {tuple(centroids.shape)}"
        )
    centroid_sq = centroids.pow(2).sum(dim=1)
    indices, distances = [], []
    for block in x.split(_BLOCK_ROWS):
        # ||x||^2 is the same for every centroid, so the argmin only needs the rest.
        scores = torch.addmm(centroid_sq, block, centroids.T, alpha=-2.0)  # one temporary
        best, index = scores.min(dim=1)
        indices.append(index)
        distances.append((best + block.pow(2).sum(dim=1)).clamp_min(0.0))
    return torch.cat(indices), torch.cat(distances)


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each next centre is drawn with probability proportional to D(x)^2.

    Runs on the distinct rows (weighted by multiplicity), so no point is drawn twice. With
    ``k`` or fewer distinct rows, each becomes a centre and the spare centres copy the first.
    """
    distinct, counts = torch.unique(x, dim=0, return_counts=True)
    m = distinct.shape[0]
    if m <= k:
        return torch.cat([distinct, distinct[:1].expand(k - m, -1)])
    weights = counts.to(x.dtype)
    sq_norms = distinct.pow(2).sum(dim=1)

    def squared_distances_to(index: int) -> torch.Tensor:
        d2 = sq_norms - 2.0 * (distinct @ distinct[index]) + sq_norms[index]
        return d2.clamp_min_(0.0)

    first = int(torch.multinomial(weights, 1, generator=generator))
    chosen = [first]
    closest = squared_distances_to(first)
    closest[first] = 0.0
    while len(chosen) < k:
        probabilities = closest * weights
        if not bool((probabilities > 0).any()):  # rounding left only near-duplicates
            probabilities = torch.ones(m)
            probabilities[chosen] = 0.0
        index = int(torch.multinomial(probabilities, 1, generator=generator))
        chosen.append(index)
        closest = torch.minimum(closest, squared_distances_to(index))
        closest[chosen] = 0.0
    return distinct[chosen].clone()


def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    max_iter: int = 100,
    seed: int | torch.Generator = 0,
) -> KMeansResult:
    """Cluster the rows of ``x`` [n, d] into ``k`` clusters (k-means++ then Lloyd)."""
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"kmeans() needs a non-empty 2-D tensor, got shape {tuple(x.shape)}")
    if k < 1:
        raise ValueError(f"kmeans() needs k >= 1, got {k}")
    if max_iter < 1:
        raise ValueError(f"kmeans() needs max_iter >= 1, got {max_iter}")
    x = x.float()
    generator = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    centroids = kmeans_plus_plus(x, k, generator)

    previous: torch.Tensor | None = None
    converged = False
    n_iter = 0
    while True:
        assignments, distances = nearest(x, centroids)
        if previous is not None and torch.equal(assignments, previous):
            converged = True
            break
        if n_iter == max_iter:
            break
        previous = assignments
        centroids = _update_centroids(x, assignments, distances, centroids)
        n_iter += 1
    return KMeansResult(
        centroids=centroids,
        assignments=assignments,
        inertia=float(distances.sum()),
        n_iter=n_iter,
        converged=converged,
    )


def _update_centroids(
    x: torch.Tensor, assignments: torch.Tensor, distances: torch.Tensor, centroids: torch.Tensor
) -> torch.Tensor:
    """Lloyd update: each centroid moves to the mean of its points; empty ones are re-seeded."""
    k = centroids.shape[0]
    counts = torch.bincount(assignments, minlength=k)
    sums = torch.zeros_like(centroids).index_add_(0, assignments, x)
    updated = centroids.clone()
    filled = counts > 0
    updated[filled] = sums[filled] / counts[filled].unsqueeze(1).to(x.dtype)

    empty = (~filled).nonzero().flatten()
    if empty.numel():
        # Farthest points first; a point already sitting on its centroid cannot help.
        order = torch.argsort(distances, descending=True, stable=True)
        far = order[distances[order] > 0][: empty.numel()]
        updated[empty[: far.numel()]] = x[far]
    return updated


def codebook_sizes_per_level(levels: int, codebook_size: int | Sequence[int]) -> list[int]:
    """One codebook size per level from ``levels`` and an int (every level) or a list;
    raises ``ValueError`` naming the bad value. Every residual tokenizer reads its sizes here."""
    if isinstance(levels, bool) or not isinstance(levels, int):
        raise ValueError(f"levels must be an int >= 1, got {levels!r}")
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    if isinstance(codebook_size, (str, bytes, bool)) or not isinstance(
        codebook_size, (int, Sequence)
    ):
        raise ValueError(
            f"codebook_size must be an int or a list of ints (one per level), got {codebook_size!r}"
        )
    sizes = [codebook_size] * levels if isinstance(codebook_size, int) else list(codebook_size)
    if len(sizes) != levels:
        raise ValueError(f"codebook_size lists {len(sizes)} sizes but there are {levels} levels")
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(f"every codebook size must be an int >= 1, got {sizes}")
    return sizes


class ResidualKMeans:
    """Residual k-means quantiser: level ``l`` clusters the residuals left by levels < l.

    ``codebook_size`` is one int for all levels or a list with one size per level. After
    :meth:`fit`, :meth:`encode` maps vectors to codes [n, levels] and :meth:`decode` maps
    codes back to the sum of their centroids.
    """

    def __init__(
        self, levels: int, codebook_size: int | Sequence[int], *, max_iter: int = 100
    ) -> None:
        sizes = codebook_sizes_per_level(levels, codebook_size)
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter (kmeans_iters) must be an int >= 1, got {max_iter!r}")
        self.levels = levels
        self.codebook_sizes = sizes
        self.max_iter = max_iter
        self.codebooks: list[torch.Tensor] = []

    @property
    def is_fitted(self) -> bool:
        return len(self.codebooks) == self.levels

    @property
    def dim(self) -> int:
        self._require_fitted()
        return self.codebooks[0].shape[1]

    def fit(self, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """Fit one codebook per level on the residuals; returns the codes of ``x``."""
        generator = torch.Generator().manual_seed(seed)
        residual = x.float()
        codes = []
        self.codebooks = []
        for size in self.codebook_sizes:
            result = kmeans(residual, size, max_iter=self.max_iter, seed=generator)
            self.codebooks.append(result.centroids)
            codes.append(result.assignments)
            residual = residual - result.centroids[result.assignments]
        return torch.stack(codes, dim=1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes [n, levels]: at each level the nearest centroid to the current residual."""
        self._require_fitted()
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape [n, {self.dim}], got {tuple(x.shape)}")
        residual = x.float()
        codes = []
        for codebook in self.codebooks:
            index, _ = nearest(residual, codebook)
            codes.append(index)
            residual = residual - codebook[index]
        return torch.stack(codes, dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Sum of the chosen centroids per row; a code of -1 means "level absent" (adds 0)."""
        self._require_fitted()
        if codes.ndim != 2 or codes.shape[1] > self.levels:
            raise ValueError(
                f"expected codes of shape [n, <= {self.levels}], got {tuple(codes.shape)}"
            )
        out = torch.zeros(codes.shape[0], self.dim)
        for level in range(codes.shape[1]):
            column = codes[:, level]
            size = self.codebook_sizes[level]
            if bool(((column < -1) | (column >= size)).any()):
                raise ValueError(f"level {level} codes must lie in [-1, {size - 1}]")
            present = column >= 0
            out[present] += self.codebooks[level][column[present]]
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._require_fitted()
        return {f"codebook.{level}": cb.contiguous() for level, cb in enumerate(self.codebooks)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        codebooks = []
        for level, size in enumerate(self.codebook_sizes):
            key = f"codebook.{level}"
            if key not in state:
                raise KeyError(f"residual k-means state has no {key!r}")
            codebook = state[key].float()
            if codebook.ndim != 2 or codebook.shape[0] != size:
                raise ValueError(f"{key} has shape {tuple(codebook.shape)}, expected [{size}, dim]")
            codebooks.append(codebook)
        if len({cb.shape[1] for cb in codebooks}) != 1:
            raise ValueError("residual k-means codebooks disagree on the vector dimension")
        self.codebooks = codebooks

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError("ResidualKMeans is not fitted; call fit() or load_state_dict()")
