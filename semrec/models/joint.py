"""Training dynamic tokenizers together with the LLM (TTDS's dynamic knowledge fusion).

:class:`JointTokenizerTraining` is the collaborator :class:`~semrec.models.module.GenRecModule`
gets for a run whose item (and user) tokenizers are dynamic. It owns the tokenizers (so
their parameters, inputs and code tables are part of every Lightning checkpoint) and the
schedule of :class:`JointSchedule`:

* every training step adds ``alpha * L_DM`` over the items and users the batch mentions
  (TTDS Eq. 15), until ``freeze_after_step``;
* every ``recompute_inputs_every_n_steps`` the inputs X are recomputed by the current
  backbone (LoRA changes it);
* every ``refresh_every_n_steps`` the codes are re-derived; the fraction of rows whose SID
  changed is logged (``joint/<name>_changed``) and kept in the tokenizer's ``stats()``.

A frozen tokenizer (after ``freeze_after_step``) gets no loss and keeps its codes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from semrec.models.sid_reader import LLMSIDReader
from semrec.tokenizers.dynamic import DynamicTokenizer

Represent = Callable[[nn.Module, Sequence[str]], torch.Tensor]


@dataclass(frozen=True)
class JointSchedule:
    """When and how strongly the tokenizers train with the LLM (see the module docstring)."""

    alpha: float = 0.1
    lr: float = 5e-4
    refresh_every_n_steps: int | None = 50
    recompute_inputs_every_n_steps: int | None = None
    freeze_after_step: int | None = None
    rows_per_step: int = 32

    def frozen(self, step: int) -> bool:
        return self.freeze_after_step is not None and step >= self.freeze_after_step


def _due(every: int | None, step: int) -> bool:
    return every is not None and step > 0 and step % every == 0


class JointTokenizerTraining(nn.Module):
    """The dynamic tokenizers of a run (``items``, optionally ``users``) and their schedule.

    ``level_token_ids[name][l]`` are the LLM token ids of level ``l`` of that tokenizer;
    ``texts[name]`` the texts whose representations are the tokenizer's inputs, recomputed
    by ``represent(model, texts)`` on the schedule (no texts: the inputs stay as given).
    """

    def __init__(
        self,
        tokenizers: Mapping[str, DynamicTokenizer],
        level_token_ids: Mapping[str, Sequence[Sequence[int]]],
        schedule: JointSchedule,
        *,
        texts: Mapping[str, Sequence[str]] | None = None,
        represent: Represent | None = None,
    ) -> None:
        super().__init__()
        if "items" not in tokenizers or set(tokenizers) - {"items", "users"}:
            raise ValueError(
                f"joint training takes the 'items' tokenizer and optionally 'users', got "
                f"{sorted(tokenizers)}"
            )
        self.item_tokenizer = tokenizers["items"]
        self.user_tokenizer = tokenizers.get("users")
        self.level_token_ids = {name: level_token_ids[name] for name in tokenizers}
        self.schedule = schedule
        self.texts = dict(texts or {})
        self.represent = represent
        if self.texts and represent is None:
            raise ValueError("texts to recompute the inputs from need a represent function")

    @property
    def items(self) -> DynamicTokenizer:
        return self.item_tokenizer

    @property
    def tokenizers(self) -> dict[str, DynamicTokenizer]:
        """The tokenizers by role: ``items``, and ``users`` when users have a tower."""
        roles = {"items": self.item_tokenizer, "users": self.user_tokenizer}
        return {name: tok for name, tok in roles.items() if tok is not None}

    def loss(
        self, batch: Mapping[str, torch.Tensor], model: nn.Module, step: int
    ) -> dict[str, torch.Tensor]:
        """``alpha * L_DM`` summed over the tokenizers, and each part (for logging)."""
        zero = self.item_tokenizer.inputs.new_zeros(())
        out: dict[str, torch.Tensor] = {"total": zero}
        if self.schedule.frozen(step) or self.schedule.alpha == 0:
            return out
        for name, tokenizer in self.tokenizers.items():
            rows = _rows(batch.get(f"sid_{name}"), self.schedule.rows_per_step)
            if rows is None:
                continue
            reader = LLMSIDReader(model, self.level_token_ids[name][: len(tokenizer.level_sizes)])
            parts = tokenizer.loss(rows, reader)
            out["total"] = out["total"] + self.schedule.alpha * parts["total"]
            for part in ("id", "token", "reconstruction"):
                if part in parts:
                    out[f"{name}_{part}"] = parts[part].detach()
        return out

    def after_step(self, step: int, model: nn.Module) -> dict[str, float]:
        """Recompute inputs and refresh codes when due; per tokenizer, the changed fraction."""
        if self.schedule.frozen(step):
            return {}
        if self.texts and _due(self.schedule.recompute_inputs_every_n_steps, step):
            self.recompute_inputs(model)
        if not _due(self.schedule.refresh_every_n_steps, step):
            return {}
        report = {}
        for name, tokenizer in self.tokenizers.items():
            changed = tokenizer.refresh_codes(step=step)
            report[f"{name}_changed"] = (
                float("nan") if changed is None else changed.numel() / tokenizer.n_items
            )
        return report

    def recompute_inputs(self, model: nn.Module) -> None:
        """Inputs X of every tokenizer with texts, from the current backbone (Eq. 6)."""
        assert self.represent is not None
        for name, texts in self.texts.items():
            self.tokenizers[name].set_inputs(self.represent(model, texts))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def _rows(mentioned: torch.Tensor | None, limit: int) -> torch.Tensor | None:
    """The distinct rows a batch mentions (``-1`` padding dropped), at most ``limit``."""
    if mentioned is None:
        return None
    rows = torch.unique(mentioned[mentioned >= 0])
    if rows.numel() == 0:
        return None
    if rows.numel() > limit:
        rows = rows[torch.randperm(rows.numel())[:limit].to(rows.device)]
    return rows
