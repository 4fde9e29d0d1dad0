"""The post-training LightningModule: an objective's loss per batch of prompts, and the
same validation by constrained beam search as supervised fine-tuning."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from semrec.decoding import ConstrainedBeamSearch, SIDTrie
from semrec.models.module import GenRecModule

Objective = Callable[[nn.Module, SIDTrie, dict[str, torch.Tensor]], dict[str, torch.Tensor]]


class PostTrainingModule(GenRecModule):
    """Trains ``model`` with ``objective`` (:mod:`semrec.posttrain.objectives`); validation,
    checkpoints (trainable tensors and RNG states) and the learning-rate schedule are
    :class:`~semrec.models.module.GenRecModule`'s. Everything the objective returns besides
    the loss is logged as ``post/<name>`` each step."""

    def __init__(
        self,
        model: nn.Module,
        decoder: ConstrainedBeamSearch,
        trie: SIDTrie,
        objective: Objective,
        *,
        ks: list[int],
        lr: float,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.0,
    ) -> None:
        super().__init__(
            model, decoder, trie, ks=ks, lr=lr, weight_decay=weight_decay, warmup_ratio=warmup_ratio
        )
        self.objective = objective

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        parts = self.objective(self.model, self.current_trie(), batch)
        loss = parts.pop("loss")
        size = batch["input_ids"].shape[0]
        self.check_finite(loss, batch_idx)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        for name, value in parts.items():
            self.log(f"post/{name}", value, batch_size=size)
        return loss
