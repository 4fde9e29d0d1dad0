"""Full-ranking top-K metrics for leave-one-out evaluation (one held-out target per user).

With ``r`` the 0-based position of the target in the ranked list (``r = inf`` if absent):
HR@k = [r < k], NDCG@k = [r < k] / log2(r + 2), MRR@k = [r < k] / (r + 1). With a single
relevant item the ideal DCG is 1, so NDCG needs no normalisation.
"""

from __future__ import annotations

import math

import torch
from torchmetrics import Metric


def target_ranks(ranked: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based position of each target in its ranked row, ``inf`` where absent.

    ``ranked``: LongTensor [B, K] of item ids (``-1`` for empty slots); ``targets``: [B].
    """
    hits = ranked == targets.unsqueeze(1)
    position = torch.arange(ranked.shape[1], dtype=torch.float32, device=ranked.device)
    position = position.expand_as(ranked)
    return torch.where(hits, position, torch.full_like(position, math.inf)).min(dim=1).values


def ranking_metrics(
    ranks: torch.Tensor, ks: list[int], mrr_k: int | None = None
) -> dict[str, float]:
    """HR@k, NDCG@k and MRR@k for every k in ``ks`` (and MRR@``mrr_k``), averaged.

    HR@k equals Recall@k here: each example has one target.
    """
    out: dict[str, float] = {}
    if ranks.numel() == 0:
        return out
    for k in ks:
        hit = ranks < k
        out[f"hr@{k}"] = hit.float().mean().item()
        gain = torch.where(hit, 1.0 / torch.log2(ranks + 2.0), torch.zeros_like(ranks))
        out[f"ndcg@{k}"] = gain.mean().item()
    for k in sorted({*ks, mrr_k or max(ks)}):
        hit = ranks < k
        reciprocal = torch.where(hit, 1.0 / (ranks + 1.0), torch.zeros_like(ranks))
        out[f"mrr@{k}"] = reciprocal.mean().item()
    return out


class TopKRankingMetrics(Metric):
    """Accumulates ranked lists over batches; reports ranking metrics, invalid rate, coverage.

    ``invalid_rate`` is the fraction of returned top-``max(ks)`` slots that hold no real item
    (a constrained decoder keeps it at 0; free generation does not); ``coverage`` is the
    fraction of the catalogue appearing in at least one top-``max(ks)`` list.
    """

    full_state_update = False

    def __init__(self, ks: list[int], num_items: int, *, gather: bool = False) -> None:
        """``gather``: :meth:`compute` and :meth:`ordered_ranks` cover the lists of every
        process of a multi-process run (the LightningModule's metrics); off, a metric covers
        what this process added (e.g. a baseline ranked by rank zero alone)."""
        super().__init__(sync_on_compute=gather)
        self.ks = sorted(ks)
        self.num_items = num_items
        self.add_state("ranks", default=[], dist_reduce_fx="cat")
        self.add_state("rows", default=[], dist_reduce_fx="cat")
        self.add_state("items", default=[], dist_reduce_fx="cat")
        self.add_state("invalid", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("slots", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state(
            "seen", default=torch.zeros(num_items, dtype=torch.bool), dist_reduce_fx="max"
        )

    def update(
        self, ranked: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor | None = None
    ) -> None:
        """Add a batch: ranked item ids [B, K], targets [B] and optionally each example's
        position ``rows`` [B] in its evaluation list (for :meth:`ordered_ranks`)."""
        # states live on the metric's device: a multi-GPU gather (NCCL) takes no CPU tensors
        device = self.seen.device
        top = ranked[:, : max(self.ks)].to(device)
        self.ranks.append(target_ranks(top, targets.to(device)))
        width = max(self.ks) - top.shape[1]  # shorter lists (few candidates) pad with -1
        self.items.append(torch.nn.functional.pad(top, (0, width), value=-1) if width else top)
        if rows is not None:
            self.rows.append(rows.to(device=device, dtype=torch.long))
        valid = (top >= 0) & (top < self.num_items)
        self.invalid += (~valid).sum()
        self.slots += top.numel()
        self.seen[top[valid]] = True

    def compute(self) -> dict[str, float]:
        # in rows order: the same sums (to the last bit) however the examples were batched
        # or split across processes
        ranks = self._ranks_in_order()
        out = ranking_metrics(ranks, self.ks)
        out["invalid_rate"] = (self.invalid / self.slots.clamp(min=1)).item()
        out["coverage"] = self.seen.float().mean().item()
        out["users"] = float(ranks.numel())
        return out

    def ordered_ranks(self) -> torch.Tensor:
        """Every example's target rank (``inf``: not in the top ``max(ks)``), in ``rows``
        order when every batch gave its rows, else in update order. Call before ``reset``.

        In a multi-process run the ranks of all processes are gathered first (as
        :meth:`compute` does), so every process returns the whole evaluation's ranks.
        """
        with self.sync_context(should_sync=self.sync_on_compute):
            return self._ranks_in_order().cpu()

    def ordered_items(self) -> torch.Tensor:
        """Every example's ranked items ``[n, max(ks)]``, in the order of
        :meth:`ordered_ranks` (gathered over processes likewise). Call before ``reset``."""
        with self.sync_context(should_sync=self.sync_on_compute):
            items = _concatenated(self.items, torch.long).view(-1, max(self.ks))
            rows = _concatenated(self.rows, torch.long)
            if rows.numel() == items.shape[0]:
                items = items[torch.argsort(rows)]
            return items.cpu()

    def _ranks_in_order(self) -> torch.Tensor:
        ranks = _concatenated(self.ranks, torch.float32)
        rows = _concatenated(self.rows, torch.long)
        if rows.numel() != ranks.numel():
            return ranks
        return ranks[torch.argsort(rows)]


def _concatenated(state: list[torch.Tensor] | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A ``cat`` state as one tensor: a list of batches, or the tensor a sync gathered."""
    if isinstance(state, torch.Tensor):
        return state
    return torch.cat(state) if state else torch.empty(0, dtype=dtype)


def evaluate_ranked(
    ranked: torch.Tensor, targets: torch.Tensor, ks: list[int], num_items: int
) -> tuple[dict[str, float], torch.Tensor]:
    """Metrics of one ranked list per example, and each example's target rank."""
    metric = TopKRankingMetrics(ks, num_items)
    metric.update(ranked, targets)
    return metric.compute(), metric.ordered_ranks()
