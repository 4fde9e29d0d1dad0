"""The Lightning DataModule: task mixtures for training, SEQ prompts for valid/test."""

from __future__ import annotations

import random

import lightning as L
import torch
from torch.utils.data import DataLoader

from semrec.data.split import Example
from semrec.models.prompting import PromptFormatter
from semrec.tasks.base import RecommendationTask, Sample, Task, TaskContext, build_mixture


def subsample_examples(examples: list[Example], limit: int | None, seed: int) -> list[Example]:
    """A deterministic random subset of at most ``limit`` examples (all when ``limit`` is None)."""
    if limit is None or limit >= len(examples):
        return examples
    picked = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in picked]


class GenRecDataModule(L.LightningDataModule):
    """Builds one epoch of instruction pairs per epoch (fresh template draws) and eval prompts.

    Training batches are dicts with ``input_ids``, ``attention_mask`` and ``labels`` (loss on
    the response only); eval batches hold left-padded prompts plus ``targets`` (item ids).
    Lightning must reload the train dataloader every epoch
    (``reload_dataloaders_every_n_epochs=1``) so templates are re-sampled.
    """

    def __init__(
        self,
        ctx: TaskContext,
        tasks: list[tuple[Task, float]],
        eval_task: RecommendationTask,
        formatter: PromptFormatter,
        *,
        batch_size: int = 8,
        eval_batch_size: int = 16,
        max_train_samples: int | None = None,
        max_valid_users: int | None = None,
        max_test_users: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.ctx = ctx
        self.tasks = tasks
        self.eval_task = eval_task
        self.formatter = formatter
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.max_train_samples = max_train_samples
        self.seed = seed
        self.valid_examples = subsample_examples(ctx.split.valid, max_valid_users, seed)
        self.test_examples = subsample_examples(ctx.split.test, max_test_users, seed + 1)
        self._epoch_cache: tuple[int, list[Sample]] | None = None
        for task, _ in tasks:
            task.check(ctx)

    def epoch_samples(self, epoch: int) -> list[Sample]:
        """The training pairs of one epoch, deterministic in (seed, epoch); built once per epoch."""
        if self._epoch_cache is not None and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1]
        rng = random.Random(self.seed * 1_000_003 + epoch)
        samples = build_mixture(self.tasks, self.ctx, rng)
        if self.max_train_samples is not None:
            samples = samples[: self.max_train_samples]
        self._epoch_cache = (epoch, samples)
        return samples

    def train_dataloader(self) -> DataLoader:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        samples = self.epoch_samples(epoch)
        return DataLoader(
            samples,
            batch_size=self.batch_size,
            shuffle=False,  # build_mixture already shuffled, reproducibly
            collate_fn=self._collate_train,
        )

    def _collate_train(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        return self.formatter.collate_pairs(
            [self.formatter.encode_pair(s.prompt, s.response) for s in samples]
        )

    def eval_dataloader(self, examples: list[Example]) -> DataLoader:
        samples = self.eval_task.eval_samples(self.ctx, examples)
        encoded = [(self.formatter.prompt_ids(s.prompt), s.target_item) for s in samples]
        # Similar lengths together: less padding in each batched beam search.
        encoded.sort(key=lambda pair: len(pair[0]))
        return DataLoader(
            encoded, batch_size=self.eval_batch_size, shuffle=False, collate_fn=self._collate_eval
        )

    def _collate_eval(self, encoded: list[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
        batch = self.formatter.collate_prompts([ids for ids, _ in encoded])
        batch["targets"] = torch.tensor([target for _, target in encoded], dtype=torch.long)
        return batch

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader(self.valid_examples)

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader(self.test_examples)
