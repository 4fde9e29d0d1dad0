"""LC-Rec's uniform semantic mapping (USM): Sinkhorn-Knopp on the last quantisation level.

* :func:`sinkhorn` solves the entropic optimal-transport problem of LC-Rec Eq. 6: a soft
  assignment ``q`` [n, K] of n items to K codes whose rows sum to 1 and whose columns all
  sum to n / K (every code receives the same mass).
* :func:`sinkhorn_codes` turns distances into hard codes: rescale the distances to a unit
  range (so ``epsilon`` does not depend on the embedding scale), run :func:`sinkhorn`, take
  each row's argmax. The RQ-VAE uses it for the last level during training (Algorithm 1).
* :func:`resolve_by_uniform_mapping` is the second stage of LC-Rec's index construction:
  starting from argmin codes, each group of items sharing a full SID gets its last-level
  codes redistributed by Sinkhorn over the last-level codes its prefix leaves free, round
  after round until no group remains. Items with identical residuals cannot be separated
  this way, so when rounds stop helping (or ``max_rounds`` is reached) a greedy fallback
  moves each remaining collider to its nearest free code, and if a prefix has no free code
  left, :func:`~semrec.tokenizers.collisions.append_suffix_level` numbers the rest. The
  result never has collisions.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from semrec.tokenizers.collisions import PAD, append_suffix_level, collision_groups

#: Default entropic regularisation on unit-range costs (LC-Rec uses 0.003 for the last level).
DEFAULT_EPSILON = 0.003
DEFAULT_ITERATIONS = 50


def sinkhorn(
    cost: torch.Tensor,
    epsilon: float = 0.05,
    iterations: int = 100,
    *,
    tolerance: float = 1e-6,
) -> torch.Tensor:
    """Soft assignment [n, K] minimising <q, cost> - epsilon * H(q) with uniform code marginals.

    Rows sum to 1 (each item is fully assigned); columns sum to n / K (up to ``tolerance``
    or the iteration budget). Computed in the log domain in float64, so a small ``epsilon``
    does not underflow. Alternates column and row normalisation (Sinkhorn-Knopp).
    """
    if cost.ndim != 2 or cost.shape[0] == 0 or cost.shape[1] == 0:
        raise ValueError(
            f"sinkhorn() needs a non-empty cost matrix [n, K], got {tuple(cost.shape)}"
        )
    if epsilon <= 0:
        raise ValueError(f"sinkhorn() needs epsilon > 0, got {epsilon}")
    if iterations < 1:
        raise ValueError(f"sinkhorn() needs iterations >= 1, got {iterations}")
    if not bool(torch.isfinite(cost).all()):
        raise ValueError("sinkhorn() got a cost matrix with NaN or inf entries")
    n, k = cost.shape
    column_target = n / k
    log_q = -cost.double() / epsilon
    for _ in range(iterations):
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) + math.log(column_target)
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True)
        column_error = (log_q.exp().sum(dim=0) - column_target).abs().max()
        if float(column_error) < tolerance:
            break
    return log_q.exp().to(cost.dtype if cost.is_floating_point() else torch.float32)


def sinkhorn_codes(
    distances: torch.Tensor,
    epsilon: float = DEFAULT_EPSILON,
    iterations: int = DEFAULT_ITERATIONS,
) -> torch.Tensor:
    """Hard codes [n] from squared distances [n, K]: argmax of the uniform Sinkhorn assignment.

    The distances are first mapped affinely onto [-1, 1] (their midrange to 0), as in LC-Rec,
    so that ``epsilon`` is relative to the spread of the distances.
    """
    distances = distances.detach().double()
    low, high = distances.min(), distances.max()
    middle = (high + low) / 2
    amplitude = (high - middle).clamp_min(1e-12)
    cost = (distances - middle) / amplitude
    return sinkhorn(cost, epsilon, iterations).argmax(dim=1)


def resolve_by_uniform_mapping(
    codes: torch.Tensor,
    last_distances: torch.Tensor,
    *,
    epsilon: float = DEFAULT_EPSILON,
    iterations: int = DEFAULT_ITERATIONS,
    max_rounds: int = 20,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Make every SID unique by moving colliding items to other last-level codes.

    ``codes`` [n, levels] are the argmin codes (no padding); ``last_distances`` [n, K] are
    the squared distances of each item's last-level residual to the last-level codebook
    (they do not depend on the last code, so they stay valid while codes move).

    One round visits every collision group (g items with the same SID) and redistributes
    its members over the g free codes of its prefix closest to the group (smallest mean
    distance; "free": no item outside the group uses it under that prefix), by
    :func:`sinkhorn_codes` on that [g, g] block. With exactly as many codes as items the
    uniform marginal allows one item per code, which a [g, K] problem with K >> g would not
    enforce. Rounds repeat until no collision is left, a round changes nothing, or
    ``max_rounds`` is reached; then the greedy fallback described in the module docstring
    finishes the job. The returned codes may have one extra (suffix) level, -1 padded.

    Returns ``(codes, report)`` where the report holds the rounds run, why they stopped,
    the fallback used (``"none"``, ``"greedy_nearest_free"`` or
    ``"greedy_nearest_free+suffix"``) and how many items each stage moved.
    """
    if codes.ndim != 2 or codes.dtype != torch.long or bool((codes < 0).any()):
        raise ValueError("codes must be a fixed-length LongTensor [n, levels] without -1 padding")
    n, k = last_distances.shape
    if n != codes.shape[0]:
        raise ValueError(f"{codes.shape[0]} code rows but {n} rows of last-level distances")
    if max_rounds < 0:
        raise ValueError(f"max_rounds must be >= 0, got {max_rounds}")
    out = codes.clone()
    rounds, stopped = 0, "no_collisions"
    while collision_groups(out):
        if rounds == max_rounds:
            stopped = "max_rounds"
            break
        rounds += 1
        previous = out.clone()
        for group in collision_groups(out):
            free = _free_codes(out, group, k)
            if not free:
                continue
            distances = last_distances[group]
            free_tensor = torch.tensor(free, dtype=torch.long)
            closest = torch.argsort(distances[:, free_tensor].mean(dim=0), stable=True)
            candidates = free_tensor[closest[: group.numel()]]
            picks = sinkhorn_codes(distances[:, candidates], epsilon, iterations)
            out[group, -1] = candidates[picks]
        if torch.equal(out, previous):
            stopped = "no_progress"
            break
    moved_by_sinkhorn = int((out != codes).any(dim=1).sum())

    fallback = "none"
    moved_by_greedy = items_with_suffix = 0
    if collision_groups(out):
        fallback = "greedy_nearest_free"
        before_greedy = out.clone()
        _greedy_nearest_free(out, last_distances, k)
        moved_by_greedy = int((out != before_greedy).any(dim=1).sum())
        if collision_groups(out):
            fallback = "greedy_nearest_free+suffix"
            distance_to_code = last_distances.gather(1, out[:, -1:]).squeeze(1)
            out = append_suffix_level(out, priority=distance_to_code)
            items_with_suffix = int((out[:, -1] != PAD).sum())
    report = {
        "strategy": "uniform_semantic_mapping",
        "rounds": rounds,
        "stopped": stopped,
        "items_moved_by_sinkhorn": moved_by_sinkhorn,
        "fallback": fallback,
        "items_moved_by_fallback": moved_by_greedy,
        "items_with_suffix": items_with_suffix,
    }
    return out, report


def _free_codes(codes: torch.Tensor, group: torch.Tensor, codebook_size: int) -> list[int]:
    """Last-level codes not used by items outside ``group`` that share the group's prefix."""
    same_prefix = (codes[:, :-1] == codes[group[0], :-1]).all(dim=1)
    same_prefix[group] = False
    taken = set(codes[same_prefix, -1].tolist())
    return [code for code in range(codebook_size) if code not in taken]


def _greedy_nearest_free(codes: torch.Tensor, last_distances: torch.Tensor, k: int) -> None:
    """In place: in each group the closest item keeps its code, the others take free codes.

    Items are served closest-to-the-shared-code first (ties: lowest index); each takes the
    nearest last-level code that no item with its prefix uses. Items finding none stay put.
    """
    for group in collision_groups(codes):
        shared = int(codes[group[0], -1])
        order = sorted(group.tolist(), key=lambda i: (float(last_distances[i, shared]), i))
        same_prefix = (codes[:, :-1] == codes[group[0], :-1]).all(dim=1)
        taken = set(codes[same_prefix, -1].tolist())
        for item in order[1:]:
            for code in torch.argsort(last_distances[item], stable=True).tolist():
                if code not in taken:
                    codes[item, -1] = code
                    taken.add(code)
                    break
