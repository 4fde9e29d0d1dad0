"""Training progress in the run's log: speed and loss as training goes, and each validation.

:class:`TrainingSpeed` prints examples and tokens per second per epoch (and, every
``every_n_steps`` optimizer steps, the mean loss and rate since its last line);
:class:`ValidationReport` prints each validation's metrics, so a long run shows in its log
whether it is learning, not only in ``logs/*.csv``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch

from semrec.prompts.batching import IGNORE_INDEX


class TrainingSpeed(L.Callback):
    """Counts each epoch's training examples, real tokens and labelled tokens, and reports
    their rates (``train/examples_per_s``, ``train/tokens_per_s``) at the epoch's end.

    Batches carry ``examples`` (training prefixes or pairs) and ``tokens`` (non-padding
    tokens); labelled tokens are those with a label.
    """

    def __init__(
        self, echo: Callable[[str], None] | None = None, every_n_steps: int | None = None
    ) -> None:
        self.echo = echo
        self.every_n_steps = every_n_steps
        self._start = 0.0
        self._examples = self._tokens = self._labelled = 0
        # since the last step line (a run resumed mid-epoch starts without an epoch start)
        self._since = self._fresh_since(time.perf_counter())

    @staticmethod
    def _fresh_since(now: float, step: int | None = None) -> dict[str, Any]:
        return {"time": now, "examples": 0, "loss": 0.0, "batches": 0, "step": step}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        self._examples = self._tokens = self._labelled = 0
        self._since = self._fresh_since(self._start)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *_
    ) -> None:
        examples = int(batch["examples"])
        self._examples += examples
        self._tokens += int(batch["tokens"])
        labels = batch.get("labels")  # post-training batches are prompts, without labels
        self._labelled += 0 if labels is None else int((labels != IGNORE_INDEX).sum())
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        since = self._since
        since["examples"] += examples
        since["batches"] += 1
        # summed as a tensor: converting every step would wait for the device each step
        since["loss"] += loss.detach() if loss is not None else float("nan")
        step = trainer.global_step
        due = self.every_n_steps and step % self.every_n_steps == 0 and step != since["step"]
        if due and self.echo is not None and trainer.is_global_zero:
            now = time.perf_counter()
            total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
            of = f"/{total}" if total else ""
            self.echo(
                f"[train] step {step}{of}: loss {float(since['loss']) / since['batches']:.3f} "
                f"(mean of the last {since['batches']} batches), "
                f"{since['examples'] / max(now - since['time'], 1e-9):.1f} examples/s "
                "(this process)"
            )
            self._since = self._fresh_since(now, step)

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


class ValidationReport(L.Callback):
    """Prints each validation's ``val/*`` ranking metrics with the epoch and step."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        ranked = []
        for name, value in trainer.callback_metrics.items():
            metric, _, k = name.removeprefix("val/").partition("@")
            if name.startswith("val/") and metric in ("hr", "ndcg") and k.isdigit():
                ranked.append((metric, int(k), float(value)))
        shown = [f"{metric}@{k} {value:.4f}" for metric, k, value in sorted(ranked)]
        if shown:
            self.echo(
                f"[valid] epoch {trainer.current_epoch + 1}, step {trainer.global_step}: "
                + ", ".join(shown)
            )
