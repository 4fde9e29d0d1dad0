"""The post-training losses on plain tensors: GRPO's clipped, KL-regularised policy loss
with group-normalised advantages, DPO's sigmoid loss and its multi-negative softmax form
(S-DPO).

Every function takes log-probabilities the caller computed (per token for GRPO, per
sequence for DPO), so each can be checked by hand on rigged numbers.

TRL (1.16) has these losses only as methods of its trainers (``GRPOTrainer._compute_loss``,
``DPOTrainer._compute_loss``) that run the model, generate and collate themselves; they
cannot take semrec's trie-constrained beams or its batches, so the formulas are written
here, with the same definitions:

- GRPO (Shao et al. 2024, DeepSeekMath, Eq. 3; TRL's ``loss_type="grpo"``): per token
  ``-min(r A, clip(r, 1-eps, 1+eps) A) + beta * KL``, with ``r = exp(logp - logp_old)`` and
  the k3 estimator ``KL = exp(ref - logp) - (ref - logp) - 1`` (Schulman 2020), averaged
  over each completion's tokens, then over completions. MiniOneRec's loss is this one
  without the clipping; with one update per rollout (as here and there) the ratio is 1 and
  clipping never acts.
- DPO (Rafailov et al. 2023, Eq. 7): ``-log sigmoid(beta ((logp_c - ref_c) - (logp_r - ref_r)))``.
- S-DPO (Chen et al. 2024, "On Softmax Direct Preference Optimization for
  Recommendation", Eq. 11): ``-log sigmoid(-log sum_j exp(beta ((logp_j - ref_j) -
  (logp_c - ref_c))))`` over the negatives ``j``; with one negative it is DPO.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: added to the group's standard deviation (TRL's and MiniOneRec's value)
ADVANTAGE_EPSILON = 1e-4


def group_advantages(rewards: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """``(r - mean) / (std + 1e-4)`` within each group (row) of ``rewards`` ``[B, G]``.

    ``valid`` ``[B, G]`` marks the completions that exist (a catalogue smaller than ``G``
    leaves empty slots); the mean and the (unbiased) standard deviation cover those only,
    and empty slots get advantage 0. A group whose rewards are all equal has advantage 0
    everywhere: it teaches nothing.
    """
    if valid is None:
        valid = torch.ones_like(rewards, dtype=torch.bool)
    weight = valid.to(rewards.dtype)
    count = weight.sum(dim=1, keepdim=True)
    mean = (rewards * weight).sum(dim=1, keepdim=True) / count.clamp(min=1)
    squares = ((rewards - mean) ** 2 * weight).sum(dim=1, keepdim=True)
    std = (squares / (count - 1).clamp(min=1)).sqrt()
    return ((rewards - mean) / (std + ADVANTAGE_EPSILON)) * weight


@dataclass(frozen=True)
class GRPOLoss:
    """The loss and what to log of one GRPO step (see :func:`grpo_loss`)."""

    loss: torch.Tensor
    kl: torch.Tensor  # mean k3 estimate over the completions' tokens
    clipped: torch.Tensor  # fraction of tokens whose ratio was clipped


def grpo_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    ref_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float,
    clip_epsilon: float,
) -> GRPOLoss:
    """GRPO's loss over completions (see the module docstring).

    ``log_probs`` ``[N, L]`` are the policy's per-token log-probabilities (with grad),
    ``old_log_probs`` those of the policy that sampled the completions and
    ``ref_log_probs`` the frozen reference's (no grad needed), ``advantages`` ``[N]`` one
    per completion, ``mask`` ``[N, L]`` the completion tokens that count; a completion
    with no token counted (an empty slot) adds nothing.
    """
    mask = mask.to(log_probs.dtype)
    ratio = torch.exp(log_probs - old_log_probs)
    clipped_ratio = ratio.clamp(1 - clip_epsilon, 1 + clip_epsilon)
    gain = advantages[:, None]
    surrogate = torch.minimum(ratio * gain, clipped_ratio * gain)
    delta = ref_log_probs - log_probs
    kl = torch.exp(delta) - delta - 1
    per_token = -surrogate + beta * kl
    tokens = mask.sum(dim=1)
    counted = tokens > 0
    per_completion = (per_token * mask).sum(dim=1) / tokens.clamp(min=1)
    loss = per_completion[counted].mean() if bool(counted.any()) else per_token.sum() * 0.0
    total = mask.sum().clamp(min=1)
    was_clipped = ((ratio - clipped_ratio).abs() > 0).to(mask.dtype)
    return GRPOLoss(
        loss=loss,
        kl=((kl * mask).sum() / total).detach(),
        clipped=((was_clipped * mask).sum() / total).detach(),
    )


def dpo_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float,
) -> torch.Tensor:
    """Mean DPO sigmoid loss over ``[B]`` pairs of sequence log-probabilities."""
    margin = (chosen - ref_chosen) - (rejected - ref_rejected)
    return -F.logsigmoid(beta * margin).mean()


def sdpo_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean S-DPO loss: ``chosen``/``ref_chosen`` ``[B]``, ``rejected``/``ref_rejected``
    ``[B, N]`` sequence log-probabilities of ``N`` negatives each (``valid`` ``[B, N]``:
    the negatives that exist; every row needs one)."""
    chosen_reward = beta * (chosen - ref_chosen)
    rejected_reward = beta * (rejected - ref_rejected)
    gaps = rejected_reward - chosen_reward[:, None]
    if valid is not None:
        if not bool(valid.any(dim=1).all()):
            raise ValueError("every S-DPO example needs at least one valid negative")
        gaps = gaps.masked_fill(~valid, float("-inf"))
    return -F.logsigmoid(-torch.logsumexp(gaps, dim=1)).mean()
