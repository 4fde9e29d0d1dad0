"""TTDS's high-order user-item tasks (section 4.2.4): next-user prediction and comment deduction.

- ``next_user``: an item and the users who interacted with it, in time order -> the next
  user's SID, the counterpart of next-item prediction (TTDS's user co-purchase pattern).
  Only training interactions form the audiences. :func:`next_user_eval_samples` builds the
  held-out version: a test example's target item with its training audience -> the test
  user, decoded under the user trie (:mod:`semrec.evaluation.next_user`).
- ``comment``: a user's history up to an item -> the user's review of it (TTDS's comment /
  query deduction). A dataset without reviews (ml-100k) is refused naming ``user_text``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from semrec.data.split import Example
from semrec.tasks.base import TASKS, Sample, Task, TaskContext, TaskDataError
from semrec.tasks.query import training_reviews


def item_audiences(ctx: TaskContext) -> list[list[int]]:
    """Per item, the users of its training interactions ordered by (timestamp, file order)."""
    dataset, split = ctx.dataset, ctx.split
    order = dataset.chronological_order()  # by user, then time
    counts = np.bincount(dataset.users, minlength=dataset.num_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    train = np.zeros(len(order), dtype=bool)
    for user, sequence in enumerate(split.train_sequences):
        train[order[starts[user] : starts[user] + len(sequence)]] = True
    positions = np.flatnonzero(train)
    positions = positions[np.lexsort((positions, dataset.timestamps[positions]))]
    audiences: list[list[int]] = [[] for _ in range(dataset.num_items)]
    for position in positions.tolist():
        audiences[int(dataset.items[position])].append(int(dataset.users[position]))
    return audiences


@TASKS.register("next_user")
class NextUserTask(Task):
    """One pair per (item, k): the item and its first k training users -> user k+1.

    ``max_users`` caps the users shown (the most recent ones). Pairs are not about one user
    in the prompt's sense, so ``user_sid_in_prompt`` is refused (it would show the answer).
    """

    name = "next_user"
    requires = ("user_sids",)
    templates = (
        "You are a recommendation expert. The item {item} has been clicked by the following "
        "users: {users}. Can you predict another user who is interested in this item?",
        "These users interacted with {item}, in this order: {users}. Which user will "
        "interact with it next?",
        "Item {item} was chosen by {users}. Who is the next user to choose it?",
    )

    def __init__(self, *, max_users: int = 10, **common: Any) -> None:
        super().__init__(**common)
        if max_users < 1:
            raise ValueError(f"task 'next_user': max_users must be >= 1, got {max_users}")
        if self.user_sid_in_prompt:
            raise ValueError(
                "task 'next_user': user_sid_in_prompt would put the answer (the next user) "
                "into the prompt"
            )
        self.max_users = max_users

    def prompt(self, ctx: TaskContext, item: int, users: list[int], template: int = 0) -> str:
        assert ctx.user_sids is not None
        shown = ", ".join(ctx.user_sids[u] for u in users[-self.max_users :])
        return self.templates[template].format(item=ctx.sids[item], users=shown)

    def train_samples(self, ctx: TaskContext, rng: random.Random) -> list[Sample]:
        self.check(ctx)
        audiences = item_audiences(ctx)
        pool = [(item, k) for item, users in enumerate(audiences) for k in range(1, len(users))]
        samples = []
        for item, k in self.epoch_subset(pool, rng):
            users = audiences[item]
            prompt = self.prompt(ctx, item, users[:k], rng.randrange(len(self.templates)))
            samples.append(Sample(self.name, prompt, ctx.user_sids[users[k]]))
        return samples


def next_user_eval_samples(
    task: NextUserTask, ctx: TaskContext, examples: list[Example]
) -> tuple[list[Sample], list[int]]:
    """Prompts (template 0) for held-out interactions and the users to predict.

    Each example's target item with its training audience -> the example's user. Examples
    whose item has no training users are left out.
    """
    task.check(ctx)
    audiences = item_audiences(ctx)
    samples, targets = [], []
    for example in examples:
        users = audiences[example.target]
        if users:
            samples.append(Sample(task.name, task.prompt(ctx, example.target, users), ""))
            targets.append(example.user)
    return samples, targets


@TASKS.register("comment")
class CommentTask(Task):
    """One pair per reviewed training interaction: the history up to that item -> the review."""

    name = "comment"
    requires = ("user_text",)
    templates = (
        "Here are the user's historical interactions: {history}. Deduce the comment the user "
        "wrote about the last one.",
        "A user interacted with {history}. What did the user say about the last item?",
        "Given the history {history}, write the user's review of its last item.",
    )

    def __init__(self, *, max_history: int = 20, max_chars: int = 300, **common: Any) -> None:
        super().__init__(**common)
        if max_history < 1 or max_chars < 1:
            raise ValueError(
                f"task 'comment': max_history and max_chars must be >= 1, got "
                f"{max_history}, {max_chars}"
            )
        self.max_history = max_history
        self.max_chars = max_chars

    def train_samples(self, ctx: TaskContext, rng: random.Random) -> list[Sample]:
        self.check(ctx)
        sequences = ctx.dataset.sequences()
        pool = list(training_reviews(ctx, self.name))
        if not pool:
            raise TaskDataError(
                f"task 'comment': dataset {ctx.dataset.name!r} has no non-empty review "
                "(user_text) in its training interactions"
            )
        samples = []
        for user, k, review in self.epoch_subset(pool, rng):
            history = sequences[user][max(0, k + 1 - self.max_history) : k + 1].tolist()
            template = self.templates[rng.randrange(len(self.templates))]
            prompt = template.format(history=ctx.history_text(tuple(history)))
            response = " ".join(review.split())[: self.max_chars]
            samples.append(Sample(self.name, prompt, response, user=user))
        return samples
