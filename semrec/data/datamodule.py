"""The Lightning DataModule: task mixtures for training, SEQ prompts for valid/test."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator

import lightning as L
import torch
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from semrec.data.split import Example
from semrec.models.prompting import PromptFormatter
from semrec.tasks.base import RecommendationTask, Sample, Task, TaskContext, build_mixture


def subsample_examples(examples: list[Example], limit: int | None, seed: int) -> list[Example]:
    """A deterministic random subset of at most ``limit`` examples (all when ``limit`` is None)."""
    if limit is None or limit >= len(examples):
        return examples
    picked = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in picked]


class ResumableBatchSampler(BatchSampler):
    """Sequential batches that can start mid-epoch: the data position of a resumed run.

    ``batches_done`` (a callable: the number of batches the trainer has finished this
    epoch) is what :meth:`state_dict` stores; after :meth:`load_state_dict` the next
    iteration skips that many batches without loading them. ``len`` stays the whole epoch's.
    """

    def __init__(self, n: int, batch_size: int, batches_done: Callable[[], int]) -> None:
        super().__init__(SequentialSampler(range(n)), batch_size, drop_last=False)
        self.batches_done = batches_done
        self.skip = 0

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.skip = self.skip, 0
        return itertools.islice(super().__iter__(), skip, None)


class ResumableDataLoader(DataLoader):
    """A DataLoader Lightning saves and restores mid-epoch (the ``state_dict`` protocol)."""

    batch_sampler: ResumableBatchSampler

    def state_dict(self) -> dict[str, int]:
        return {"batches_done": int(self.batch_sampler.batches_done())}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.skip = int(state["batches_done"])


class GenRecDataModule(L.LightningDataModule):
    """Builds one epoch of instruction pairs per epoch (fresh template draws) and eval prompts.

    Training batches are dicts with ``input_ids``, ``attention_mask`` and ``labels`` (loss on
    the response only); eval batches hold left-padded prompts plus ``targets`` (item ids).
    Lightning must reload the train dataloader every epoch
    (``reload_dataloaders_every_n_epochs=1``) so templates are re-sampled. The train
    loader resumes mid-epoch from a Lightning checkpoint (:class:`ResumableDataLoader`).
    With ``mask_history`` eval batches also hold ``exclude``: each user's earlier items.
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
        mask_history: bool = False,
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
        self.mask_history = mask_history
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
        # build_mixture already shuffled, reproducibly: batches are taken in order
        sampler = ResumableBatchSampler(len(samples), self.batch_size, self._batches_done)
        return ResumableDataLoader(
            samples,
            batch_sampler=sampler,
            collate_fn=self._collate_train,
            # its own generator: creating the iterator must not draw from the global RNG,
            # or a resumed run's dropout masks would differ from an uninterrupted run's
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _batches_done(self) -> int:
        """Training batches finished in the current epoch (what a checkpoint must skip)."""
        if self.trainer is None:
            return 0
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def _collate_train(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        return self.formatter.collate_pairs(
            [self.formatter.encode_pair(s.prompt, s.response) for s in samples]
        )

    def excluded_items(self, part: str) -> list[list[int]] | None:
        """Per eval example of ``part``, the items never to recommend (None: no masking)."""
        if not self.mask_history:
            return None
        examples = self.valid_examples if part == "valid" else self.test_examples
        return [self.ctx.split.seen_items(ex, part) for ex in examples]

    def eval_dataloader(self, part: str) -> DataLoader:
        examples = self.valid_examples if part == "valid" else self.test_examples
        samples = self.eval_task.eval_samples(self.ctx, examples)
        exclude = self.excluded_items(part) or [[] for _ in samples]
        encoded = [
            (self.formatter.prompt_ids(s.prompt), s.target_item, banned)
            for s, banned in zip(samples, exclude)
        ]
        # Similar lengths together: less padding in each batched beam search.
        encoded.sort(key=lambda row: len(row[0]))
        return DataLoader(
            encoded, batch_size=self.eval_batch_size, shuffle=False, collate_fn=self._collate_eval
        )

    def _collate_eval(self, encoded: list[tuple[list[int], int, list[int]]]) -> dict:
        batch = self.formatter.collate_prompts([ids for ids, _, _ in encoded])
        batch["targets"] = torch.tensor([target for _, target, _ in encoded], dtype=torch.long)
        if self.mask_history:
            width = max(1, max(len(banned) for _, _, banned in encoded))
            exclude = torch.full((len(encoded), width), -1, dtype=torch.long)
            for row, (_, _, banned) in enumerate(encoded):
                exclude[row, : len(banned)] = torch.tensor(banned, dtype=torch.long)
            batch["exclude"] = exclude
        return batch

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("valid")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")
