"""The Lightning DataModule: batches of a training source, and prompts for valid/test users.

What the model trains on comes from a :class:`TrainingData` source passed in:
:class:`~semrec.prompts.task_pairs.TaskPairs` (instruction pairs rendered from tasks, the
text formats) or :class:`~semrec.prompts.compact.CompactSequences` (bare SID tokens). The
module shuffles each epoch's items and, with ``bucket_by_length``, groups items of similar
length into batches (less padding); every item is in exactly one batch per epoch.

Under a multi-process strategy (DDP, FSDP, DeepSpeed) each process takes its share of
every global batch and of the evaluation users itself (the Trainer runs with
``use_distributed_sampler=False``): every training item is still seen once per epoch
overall, and every evaluation user once, with no padding duplicates to skew the metrics.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from semrec.data.split import Example, Split
from semrec.distributed import shard, shard_batches


class TrainingData(Protocol):
    """A source of training items and evaluation prompts for :class:`GenRecDataModule`."""

    def epoch_items(self, epoch: int) -> Sequence[Any]:
        """The training items of ``epoch`` (deterministic in the epoch)."""

    def length(self, item: Any) -> int:
        """Tokens in ``item`` (for length bucketing)."""

    def examples_per_epoch(self, epoch: int) -> int:
        """Training examples (prefixes or pairs) in ``epoch``."""

    def collate(self, items: list[Any]) -> dict[str, torch.Tensor]:
        """A training batch: ``input_ids``, ``labels`` and attention inputs."""

    def eval_prompts(self, examples: list[Example]) -> list[list[int]]:
        """Prompt token ids for evaluation examples (predict their targets)."""

    def collate_prompts(self, prompts: list[list[int]]) -> dict[str, torch.Tensor]:
        """Left-padded ``input_ids`` and ``attention_mask`` of prompts."""

    def eval_candidates(self, examples: list[Example]) -> list[list[int]] | None:
        """Per eval example, the candidates to rank (None: the whole catalogue)."""


def subsample_examples(examples: list[Example], limit: int | None, seed: int) -> list[Example]:
    """A deterministic random subset of at most ``limit`` examples (all when ``limit`` is None)."""
    if limit is None or limit >= len(examples):
        return examples
    picked = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in picked]


def epoch_batches(
    lengths: Sequence[int],
    batch_size: int,
    seed: int,
    *,
    bucket_by_length: bool = True,
    batches_per_bucket: int = 50,
) -> list[list[int]]:
    """One epoch's batches of item indices: shuffled, each index in exactly one batch.

    With ``bucket_by_length`` the shuffled items are cut into groups of
    ``batch_size * batches_per_bucket``, each group is sorted by length and cut into
    batches, and the batches are shuffled: batches hold items of similar length (little
    padding) while the epoch stays random.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if not bucket_by_length:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    group = batch_size * batches_per_bucket
    batches = []
    for start in range(0, len(order), group):
        bucket = sorted(order[start : start + group], key=lengths.__getitem__)
        batches.extend(bucket[i : i + batch_size] for i in range(0, len(bucket), batch_size))
    rng.shuffle(batches)
    return batches


class ResumableBatchSampler(Sampler[list[int]]):
    """Fixed batches of one epoch that can start mid-epoch: the data position of a resumed run.

    ``batches_done`` (a callable: the number of batches the trainer has finished this
    epoch) is what :meth:`state_dict` stores; after :meth:`load_state_dict` the next
    iteration skips that many batches without loading them. ``len`` stays the whole epoch's.
    """

    def __init__(self, batches: list[list[int]], batches_done: Callable[[], int]) -> None:
        self.batches = batches
        self.batches_done = batches_done
        self.skip = 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.skip = self.skip, 0
        return itertools.islice(iter(self.batches), skip, None)


class ResumableDataLoader(DataLoader):
    """A DataLoader Lightning saves and restores mid-epoch (the ``state_dict`` protocol)."""

    batch_sampler: ResumableBatchSampler

    def state_dict(self) -> dict[str, int]:
        return {"batches_done": int(self.batch_sampler.batches_done())}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.skip = int(state["batches_done"])


