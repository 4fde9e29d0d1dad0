"""Instruction pairs rendered from tasks: the training source of the text prompt formats.

Each epoch draws a fresh mixture of the configured tasks (new template per example, LC-Rec
section III-D), renders it through the :class:`~semrec.prompts.batching.PromptEncoder` passed in
(the model's prompt formatter) and tokenizes it once; valid/test prompts come from the evaluation task's template 0.

With ``placeholders`` (a run whose tokenizer trains with the LLM) the texts name items and
users by placeholder, and each batch is tokenized as its training step begins
(:meth:`TaskPairs.encode_pending`), with the SIDs of that step; training batches then also
carry ``sid_items`` / ``sid_users``, the rows they mention. Eval prompts are tokenized when
collated (codes do not change during evaluation).

With ``pack_tokens`` an epoch's pairs are packed into sequences of at most that many tokens
(:mod:`semrec.prompts.packing`: each pair attends only to itself and keeps its positions),
and a batch holds ``batch_size`` packs.
"""

from __future__ import annotations

import random

import torch

from semrec.data.split import Example
from semrec.prompts.batching import PromptEncoder
from semrec.prompts.datamodule import padded
from semrec.prompts.packing import pack_indices
from semrec.prompts.sid_placeholders import ResolvingEncoder, SIDPlaceholders
from semrec.tasks.base import RecommendationTask, Sample, Task, TaskContext, build_mixture


class TaskPairs:
    """A :class:`~semrec.prompts.datamodule.TrainingData` source of (prompt, response) pairs.

    ``max_train_samples`` keeps the first that many pairs of each (shuffled) epoch;
    ``pack_tokens`` packs them into training sequences of at most that many tokens.
    """

    def __init__(
        self,
        ctx: TaskContext,
        tasks: list[tuple[Task, float]],
        eval_task: RecommendationTask,
        formatter: PromptEncoder,
        *,
        max_train_samples: int | None = None,
        seed: int = 0,
        placeholders: SIDPlaceholders | None = None,
        pack_tokens: int | None = None,
    ) -> None:
        if pack_tokens is not None and placeholders is not None:
            raise ValueError(
                "packing needs pairs tokenized once per epoch; pairs with SID placeholders "
                "(a tokenizer trained with the LLM) are tokenized per step"
            )
        self.pack_tokens = pack_tokens
        self.ctx = ctx
        self.tasks = tasks
        self.eval_task = eval_task
        self.placeholders = placeholders
        self._plain = formatter
        self.formatter = (
            formatter if placeholders is None else ResolvingEncoder(formatter, placeholders)
        )
        self.max_train_samples = max_train_samples
        self.seed = seed
        self._epoch: tuple[int, list[Sample], list] | None = None
        for task, _ in tasks:
            task.check(ctx)

    def _build(self, epoch: int) -> tuple[list[Sample], list]:
        if self._epoch is None or self._epoch[0] != epoch:
            rng = random.Random(self.seed * 1_000_003 + epoch)
            samples = build_mixture(self.tasks, self.ctx, rng)
            if self.max_train_samples is not None:
                samples = samples[: self.max_train_samples]
            if self.placeholders is None:
                encoded = [self.formatter.encode_pair(s.prompt, s.response) for s in samples]
            else:
                # tokenized when batched; these lengths only bucket the batches
                fixed = self.placeholders.stand_in
                encoded = [
                    (s, len(self._plain.encode_pair(fixed(s.prompt), fixed(s.response))[0]))
                    for s in samples
                ]
            if self.pack_tokens is not None:
                groups = pack_indices([len(ids) for ids, _ in encoded], self.pack_tokens)
                encoded = [tuple(encoded[i] for i in group) for group in groups]
            self._epoch = (epoch, samples, encoded)
        return self._epoch[1], self._epoch[2]

    def epoch_samples(self, epoch: int) -> list[Sample]:
        """The (text) training pairs of one epoch, deterministic in (seed, epoch)."""
        return self._build(epoch)[0]

    def epoch_items(self, epoch: int) -> list:
        """The epoch's pairs as (input_ids, labels), tokenized once per epoch; with
        ``pack_tokens``, tuples of such pairs (packs); with placeholders, (sample, token
        count) pairs tokenized when batched."""
        return self._build(epoch)[1]

    def length(self, item) -> int:
        if self.placeholders is not None:
            return item[1]
        if self.pack_tokens is not None:
            return sum(len(ids) for ids, _ in item)
        return len(item[0])

    def examples_per_epoch(self, epoch: int) -> int:
        return len(self.epoch_samples(epoch))

    def collate(self, items: list) -> dict:
        """A training batch; with placeholders, ``{"pending": samples}`` for
        :meth:`encode_pending` (the model calls it as the batch's step begins: a data loader
        collates batches ahead of time, before the codes of their step are known)."""
        if self.placeholders is not None:
            return {"pending": [sample for sample, _ in items]}
        return self._batch(items)

    def encode_pending(self, batch: dict) -> dict[str, torch.Tensor]:
        """Tokenize a pending batch with the current SIDs; add the rows it mentions."""
        samples = batch["pending"]
        assert self.placeholders is not None
        mentioned = self.placeholders.mentioned([s.prompt + s.response for s in samples])
        out = self._batch([self.formatter.encode_pair(s.prompt, s.response) for s in samples])
        for name, rows in mentioned.items():
            out[f"sid_{name}"] = padded([rows])[0]
        return out

    def _batch(self, items: list) -> dict[str, torch.Tensor]:
        if self.pack_tokens is not None:
            batch = self.formatter.collate_packs(items)
            pairs = [pair for pack in items for pair in pack]
        else:
            batch = self.formatter.collate_pairs(items)
            pairs = items
        batch["examples"] = torch.tensor(len(pairs))
        batch["tokens"] = torch.tensor(sum(len(ids) for ids, _ in pairs))
        return batch

    def eval_prompts(self, examples: list[Example]) -> list:
        """Prompt token ids; with placeholders, prompt texts tokenized when batched."""
        samples = self.eval_task.eval_samples(self.ctx, examples)
        if self.placeholders is not None:
            return [s.prompt for s in samples]
        return [self.formatter.prompt_ids(s.prompt) for s in samples]

    def collate_prompts(self, prompts: list) -> dict[str, torch.Tensor]:
        if prompts and isinstance(prompts[0], str):
            prompts = [self.formatter.prompt_ids(prompt) for prompt in prompts]
        return self.formatter.collate_prompts(prompts)

    def eval_candidates(self, examples: list[Example]) -> list[list[int]] | None:
        """Per eval example, the candidates the model ranks (letter order); None: all items."""
        candidates = getattr(self.eval_task, "eval_candidates", None)
        return None if candidates is None else candidates(self.ctx, examples)
