"""The prompts post-training learns from: training prefixes, as evaluation prompts.

:class:`PostTrainingPrompts` is a :class:`~semrec.prompts.datamodule.TrainingData` source,
so the ordinary :class:`~semrec.prompts.datamodule.GenRecDataModule` batches it (shuffled,
length-bucketed, sharded over processes, resumable mid-epoch) and still serves the
validation and test prompts of the SFT source it wraps.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from semrec.data.split import Example
from semrec.prompts.datamodule import TrainingData, padded


class PostTrainingPrompts:
    """Each epoch, ``per_epoch`` training examples (all when None) as left-padded prompts.

    A batch holds ``input_ids``/``attention_mask`` (the prompt that asks for the next
    item, the same text evaluation uses), ``targets``, ``histories`` (the items in the
    prompt, ``-1`` padded: what a collaborative reward model reads) and, with
    ``mask_history``, ``exclude`` (the same items, never rolled out, as evaluation does).
    The sample of an epoch is drawn from ``seed`` and the epoch.
    """

    def __init__(
        self,
        source: TrainingData,
        examples: Sequence[Example],
        *,
        per_epoch: int | None,
        seed: int,
        mask_history: bool,
    ) -> None:
        if not examples:
            raise ValueError("post-training needs training examples, and the split has none")
        self.source = source
        self.examples = list(examples)
        self.per_epoch = per_epoch
        self.seed = seed
        self.mask_history = mask_history

    def epoch_items(self, epoch: int) -> list[Example]:
        if self.per_epoch is None or self.per_epoch >= len(self.examples):
            return self.examples
        rng = random.Random(self.seed * 1_000_003 + epoch)
        picked = sorted(rng.sample(range(len(self.examples)), self.per_epoch))
        return [self.examples[i] for i in picked]

    def length(self, item: Example) -> int:
        return len(item.history)

    def examples_per_epoch(self, epoch: int) -> int:
        return len(self.epoch_items(epoch))

    def collate(self, items: list[Example]) -> dict[str, torch.Tensor]:
        batch = self.source.collate_prompts(self.source.eval_prompts(items))
        batch["targets"] = torch.tensor([ex.target for ex in items], dtype=torch.long)
        batch["histories"] = padded([ex.history for ex in items])
        batch["examples"] = torch.tensor(len(items))
        batch["tokens"] = batch["attention_mask"].sum()
        if self.mask_history:
            batch["exclude"] = batch["histories"].clone()
        return batch

    def eval_prompts(self, examples: list[Example]) -> list[list[int]]:
        return self.source.eval_prompts(examples)

    def collate_prompts(self, prompts: list[list[int]]) -> dict[str, torch.Tensor]:
        return self.source.collate_prompts(prompts)

    def eval_candidates(self, examples: list[Example]) -> list[list[int]] | None:
        return self.source.eval_candidates(examples)
