"""K-means in plain torch, deterministic for a seed.

:func:`kmeans` seeds with k-means++ (drawn from a seeded ``torch.Generator``) and runs
Lloyd iterations until no assignment changes. Residual k-means (one codebook per level on
what the levels before left) is :meth:`~semrec.tokenizers.quantizer.ResidualQuantizer.init_kmeans`.

Edge cases follow fixed rules:

* fewer distinct points than ``k``: every distinct point becomes a centroid; the spare
  centroids copy the first one and are never the nearest (ties go to the lowest index),
  so they stay unused;
* a cluster that empties during Lloyd iterations is re-seeded at the point farthest from
  its own centroid (one distinct point per empty cluster).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from semrec.tokenizers.distances import nearest


@dataclass(frozen=True)
class KMeansResult:
    """Outcome of :func:`kmeans`."""

    centroids: torch.Tensor  # [k, d]
    assignments: torch.Tensor  # [n] long, index of each point's nearest centroid
    inertia: float  # sum of squared distances of the points to their centroids
    n_iter: int  # Lloyd iterations run
    converged: bool  # True if assignments stopped changing before max_iter


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
    init: torch.Tensor | None = None,
) -> KMeansResult:
    """Cluster the rows of ``x`` [n, d] into ``k`` clusters (k-means++ then Lloyd).

    ``init`` [k, d] starts Lloyd from given centroids instead of k-means++ (a warm start:
    the clusters stay near the ones given).
    """
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"kmeans() needs a non-empty 2-D tensor, got shape {tuple(x.shape)}")
    if k < 1:
        raise ValueError(f"kmeans() needs k >= 1, got {k}")
    if max_iter < 1:
        raise ValueError(f"kmeans() needs max_iter >= 1, got {max_iter}")
    x = x.float()
    if init is not None:
        if init.shape != (k, x.shape[1]):
            raise ValueError(f"kmeans() init must be [{k}, {x.shape[1]}], got {tuple(init.shape)}")
        centroids = init.detach().float().clone()
    else:
        generator = (
            seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
        )
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


def __getattr__(name: str):
    """``ResidualKMeans`` moved to :mod:`semrec.tokenizers.rqkmeans`; this path re-exports it for one release."""
    if name == "ResidualKMeans":
        import warnings

        from semrec.tokenizers import rqkmeans

        warnings.warn(
            "semrec.tokenizers.kmeans.ResidualKMeans moved to semrec.tokenizers.rqkmeans",
            DeprecationWarning,
            stacklevel=2,
        )
        return rqkmeans.ResidualKMeans
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
