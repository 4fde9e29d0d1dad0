"""What one post-training step computes from a batch of prompts: GRPO over trie-constrained
beams, or DPO / S-DPO against negatives.

Each objective is called with the model, the trie of valid SIDs and a batch of
:class:`~semrec.posttrain.data.PostTrainingPrompts`, and returns the loss and what to log.
Rollouts and negatives come from semrec's own constrained beam search, so every completion
is a distinct real item and a group costs one prompt encoding.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from semrec.decoding import ConstrainedBeamSearch, SIDTrie
from semrec.posttrain.log_probs import FrozenReference, completion_log_probs
from semrec.posttrain.losses import dpo_loss, group_advantages, grpo_loss, sdpo_loss
from semrec.posttrain.rewards import Reward

Batch = dict[str, torch.Tensor]


def item_tokens(trie: SIDTrie, items: torch.Tensor, valid: torch.Tensor):
    """The SID tokens ``[..., L]`` of ``items`` and the mask of those that exist.

    Slots without an item (``valid`` False) and the padding of shorter SIDs hold a real
    token id (the first item's first token), masked out.
    """
    rows = items.clamp(min=0)
    sequences = trie.sequences.to(items.device)
    tokens = sequences[rows]
    steps = torch.arange(tokens.shape[-1], device=items.device)
    mask = (steps < trie.lengths.to(items.device)[rows][..., None]) & valid[..., None]
    return tokens.masked_fill(~mask, int(sequences[0, 0])), mask


class GRPO:
    """Group relative policy optimisation over each prompt's ``group_size`` best beams.

    The rollouts of a prompt are its ``group_size`` best distinct items under the current
    policy (a beam search of that many beams, in eval mode, no gradient), rewarded by
    ``reward`` and normalised within the group. The loss is :func:`grpo_loss` with one
    update per rollout (the sampling policy is the current one, so the ratio is 1 and
    clipping starts to matter only when rollouts are reused), and the k3 KL to ``reference``.
    """

    def __init__(
        self,
        rollouts: ConstrainedBeamSearch,
        reward: Reward,
        reference: FrozenReference,
        *,
        group_size: int,
        beta: float,
        clip_epsilon: float,
        output_ids: torch.Tensor | None = None,
    ) -> None:
        if rollouts.num_beams < group_size:
            raise ValueError(
                f"{group_size} rollouts per prompt need a beam search of at least as many "
                f"beams, got {rollouts.num_beams}"
            )
        self.rollouts = rollouts
        self.reward = reward
        self.reference = reference
        self.group_size = group_size
        self.beta = beta
        self.clip_epsilon = clip_epsilon
        self.output_ids = output_ids

    def __call__(self, model: nn.Module, trie: SIDTrie, batch: Batch) -> dict[str, torch.Tensor]:
        prompts, mask = batch["input_ids"], batch["attention_mask"]
        found = self.rollouts.search(
            model, trie, prompts, mask, self.group_size, exclude_items=batch.get("exclude")
        )
        items, valid = found.items, found.valid
        rewards = self.reward(items, valid, batch).to(prompts.device)
        advantages = group_advantages(rewards, valid)
        tokens, token_mask = item_tokens(trie, items, valid)
        with self.reference.weights(model):
            reference = completion_log_probs(model, prompts, mask, tokens, self.output_ids)
        policy = completion_log_probs(model, prompts, mask, tokens, self.output_ids)
        result = grpo_loss(
            policy.flatten(0, 1),
            policy.detach().flatten(0, 1),
            reference.flatten(0, 1),
            advantages.flatten(),
            token_mask.flatten(0, 1),
            beta=self.beta,
            clip_epsilon=self.clip_epsilon,
        )
        hit = (items == batch["targets"].to(items.device)[:, None]) & valid
        return {
            "loss": result.loss,
            "reward": rewards[valid].mean().detach(),
            "kl": result.kl,
            "target_in_group": hit.any(dim=1).float().mean(),
        }


class Preference:
    """DPO (one negative) or S-DPO (``negatives`` of them) with the target as the chosen item,
    plus ``sft_weight`` times the target's token cross-entropy (0: none).

    Negatives are the policy's own best beams that are not the target (``source:
    "beams"``, hard negatives, found anew each step) or items drawn by training popularity
    (``"popularity"``; ``popularity`` holds the items' training counts).
    """

    def __init__(
        self,
        reference: FrozenReference,
        *,
        loss: Literal["dpo", "sdpo"],
        beta: float,
        negatives: int,
        source: Literal["beams", "popularity"],
        rollouts: ConstrainedBeamSearch | None = None,
        popularity: torch.Tensor | None = None,
        output_ids: torch.Tensor | None = None,
        sft_weight: float = 0.0,
    ) -> None:
        if loss == "dpo" and negatives != 1:
            raise ValueError(f"DPO compares one negative, got {negatives}; use S-DPO for more")
        if source == "beams" and (rollouts is None or rollouts.num_beams < negatives + 1):
            raise ValueError(f"beam negatives need a beam search of at least {negatives + 1} beams")
        if source == "popularity" and popularity is None:
            raise ValueError("popularity negatives need the items' training counts")
        self.reference = reference
        self.loss = loss
        self.beta = beta
        self.negatives = negatives
        self.source = source
        self.rollouts = rollouts
        self.popularity = None if popularity is None else popularity.double().clamp(min=0) + 1.0
        self.output_ids = output_ids
        self.sft_weight = sft_weight

    def negative_items(self, model: nn.Module, trie: SIDTrie, batch: Batch):
        """``[B, negatives]`` items other than each target, and which of them exist."""
        targets = batch["targets"]
        if self.source == "beams":
            found = self.rollouts.search(
                model,
                trie,
                batch["input_ids"],
                batch["attention_mask"],
                self.negatives + 1,
                exclude_items=batch.get("exclude"),
            )
            keep = found.valid & (found.items != targets.to(found.items.device)[:, None])
            # the first `negatives` kept beams of each row, best first
            order = torch.sort((~keep).int(), dim=1, stable=True).indices[:, : self.negatives]
            return found.items.gather(1, order), keep.gather(1, order)
        weights = self.popularity.to(targets.device).expand(len(targets), -1).clone()
        weights.scatter_(1, targets[:, None], 0.0)
        drawn = torch.multinomial(weights, self.negatives, replacement=False)
        return drawn, torch.ones_like(drawn, dtype=torch.bool)

    def __call__(self, model: nn.Module, trie: SIDTrie, batch: Batch) -> dict[str, torch.Tensor]:
        prompts, mask, targets = batch["input_ids"], batch["attention_mask"], batch["targets"]
        negatives, valid = self.negative_items(model, trie, batch)
        items = torch.cat([targets[:, None], negatives.to(targets.device)], dim=1)
        exists = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1).to(targets.device)
        tokens, token_mask = item_tokens(trie, items, exists)
        with self.reference.weights(model):
            reference = completion_log_probs(model, prompts, mask, tokens, self.output_ids)
        policy = completion_log_probs(model, prompts, mask, tokens, self.output_ids)
        weight = token_mask.to(policy.dtype)
        sequence, ref_sequence = (policy * weight).sum(-1), (reference * weight).sum(-1)
        usable = exists[:, 1:].any(dim=1)  # a row with no negative teaches nothing
        if not bool(usable.any()):
            loss = policy.sum() * 0.0
        elif self.loss == "dpo":
            loss = dpo_loss(
                sequence[usable, 0],
                sequence[usable, 1],
                ref_sequence[usable, 0],
                ref_sequence[usable, 1],
                beta=self.beta,
            )
        else:
            loss = sdpo_loss(
                sequence[usable, 0],
                sequence[usable, 1:],
                ref_sequence[usable, 0],
                ref_sequence[usable, 1:],
                beta=self.beta,
                valid=exists[usable, 1:],
            )
        parts = {}
        if self.sft_weight:
            # the target's mean token cross-entropy, as in supervised fine-tuning
            nll = -sequence[:, 0] / weight[:, 0].sum(-1).clamp(min=1)
            parts["target_nll"] = nll.mean().detach()
            loss = loss + self.sft_weight * nll.mean()
        margin = (sequence - ref_sequence).detach()
        chosen_gain = margin[:, 0]
        rejected_gain = margin[:, 1:].masked_fill(~exists[:, 1:], 0.0).sum(1) / exists[:, 1:].sum(
            1
        ).clamp(min=1)
        return {
            "loss": loss,
            "chosen_log_ratio": chosen_gain.mean(),
            "rejected_log_ratio": rejected_gain.mean(),
            **parts,
        }
