"""Semantic Convergence's query alignment: a user's review, as a query, -> the reviewed item.

The paper's template: "You meet a user's query: {query}. Please respond to this user by
selecting an appropriate item", answered by the SID of the item the review is about.
semrec's datasets keep a user's reviews as a list (``dataset.user_text``) without the item
each one is about, so this task pairs them with items only when the list is as long as the
user's interaction sequence: review ``k`` is then taken to be about the ``k``-th interaction
in time order (how per-interaction review files are exported). Only training interactions
are used, so no valid or test target reaches training. A dataset without reviews (ml-100k)
is refused with an error naming ``user_text``; reviews that cannot be aligned are refused
too, with the first such user.
"""

from __future__ import annotations

import random
from typing import Any

from semrec.tasks.base import TASKS, Sample, Task, TaskContext, TaskDataError


@TASKS.register("query")
class QueryAlignmentTask(Task):
    """One pair per training interaction with a review: review text -> that item's SID."""

    name = "query"
    requires = ("user_text",)
    templates = (
        "You meet a user's query: {query}. Please respond to this user by selecting an "
        "appropriate item",
        "A user writes: {query}. Which item does this user mean?",
        "Here is what a user says about an item: {query}. Which item is it?",
    )

    def __init__(
        self,
        *,
        max_chars: int = 500,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        if max_chars < 1:
            raise ValueError(f"task 'query': max_chars must be >= 1, got {max_chars}")
        self.max_chars = max_chars

    def pairs(self, ctx: TaskContext) -> list[tuple[str, int, int]]:
        """(review, item, user) for every training interaction whose review is known."""
        self.check(ctx)
        sequences = ctx.dataset.sequences()
        return [
            (" ".join(review.split())[: self.max_chars], int(sequences[user][k]), user)
            for user, k, review in training_reviews(ctx, self.name)
        ]

    def train_samples(self, ctx: TaskContext, rng: random.Random) -> list[Sample]:
        samples = []
        for query, item, user in self.epoch_subset(self.pairs(ctx), rng):
            template = self.templates[rng.randrange(len(self.templates))]
            prompt = template.format(query=query)
            samples.append(Sample(self.name, prompt, ctx.sids[item], item, user))
        return samples


def training_reviews(ctx: TaskContext, task: str):
    """(user, position, review) of every training interaction with a non-empty review.

    ``position`` indexes the user's chronological sequence (``dataset.sequences()``); a
    user's reviews must be one per interaction, in time order (else :class:`TaskDataError`
    naming the first such user). Leave-one-out's last two interactions are left out.
    """
    dataset = ctx.dataset
    sequences = dataset.sequences()
    for user, reviews in enumerate(dataset.user_text or []):
        if not reviews:
            continue
        if len(reviews) != len(sequences[user]):
            raise TaskDataError(
                f"task {task!r}: user {dataset.user_ids[user]!r} has {len(reviews)} reviews "
                f"but {len(sequences[user])} interactions in {dataset.source or dataset.name}, "
                "so the reviews cannot be matched to the items they are about (needs one "
                "review per interaction, in time order)"
            )
        held_out = 2  # leave-one-out holds out the last two interactions (valid, test)
        for k, review in enumerate(reviews[:-held_out]):
            if review.strip():
                yield user, k, review
