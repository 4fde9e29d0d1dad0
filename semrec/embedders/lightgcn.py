"""``lightgcn``: item vectors of LightGCN (He et al., SIGIR 2020) fitted on the train interactions.

LightGCN keeps one free embedding per user and item (``E^0``), propagates them over the
symmetrically normalised user-item graph without weights or non-linearities,
``E^{k+1} = D^{-1/2} A D^{-1/2} E^k``, and uses the mean of ``E^0 .. E^K`` as the final
representation. It is trained with the BPR loss (one random non-interacted item per
positive) plus L2 regularisation of the batch's ``E^0`` rows (the paper's Eq. 15).
Defaults follow the paper (64 dimensions, 3 layers, reg 1e-4, batch 2048) except the
learning rate and length, sized for a CPU: Adam lr 5e-3 (paper 1e-3) for 30 epochs. On
ml-100k that takes about a minute on 2 cores, and the vectors, used directly as a
recommender (user . item, train history excluded), score test HR@10 = .110 over the 943
users (popularity: .050).

The graph is built from the users' training sequences (``split.train``, rebuilt by
:func:`~semrec.data.split.sequences_from_examples`), so no valid or test target is read.
Items without a training interaction keep their random ``E^0``; ``embed`` sets
``cold_items`` to their number and ``user_embeddings`` to the users' vectors (the pipeline can replace them with text-regressed vectors,
``embedder.cold_start: text``).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from semrec.data.dataset import RecDataset
from semrec.data.split import Split, sequences_from_examples
from semrec.embedders.base import ITEM_EMBEDDERS, ItemEmbedder
from semrec.seeding import seeded


def interaction_pairs(split: Split) -> np.ndarray:
    """Distinct (user, item) pairs [m, 2] of the training sequences (int64)."""
    sequences = sequences_from_examples(split.train, split.num_users)
    users = np.repeat(np.arange(len(sequences)), [len(s) for s in sequences])
    items = np.concatenate([np.zeros(0, dtype=np.int64), *sequences])
    return np.unique(np.stack([users, items], axis=1), axis=0)


def normalized_adjacency(pairs: np.ndarray, num_users: int, num_items: int) -> torch.Tensor:
    """``D^{-1/2} A D^{-1/2}`` of the bipartite graph, sparse [U + I, U + I] (users first)."""
    users = torch.from_numpy(pairs[:, 0])
    items = torch.from_numpy(pairs[:, 1]) + num_users
    rows = torch.cat([users, items])
    cols = torch.cat([items, users])
    size = num_users + num_items
    degree = torch.bincount(rows, minlength=size).float()
    scale = degree.clamp_min(1).rsqrt()
    values = scale[rows] * scale[cols]
    return torch.sparse_coo_tensor(
        torch.stack([rows, cols]), values, (size, size), check_invariants=True
    ).coalesce()


class LightGCN(nn.Module):
    """The embeddings and the parameter-free propagation of LightGCN."""

    def __init__(self, num_users: int, num_items: int, dim: int, layers: int) -> None:
        super().__init__()
        self.num_users = num_users
        self.layers = layers
        self.embedding = nn.Embedding(num_users + num_items, dim)
        nn.init.normal_(self.embedding.weight, std=0.1)

    def propagate(self, adjacency: torch.Tensor) -> torch.Tensor:
        """Mean of the layer outputs ``E^0 .. E^K`` [U + I, dim]."""
        current = self.embedding.weight
        total = current
        for _ in range(self.layers):
            current = torch.sparse.mm(adjacency, current)
            total = total + current
        return total / (self.layers + 1)


@ITEM_EMBEDDERS.register("lightgcn")
class LightGCNEmbedder(ItemEmbedder):
    """LightGCN item vectors from the train interactions (see the module docstring).

    Args:
        dim: embedding size.
        layers: propagation layers ``K``.
        epochs: passes over the distinct train (user, item) pairs.
        batch_size: BPR triples per step.
        lr: Adam learning rate.
        reg: L2 weight on the batch's ``E^0`` rows.
        seed: seeds the initialisation and the negative sampling.
    """

    uses_interactions: ClassVar[bool] = True
    seeded_by_run: ClassVar[bool] = True

    def __init__(
        self,
        dim: int = 64,
        layers: int = 3,
        epochs: int = 30,
        batch_size: int = 2048,
        lr: float = 5e-3,
        reg: float = 1e-4,
        seed: int = 0,
    ) -> None:
        for name, value in (("dim", dim), ("epochs", epochs), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 0:
            raise ValueError(f"layers must be an int >= 0, got {layers!r}")
        if lr <= 0 or reg < 0:
            raise ValueError(f"lr must be > 0 and reg >= 0, got {lr} and {reg}")
        self.dim = dim
        self.layers = layers
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.reg = reg
        self.seed = seed
        self.cold_items: int | None = None
        self.history: list[float] = []
        self.user_embeddings: torch.Tensor | None = None  # set by embed

    def cache_key(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "layers": self.layers,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "reg": self.reg,
            "seed": self.seed,
        }

    def embed(self, dataset: RecDataset, split: Split, item_texts: list[str]) -> torch.Tensor:
        pairs = interaction_pairs(split)
        if len(pairs) == 0:
            raise ValueError(f"split.train has no interactions ({len(split.train)} examples)")
        num_users, num_items = split.num_users, split.num_items
        adjacency = normalized_adjacency(pairs, num_users, num_items)
        with seeded(self.seed):
            model = LightGCN(num_users, num_items, self.dim, self.layers)
            self.history = self._train(model, adjacency, pairs, num_items)
            with torch.no_grad():
                final = model.propagate(adjacency)
        self.user_embeddings = final[:num_users].clone()
        items = final[num_users:].clone()
        self.cold_items = num_items - len(np.unique(pairs[:, 1]))
        return items

    def _train(
        self, model: LightGCN, adjacency: torch.Tensor, pairs: np.ndarray, num_items: int
    ) -> list[float]:
        optimizer = torch.optim.Adam(model.parameters(), lr=self.lr)
        rng = np.random.default_rng(self.seed)
        known = np.sort(pairs[:, 0] * num_items + pairs[:, 1])
        users_all = torch.from_numpy(pairs[:, 0])
        items_all = torch.from_numpy(pairs[:, 1])
        offset = model.num_users
        history = []
        start = time.perf_counter()
        for _ in range(self.epochs):
            order = torch.from_numpy(rng.permutation(len(pairs)))
            negatives = _sample_negatives(pairs, num_items, known, rng)
            total = 0.0
            for batch in order.split(self.batch_size):
                users, items = users_all[batch], items_all[batch]
                negative = negatives[batch]
                final = model.propagate(adjacency)
                u, p, n = final[users], final[items + offset], final[negative + offset]
                bpr = F.softplus(-((u * p).sum(1) - (u * n).sum(1))).mean()
                rows = model.embedding.weight[torch.cat([users, items + offset, negative + offset])]
                loss = bpr + self.reg * rows.pow(2).sum() / (2 * len(batch))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(bpr.detach()) * len(batch)
            history.append(total / len(pairs))
        self.fit_seconds = time.perf_counter() - start
        return history


def _sample_negatives(
    pairs: np.ndarray, num_items: int, known: np.ndarray, rng: np.random.Generator
) -> torch.Tensor:
    """One uniformly drawn item per pair that its user never interacted with in train.

    ``known`` holds the sorted keys ``user * num_items + item`` of every train pair.
    """
    negatives = rng.integers(num_items, size=len(pairs))
    clash = np.isin(pairs[:, 0] * num_items + negatives, known)
    while clash.any():
        negatives[clash] = rng.integers(num_items, size=int(clash.sum()))
        clash[clash] = np.isin(pairs[clash, 0] * num_items + negatives[clash], known)
    return torch.from_numpy(negatives)
