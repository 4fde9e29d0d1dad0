"""``cooccurrence``: item vectors from PPMI over windowed co-occurrence in train sequences.

Items play the part of words and users' training sequences that of sentences: counts of
two items within ``window`` positions of each other become positive pointwise mutual
information (PPMI) with context-distribution smoothing, factorised by truncated SVD.
Both tricks, and the weighting of the singular values, follow Levy, Goldberg & Dagan,
"Improving Distributional Similarity with Lessons Learned from Word Embeddings" (TACL
2015): raising context counts to ``smoothing = 0.75`` (word2vec's negative-sampling
exponent) damps PMI's bias towards rare contexts, and ``U * S**0.5`` (eigenvalue weighting
``p = 0.5``) did consistently better than the "correct" ``U * S`` there; it also splits the
factorisation evenly between the two sides of the symmetric PPMI matrix.

The sequences are rebuilt from ``split.train`` (:func:`~semrec.data.split.sequences_from_examples`),
so no valid or test target is ever read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from scipy import sparse
from sklearn.utils.extmath import randomized_svd

from semrec.data.dataset import RecDataset
from semrec.data.split import Split, sequences_from_examples
from semrec.embedders.base import ITEM_EMBEDDERS, ItemEmbedder

COLD_SCALE = 0.1
"""Norm of a cold item's random vector, relative to the median norm of the other items."""


def cooccurrence_counts(
    sequences: Sequence[np.ndarray], num_items: int, window: int
) -> sparse.csr_matrix:
    """Symmetric counts [num_items, num_items]: pairs at most ``window`` positions apart.

    Every pair of positions ``p < q <= p + window`` in one sequence counts once for
    ``(s[p], s[q])`` and once for ``(s[q], s[p])``; an item next to itself is not counted.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    flat = np.concatenate([np.zeros(0, dtype=np.int64), *sequences]).astype(np.int64)
    owner = np.repeat(np.arange(len(lengths)), lengths)
    left, right = [], []
    for offset in range(1, window + 1):
        same = owner[offset:] == owner[:-offset]
        a, b = flat[:-offset][same], flat[offset:][same]
        distinct = a != b
        left += [a[distinct], b[distinct]]
        right += [b[distinct], a[distinct]]
    rows = np.concatenate([np.zeros(0, dtype=np.int64), *left])
    cols = np.concatenate([np.zeros(0, dtype=np.int64), *right])
    counts = sparse.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(num_items, num_items))
    return counts.tocsr()  # sums the duplicates


def ppmi(counts: sparse.spmatrix, smoothing: float = 0.75) -> sparse.csr_matrix:
    """Positive PMI of symmetric co-occurrence ``counts``, contexts smoothed by ``smoothing``.

    ``PMI(i, j) = log(P(i, j) / (P(i) P_a(j)))`` with ``P(i, j) = c_ij / N``,
    ``P(i) = c_i / N`` and ``P_a(j) = c_j**a / sum_k c_k**a``; entries <= 0 (and pairs
    never seen) are 0.
    """
    counts = sparse.coo_matrix(counts)
    total = counts.sum()
    marginal = np.asarray(counts.sum(axis=1)).ravel()
    context = marginal**smoothing
    pmi = np.log(
        (counts.data / total)
        / ((marginal[counts.row] / total) * (context[counts.col] / context.sum()))
    )
    keep = pmi > 0
    return sparse.csr_matrix((pmi[keep], (counts.row[keep], counts.col[keep])), shape=counts.shape)


@ITEM_EMBEDDERS.register("cooccurrence")
class CooccurrenceEmbedder(ItemEmbedder):
    """PPMI + truncated SVD item vectors from the training sequences (see module docs).

    Args:
        dim: vector size (at most the number of items).
        window: largest distance, in positions, between two co-occurring items.
        smoothing: exponent of the context counts in PPMI (Levy et al. 2015: 0.75).
        weighting: exponent ``p`` of the singular values, vectors ``U * S**p``.
        seed: seeds the randomized SVD and the vectors of cold items.

    Cold items, those without a single positive PPMI entry (in particular items never in a
    training sequence), have no collaborative signal. Each gets a small random vector
    (norm ``COLD_SCALE`` times the median norm of the others, drawn from ``seed``): unlike
    zeros or the mean, these keep cold items distinct from each other, so a tokenizer does
    not have to resolve them all as one collision, and near the origin, away from every
    learned direction. ``embed`` sets ``cold_items`` to their number.
    """

    uses_interactions: ClassVar[bool] = True

    def __init__(
        self,
        dim: int = 64,
        window: int = 5,
        smoothing: float = 0.75,
        weighting: float = 0.5,
        seed: int = 0,
    ) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if not 0 < smoothing <= 1:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        if weighting < 0:
            raise ValueError(f"weighting must be >= 0, got {weighting}")
        self.dim = dim
        self.window = window
        self.smoothing = smoothing
        self.weighting = weighting
        self.seed = seed
        self.cold_items: int | None = None

    def cache_key(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "window": self.window,
            "smoothing": self.smoothing,
            "weighting": self.weighting,
            "seed": self.seed,
        }

    def embed(self, dataset: RecDataset, split: Split, item_texts: list[str]) -> torch.Tensor:
        num_items = split.num_items
        if self.dim > num_items:
            raise ValueError(f"dim ({self.dim}) must be <= the number of items ({num_items})")
        sequences = sequences_from_examples(split.train, split.num_users)
        matrix = ppmi(cooccurrence_counts(sequences, num_items, self.window), self.smoothing)
        cold = np.diff(matrix.indptr) == 0
        if cold.all():
            raise ValueError(
                f"no two items co-occur within window {self.window} in split.train "
                f"({len(split.train)} examples): nothing to embed"
            )
        u, s, _ = randomized_svd(matrix, self.dim, random_state=self.seed)
        vectors = u * s**self.weighting
        rng = np.random.default_rng(self.seed)
        noise = rng.standard_normal((int(cold.sum()), self.dim))
        scale = COLD_SCALE * np.median(np.linalg.norm(vectors[~cold], axis=1))
        vectors[cold] = noise / np.linalg.norm(noise, axis=1, keepdims=True) * scale
        self.cold_items = int(cold.sum())
        return torch.from_numpy(vectors).float()
