"""Knowledge distillation from a collaborative model into the SID decoder (``train.distill``).

A training window scores many prefixes, but each carries one label: the next item. A
fitted collaborative model (the in-framework SASRec) ranks the whole catalogue after the
same history, so it can say how likely every other item was too. :class:`TeacherDistillation`
turns that ranking into soft targets for the SID tokens the decoder predicts.

The decoder predicts an item one code at a time, with the target's earlier codes given
(teacher forcing). So the soft target of the level-``l`` token is the teacher's
distribution over items *that share the target's first* ``l`` *codes*, summed per code at
level ``l``::

    q_l(c) = sum_i p(i) [codes(i)[:l] == codes(target)[:l]] [codes(i)[l] == c] / Z

with ``p = softmax(teacher scores / temperature)``. The product of the student's
per-level distributions, trained to match these, is the teacher's item distribution
(the chain rule), so matching every level matches the teacher's ranking of items.

Training batches of the compact format carry ``window_items`` (each window's items,
``-1`` padded) and ``first_target`` (the index of its first predicted item); a target's
history is the ``max_history`` items before it in its window, exactly what its tokens
attend to.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F

from semrec.prompts.batching import IGNORE_INDEX


class Teacher(Protocol):
    def score(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """Scores ``[len(histories), num_items]`` of every item after each history."""


class TeacherDistillation:
    """Soft SID-token targets from ``teacher``'s item scores, and the distillation loss.

    Args:
        teacher: a fitted model with ``score(histories)`` (e.g. :class:`~semrec.cf.SASRec`).
        item_tokens: per item, its SID token ids (without the separator).
        max_history: how many items before a target its history holds.
        weight: the loss is ``(1 - weight) * CE(label) + weight * CE(soft target)``.
        temperature: the teacher's scores are divided by it before the softmax.
        mask_history: leave the history's items out of the teacher's distribution (as
            ``eval.mask_history`` leaves them out of the ranking).
    """

    def __init__(
        self,
        teacher: Teacher,
        item_tokens: Sequence[Sequence[int]],
        *,
        max_history: int,
        weight: float = 0.5,
        temperature: float = 1.0,
        mask_history: bool = False,
    ) -> None:
        if not 0 < weight <= 1:
            raise ValueError(f"weight must be in (0, 1], got {weight}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.teacher = teacher
        self.max_history = max_history
        self.weight = weight
        self.temperature = temperature
        self.mask_history = mask_history
        width = max(len(tokens) for tokens in item_tokens)
        codes = torch.full((len(item_tokens), width), -1, dtype=torch.long)
        for item, tokens in enumerate(item_tokens):
            codes[item, : len(tokens)] = torch.tensor(list(tokens), dtype=torch.long)
        #: [num_items, levels] SID token ids, -1 past an item's last level
        self.codes = codes
        #: the sorted SID token ids: the columns of the soft targets
        self.sid_ids = torch.unique(codes[codes >= 0])
        #: [num_items, levels] each item's column in ``sid_ids`` per level (0 where none)
        self.columns = torch.searchsorted(self.sid_ids, codes.clamp(min=0))

    # ---------------------------------------------------------------- prefixes

    def prefixes(self, batch: dict[str, torch.Tensor]) -> tuple[list[list[int]], torch.Tensor]:
        """Each predicted item's history and the items, in the order of the batch's labels."""
        if "window_items" not in batch or "first_target" not in batch:
            raise KeyError(
                "train.distill needs compact training windows (batches with window_items "
                "and first_target); this batch has neither"
            )
        histories, targets = [], []
        for row, first in zip(
            batch["window_items"].tolist(), batch["first_target"].tolist(), strict=True
        ):
            items = [item for item in row if item >= 0]
            for j in range(first, len(items)):
                histories.append(items[max(0, j - self.max_history) : j])
                targets.append(items[j])
        return histories, torch.tensor(targets, dtype=torch.long)

    # ----------------------------------------------------------- soft targets

    def teacher_probs(self, histories: list[list[int]]) -> torch.Tensor:
        """``[n, num_items]``: the teacher's tempered distribution after each history."""
        scores = self.teacher.score(histories).float() / self.temperature
        if scores.shape[1] != len(self.codes):
            raise ValueError(
                f"the teacher scores {scores.shape[1]} items, the SID table has {len(self.codes)}"
            )
        if self.mask_history:
            rows = [n for n, history in enumerate(histories) for _ in history]
            items = [item for history in histories for item in history]
            scores[rows, items] = float("-inf")
        return torch.softmax(scores, dim=1)

    def soft_targets(
        self, histories: list[list[int]], targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft targets ``[tokens, len(sid_ids)]`` of every SID token of every target (target
        by target, level by level) and those tokens' ids."""
        probs = self.teacher_probs(histories)
        target_codes = self.codes[targets]  # [n, L]
        same = self.codes.unsqueeze(0) == target_codes.unsqueeze(1)  # [n, I, L]
        # conditioned[n, i, l]: item i shares the target's codes at every level before l
        conditioned = torch.ones_like(same)
        conditioned[..., 1:] = same[..., :-1].long().cumprod(dim=-1).bool()
        present = target_codes >= 0
        token_rows, token_levels = present.nonzero(as_tuple=True)  # target-major order
        weights = (
            probs[token_rows]
            * conditioned[token_rows, :, token_levels]
            * (self.codes[:, token_levels].T >= 0)
        )
        columns = self.columns[:, token_levels].T  # [tokens, I]
        soft = torch.zeros(len(token_rows), len(self.sid_ids)).scatter_add_(1, columns, weights)
        tokens = target_codes[token_rows, token_levels]
        total = soft.sum(dim=1, keepdim=True)
        # nothing left after masking (every candidate was in the history): the label itself
        label_columns = torch.searchsorted(self.sid_ids, tokens)
        empty = total.squeeze(1) <= 0
        soft[empty] = F.one_hot(label_columns[empty], len(self.sid_ids)).float()
        return soft / soft.sum(dim=1, keepdim=True), tokens

    # ------------------------------------------------------------------ loss

    def loss(
        self,
        logits: torch.Tensor,
        batch: dict[str, torch.Tensor],
        output_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``total``, ``label`` (the cross-entropy of the labels) and ``distill`` (of the soft
        targets), from the logits at the labelled positions in row-major order (over
        ``output_ids`` when given, else the whole vocabulary)."""
        histories, targets = self.prefixes(batch)
        soft, tokens = self.soft_targets(histories, targets)
        labels = batch["labels"][:, 1:]
        labels = labels[labels != IGNORE_INDEX]
        if not torch.equal(labels.cpu(), tokens):
            raise ValueError(
                f"train.distill: the batch's {len(labels)} labelled tokens are not its "
                f"{len(targets)} targets' SID tokens ({len(tokens)}), level by level; "
                "distillation needs windows whose only labels are the targets' SIDs"
            )
        student_columns = self.sid_ids
        if output_ids is not None:
            output_ids = output_ids.cpu()
            student_columns = torch.searchsorted(output_ids, self.sid_ids)
            if not torch.equal(
                output_ids[student_columns.clamp(max=len(output_ids) - 1)], self.sid_ids
            ):
                raise ValueError("train.distill: some SID tokens are missing from output_ids")
            label_columns = torch.searchsorted(output_ids, labels.cpu())
        else:
            label_columns = labels.cpu()
        device = logits.device
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        label = F.nll_loss(log_probs, label_columns.to(device))
        distill = -(soft.to(device) * log_probs[:, student_columns.to(device)]).sum(dim=1).mean()
        total = (1 - self.weight) * label + self.weight * distill
        return {"total": total, "label": label, "distill": distill}
