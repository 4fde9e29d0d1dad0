"""Semantic Convergence's negative-behaviour task: "what will the user hate next?".

The paper (section "Alignment Task") adds, next to sequential alignment, prompts that ask
for an item the user is unlikely to interact with, answered by a randomly sampled item the
user never interacted with ("for scenarios without negative samples"). ``ratio`` is the
number of negatives per positive, Table 4's ``1:ratio`` (1:3 is the paper's choice; 1:4 was
marginally better on Games). For every training example the task draws ``ratio`` items,
uniformly, among the items absent from the user's training sequence (history and every
training target), resampled each epoch. Valid and test targets are never read.
"""

from __future__ import annotations

import random
from typing import Any

from semrec.data.split import Split, sequences_from_examples
from semrec.tasks.base import TASKS, Sample, Task, TaskContext


def train_items_by_user(split: Split) -> list[frozenset[int]]:
    """Per user, every item of their training sequence."""
    return [
        frozenset(int(i) for i in sequence)
        for sequence in sequences_from_examples(split.train, split.num_users)
    ]


def sample_negatives(
    known: frozenset[int], num_items: int, count: int, rng: random.Random
) -> list[int]:
    """``count`` distinct items outside ``known``, uniformly (fewer if not enough exist)."""
    free = num_items - len(known)
    count = min(count, free)
    if count <= 0:
        return []
    if free < 4 * count + 16:  # dense: enumerate the free items
        return rng.sample([i for i in range(num_items) if i not in known], count)
    picked: list[int] = []
    while len(picked) < count:
        item = rng.randrange(num_items)
        if item not in known and item not in picked:
            picked.append(item)
    return picked


@TASKS.register("negative")
class NegativeBehaviorTask(Task):
    """For each training example, ``ratio`` prompts "what will the user hate next?" whose
    responses are items the user never interacted with in training (see the module docs)."""

    name = "negative"
    templates = (
        "Here is the item interaction history of the user: {history}, what will user hate next?",
        "The user has interacted with these items in chronological order: {history}. Which "
        "item would the user dislike next?",
        "Given the user's interaction history, oldest first: {history}. Name an item the user "
        "will not want.",
        "A user's past items, in the order they were chosen: {history}. Recommend an item "
        "this user would avoid.",
    )

    def __init__(
        self,
        *,
        ratio: int = 3,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        if isinstance(ratio, bool) or not isinstance(ratio, int) or ratio < 0:
            raise ValueError(f"task 'negative': ratio must be an int >= 0, got {ratio!r}")
        self.ratio = ratio
        self._known: tuple[int, list[frozenset[int]]] | None = None

    def _known_items(self, split: Split) -> list[frozenset[int]]:
        if self._known is None or self._known[0] != id(split):
            self._known = (id(split), train_items_by_user(split))
        return self._known[1]

    def train_samples(self, ctx: TaskContext, rng: random.Random) -> list[Sample]:
        if self.ratio == 0:
            return []
        known = self._known_items(ctx.split)
        samples = []
        for ex in self.epoch_subset(ctx.split.train, rng):
            for item in sample_negatives(known[ex.user], ctx.split.num_items, self.ratio, rng):
                template = rng.randrange(len(self.templates))
                prompt = self.templates[template].format(history=ctx.history_text(ex.history))
                samples.append(Sample(self.name, prompt, ctx.sids[item], item, ex.user))
        return samples

    def notes(self) -> list[str]:
        return [f"negative: {self.ratio} sampled non-interacted items per training example"]