class GenRecDataModule(L.LightningDataModule):
    """Training batches from a :class:`TrainingData` source, eval prompts for valid/test users.

    Training batches are dicts with ``input_ids``, ``attention_mask`` and ``labels`` (loss on
    the response only); eval batches hold left-padded prompts plus ``targets`` (item ids).
    Lightning must reload the train dataloader every epoch
    (``reload_dataloaders_every_n_epochs=1``): each epoch has its own items (task template
    draws) and batch order. The train loader resumes mid-epoch from a Lightning checkpoint
    (:class:`ResumableDataLoader`). With ``mask_history`` eval batches also hold
    ``exclude``: each user's earlier items; with a candidate-ranking eval task,
    ``candidates``: each user's candidates in the prompt's letter order.
    """

    def __init__(
        self,
        training: TrainingData,
        split: Split,
        *,
        batch_size: int = 8,
        eval_batch_size: int = 16,
        max_valid_users: int | None = None,
        max_test_users: int | None = None,
        mask_history: bool = False,
        bucket_by_length: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.training = training
        self.split = split
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.mask_history = mask_history
        self.bucket_by_length = bucket_by_length
        self.valid_examples = subsample_examples(split.valid, max_valid_users, seed)
        self.test_examples = subsample_examples(split.test, max_test_users, seed + 1)

    def process_rank(self) -> tuple[int, int]:
        """(global rank, number of processes) of the attached Trainer; (0, 1) without one."""
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This process's batches (indices into ``training.epoch_items(epoch)``) of one epoch.

        The epoch is cut into global batches of ``batch_size`` items per process, and each
        process takes its part of every one (:func:`~semrec.distributed.shard_batches`).
        """
        items = self.training.epoch_items(epoch)
        rank, world = self.process_rank()
        batches = epoch_batches(
            [self.training.length(item) for item in items],
            self.batch_size * world,
            self.seed * 1_000_003 + epoch,
            bucket_by_length=self.bucket_by_length,
        )
        return shard_batches(batches, rank, world)

    def train_dataloader(self) -> DataLoader:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        items = self.training.epoch_items(epoch)
        sampler = ResumableBatchSampler(self.epoch_batches(epoch), self._batches_done)
        return ResumableDataLoader(
            items,
            batch_sampler=sampler,
            collate_fn=self.training.collate,
            # its own generator: creating the iterator must not draw from the global RNG,
            # or a resumed run's dropout masks would differ from an uninterrupted run's
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _batches_done(self) -> int:
        """Training batches finished in the current epoch (what a checkpoint must skip)."""
        if self.trainer is None:
            return 0
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def excluded_items(self, part: str) -> list[list[int]] | None:
        """Per eval example of ``part``, the items never to recommend (None: no masking)."""
        if not self.mask_history:
            return None
        examples = self.valid_examples if part == "valid" else self.test_examples
        return [self.split.seen_items(ex, part) for ex in examples]

    def eval_dataloader(self, part: str) -> DataLoader:
        examples = self.valid_examples if part == "valid" else self.test_examples
        prompts = self.training.eval_prompts(examples)
        exclude = self.excluded_items(part) or [[] for _ in examples]
        candidates = self.training.eval_candidates(examples)
        encoded = [
            (ids, ex.target, banned, None if candidates is None else candidates[row], row)
            for row, (ids, ex, banned) in enumerate(zip(prompts, examples, exclude))
        ]
        # Similar lengths together: less padding in each batched beam search; each process
        # takes every world-th prompt (``rows`` keep their place in the whole list)
        encoded.sort(key=lambda row: len(row[0]))
        rank, world = self.process_rank()
        if len(encoded) < world:
            raise ValueError(
                f"{len(encoded)} {part} users cannot give each of {world} processes one; "
                "evaluate on fewer devices or more users (eval.max_valid_users/max_test_users)"
            )
        encoded = shard(encoded, rank, world)
        return DataLoader(
            encoded, batch_size=self.eval_batch_size, shuffle=False, collate_fn=self._collate_eval
        )

    def _collate_eval(self, encoded: list[tuple[list[int], int, list[int], Any, int]]) -> dict:
        batch = self.training.collate_prompts([row[0] for row in encoded])
        batch["targets"] = torch.tensor([row[1] for row in encoded], dtype=torch.long)
        # each prompt's position in the examples list (batches are sorted by length)
        batch["rows"] = torch.tensor([row[4] for row in encoded], dtype=torch.long)
        if self.mask_history:
            batch["exclude"] = padded([row[2] for row in encoded])
        if encoded[0][3] is not None:
            batch["candidates"] = padded([row[3] for row in encoded])
        return batch

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("valid")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")


def padded(rows: Sequence[Sequence[int]]) -> torch.Tensor:
    """Item-id lists as LongTensor [len(rows), longest (>= 1)], ``-1`` padded."""
    out = torch.full((len(rows), max(1, max(map(len, rows)))), -1, dtype=torch.long)
    for row, items in enumerate(rows):
        out[row, : len(items)] = torch.tensor(list(items), dtype=torch.long)
    return out
