"""LC-Rec's asymmetric item prediction (ASY, section III-C3a).

The condition and the target use different item representations, which makes the task
harder than SEQ and ties SIDs to language:

- ``asy_title``: SID history -> the target's title;
- ``asy_description``: SID history -> the target's description ("features the user
  expects"); ``field`` picks another item field for datasets without descriptions;
- ``asy_title_history``: history as titles -> the target's SID (a recommendation task).

All three use the split's training examples, like SEQ.
"""

from __future__ import annotations

import random
from typing import Any

from semrec.data.split import Example
from semrec.tasks.base import TASKS, RecommendationTask, Sample, Task, TaskContext
from semrec.tasks.item_fields import field_text, report_skipped, require_any_field


class HistoryToTextTask(Task):
    """SID history -> one text field of the target item; targets lacking it are skipped.

    ``skipped`` holds how many training examples the last epoch left out for that reason.
    """

    field: str
    requires = ("item_text",)
    skipped = 0

    def check(self, ctx: TaskContext) -> None:
        super().check(ctx)
        require_any_field(self.name, ctx.dataset, (self.field,))

    def train_samples(self, ctx: TaskContext, rng: random.Random) -> list[Sample]:
        examples = [ex for ex in ctx.split.train if field_text(ctx.dataset, ex.target, self.field)]
        self.skipped = len(ctx.split.train) - len(examples)
        report_skipped(
            self.name, self.skipped, len(ctx.split.train), f"targets without {self.field!r}"
        )
        samples = []
        for ex in self.epoch_subset(examples, rng):
            template = self.templates[rng.randrange(len(self.templates))]
            prompt = template.format(history=ctx.history_text(ex.history))
            response = field_text(ctx.dataset, ex.target, self.field)
            samples.append(Sample(self.name, prompt, response, user=ex.user))
        return samples


@TASKS.register("asy_title")
class HistoryToTitleTask(HistoryToTextTask):
    """Predict the title of the user's next item from their SID history."""

    name = "asy_title"
    field = "title"
    templates = (
        "Based on the user's historical interactions: {history}, try to predict the title of "
        "the item that the user may need next.",
        "The user interacted with these items in chronological order: {history}. What is the "
        "title of the item they will choose next?",
        "Given this interaction history, oldest first: {history}, name the next item the user "
        "is likely to want.",
        "Here is a user's item history: {history}. Write the title of the item they should be "
        "recommended next.",
    )


@TASKS.register("asy_description")
class HistoryToDescriptionTask(HistoryToTextTask):
    """Describe the item the user expects next (its ``description``) from their SID history.

    ``field`` names another item field to predict instead (e.g. ``categories`` on ml-100k,
    which has no descriptions).
    """

    name = "asy_description"
    field = "description"
    templates = (
        "Here is the item interaction history of the user: {history}. Please tell me what "
        "features they expect from their next item.",
        "A user has interacted with these items, in order: {history}. Describe the item they "
        "are likely to look for next.",
        "From the history {history}, infer what the user's next item should be like.",
        "The user's past items are {history}. What characteristics would their next item have?",
    )

    def __init__(
        self,
        *,
        field: str = "description",
        **common: Any,
    ) -> None:
        super().__init__(**common)
        self.field = field


def title_history(ctx: TaskContext, history: tuple[int, ...]) -> str:
    """Quoted titles in order; an item without a title appears as its SID."""
    parts = []
    for item in history:
        title = field_text(ctx.dataset, item, "title")
        parts.append(f'"{title}"' if title else ctx.sids[item])
    return ", ".join(parts)


@TASKS.register("asy_title_history")
class TitleHistoryTask(RecommendationTask):
    """Predict the next item's SID from the history written as titles (SID if untitled)."""

    name = "asy_title_history"
    requires = ("item_text",)
    templates = (
        "Given the title sequence of user historical interactive items: {titles}, can you "
        "recommend a suitable next item for the user?",
        "A user interacted with items titled {titles}, in this order. Which item should come next?",
        "Here are the titles of the items a user chose, oldest first: {titles}. Recommend the "
        "item they will pick next.",
        "Titles of the user's past items: {titles}. What is the next item for this user?",
    )

    def check(self, ctx: TaskContext) -> None:
        super().check(ctx)
        require_any_field(self.name, ctx.dataset, ("title",))

    def prompt(self, ctx: TaskContext, example: Example, template: int = 0) -> str:
        return self.templates[template].format(titles=title_history(ctx, example.history))

    def train_samples(self, ctx: TaskContext, rng: random.Random) -> list[Sample]:
        samples = []
        for ex in self.epoch_subset(ctx.split.train, rng):
            prompt = self.prompt(ctx, ex, rng.randrange(len(self.templates)))
            samples.append(Sample(self.name, prompt, ctx.sids[ex.target], ex.target, ex.user))
        return samples
