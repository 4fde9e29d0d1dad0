"""Training speed in the run's log: examples and tokens per second, per epoch."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch

from semrec.data.batching import IGNORE_INDEX


class TrainingSpeed(L.Callback):
    """Counts each epoch's training examples, real tokens and labelled tokens, and reports
    their rates (``train/examples_per_s``, ``train/tokens_per_s``) at the epoch's end.

    Batches carry ``examples`` (training prefixes or pairs) and ``tokens`` (non-padding
    tokens); labelled tokens are those with a label.
    """

    def __init__(self, echo: Callable[[str], None] | None = None) -> None:
        self.echo = echo
        self._start = 0.0
        self._examples = self._tokens = self._labelled = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        self._examples = self._tokens = self._labelled = 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *_
    ) -> None:
        self._examples += int(batch["examples"])
        self._tokens += int(batch["tokens"])
        self._labelled += int((batch["labels"] != IGNORE_INDEX).sum())

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = max(time.perf_counter() - self._start, 1e-9)
        # the counts of all processes (a multi-process run); the rates are per run
        counts = torch.tensor(
            [self._examples, self._tokens, self._labelled],
            dtype=torch.float64,
            device=pl_module.device,
        )
        examples, tokens, labelled = trainer.strategy.reduce(counts, reduce_op="sum").tolist()
        rates = {"train/examples_per_s": examples / seconds, "train/tokens_per_s": tokens / seconds}
        pl_module.log_dict(rates, sync_dist=True)
        if self.echo is not None:
            self.echo(
                f"[train] epoch {trainer.current_epoch + 1}: {examples:.0f} examples in "
                f"{seconds:.1f} s ({rates['train/examples_per_s']:.0f} examples/s, "
                f"{rates['train/tokens_per_s']:.0f} tokens/s, "
                f"{labelled / seconds:.0f} labelled tokens/s)"
            )
