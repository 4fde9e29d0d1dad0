"""LC-Rec's intention and preference tasks (ITE and PER, section III-C3b and III-C3c).

- ``ite_intention``: the user's intention for the target item -> its SID (a search-like query);
- ``ite_history_intention``: SID history + that intention -> the target's SID;
- ``per_preference``: SID history -> the user's preferences in words.

Intentions and preferences are generated texts, read from ``TaskContext.annotations`` (see
its docstring for the keys); ``semrec annotate --kind intention|preference`` makes them. For
datasets without reviews (such as ml-100k), ``intention_source="item_text"`` derives the
intention from the target item's year, categories and description instead, never its title.
"""

from __future__ import annotations

import random
import re
from typing import Any, Literal

from semrec.data.dataset import RecDataset
from semrec.data.split import Example
from semrec.tasks.base import TASKS, RecommendationTask, Sample, Task, TaskContext, TaskDataError
from semrec.tasks.item_fields import field_text, report_skipped, require_any_field

IntentionSource = Literal["annotations", "item_text"]
DERIVED_INTENTION_FIELDS = ("year", "categories", "description")
DERIVED_DESCRIPTION_WORDS = 30


def annotation_table(ctx: TaskContext, task: str, kind: str, hint: str = "") -> dict[str, str]:
    """``ctx.annotations[kind]``, or a :class:`TaskDataError` saying which command makes it."""
    table = (ctx.annotations or {}).get(kind)
    if not table:
        raise TaskDataError(
            f"task {task!r} needs {kind} annotations (annotations[{kind!r}]), which are missing "
            f"for dataset {ctx.dataset.name!r}; make them with `semrec annotate --config "
            f"<your config>.yaml --kind {kind}`{hint}"
        )
    return table


def unmatched_annotations_error(
    task: str, kind: str, table: dict[str, str], expected_key: str
) -> TaskDataError:
    """The error for annotations whose keys match none of the dataset's ids."""
    found = next(iter(table))
    return TaskDataError(
        f"task {task!r}: none of the {len(table)} {kind} annotations matches this dataset's "
        f"training data (keys look like {found!r}, expected keys like {expected_key!r}); were "
        "they made for another dataset or split?"
    )


def intention_key(ds: RecDataset, user: int, item: int) -> str:
    """The annotation key of ``user``'s intention for ``item``: ``"<user id>:<item id>"``."""
    return f"{ds.user_ids[user]}:{ds.item_ids[item]}"


def derived_intention(ds: RecDataset, item: int) -> str:
    """An intention made from an item's year, categories and description, without its title.

    E.g. ``"I am looking for an item from 1995 in the categories Action, Thriller."``. The
    description is cut to its first ``DERIVED_DESCRIPTION_WORDS`` words, and occurrences of
    the title in it become "this item". ``""`` when the item has none of these fields.
    """
    year, categories, description = (field_text(ds, item, f) for f in DERIVED_INTENTION_FIELDS)
    title = field_text(ds, item, "title")
    if title and description:
        pattern = r"(?<!\w)" + re.escape(title) + r"(?!\w)"
        description = re.sub(pattern, "this item", description, flags=re.IGNORECASE)
    words = description.split()
    if len(words) > DERIVED_DESCRIPTION_WORDS:
        description = " ".join(words[:DERIVED_DESCRIPTION_WORDS]) + " ..."
    parts = []
    if year:
        parts.append(f"from {year}")
    if categories:
        parts.append(f"in the categories {categories}")
    if description:
        parts.append(f"that fits this description: {description}")
    if not parts:
        return ""
    text = "I am looking for an item " + " ".join(parts)
    return text if text.endswith((".", "!", "?")) else text + "."


class IntentionTask(RecommendationTask):
    """Base of the ITE tasks: the target's SID from a prompt that states the user's intention.

    With ``intention_source="annotations"`` the intention for a training example
    ``(user, history, target)`` is ``annotations["intention"]["<user id>:<target id>"]``;
    with ``"item_text"`` it is :func:`derived_intention` of the target. Examples without an
    intention are skipped (``skipped`` holds the last epoch's count).
    """

    requires = ("annotations",)
    skipped = 0
    target_leak = (
        "its prompt states an intention written from the target item itself (the user's "
        "review of it, or its own text)"
    )

    def __init__(
        self,
        *,
        intention_source: IntentionSource = "annotations",
        **common: Any,
    ) -> None:
        super().__init__(**common)
        if intention_source not in ("annotations", "item_text"):
            raise ValueError(
                f"task {self.name!r}: intention_source must be 'annotations' or 'item_text', "
                f"got {intention_source!r}"
            )
        self.intention_source = intention_source
        if intention_source == "item_text":
            self.requires = ("item_text",)

    def notes(self) -> list[str]:
        if self.intention_source == "item_text":
            return [
                f"{self.name}: intentions are derived from the target item's text (year, "
                "categories, description; never its title), not written from user reviews"
            ]
        return []

    def check(self, ctx: TaskContext) -> None:
        if self.intention_source == "item_text":
            require_any_field(self.name, ctx.dataset, DERIVED_INTENTION_FIELDS)
        else:
            self._intentions(ctx)
        super().check(ctx)

    def _intentions(self, ctx: TaskContext) -> dict[str, str]:
        hint = (
            ", or set the task's `params: {intention_source: item_text}` to derive them from "
            "item text"
        )
        return annotation_table(ctx, self.name, "intention", hint)

    def intention(self, ctx: TaskContext, example: Example) -> str:
        """The intention text of ``example``, ``""`` when there is none."""
        if self.intention_source == "item_text":
            return derived_intention(ctx.dataset, example.target)
        key = intention_key(ctx.dataset, example.user, example.target)
        return " ".join(self._intentions(ctx).get(key, "").split())

    def prompt(self, ctx: TaskContext, example: Example, template: int = 0) -> str:
        intention = self.intention(ctx, example)
        if not intention:
            key = intention_key(ctx.dataset, example.user, example.target)
            raise TaskDataError(
                f"task {self.name!r}: no intention for user {ctx.dataset.user_ids[example.user]!r}"
                f" and item {ctx.dataset.item_ids[example.target]!r} (annotations['intention']"
                f"[{key!r}], source {self.intention_source!r})"
            )
        return self.templates[template].format(
            intention=intention, history=ctx.history_text(example.history)
        )

    def train_samples(self, ctx: TaskContext, rng: random.Random) -> list[Sample]:
        examples = [ex for ex in ctx.split.train if self.intention(ctx, ex)]
        if ctx.split.train and not examples and self.intention_source == "annotations":
            first = ctx.split.train[0]
            raise unmatched_annotations_error(
                self.name,
                "intention",
                self._intentions(ctx),
                intention_key(ctx.dataset, first.user, first.target),
            )
        self.skipped = len(ctx.split.train) - len(examples)
        report_skipped(self.name, self.skipped, len(ctx.split.train), "no intention")
        samples = []
        for ex in self.epoch_subset(examples, rng):
            prompt = self.prompt(ctx, ex, rng.randrange(len(self.templates)))
            samples.append(Sample(self.name, prompt, ctx.sids[ex.target], ex.target, ex.user))
        return samples


@TASKS.register("ite_intention")
class IntentionToItemTask(IntentionTask):
    """Answer a user's stated intention with an item, like a search engine (no history)."""

    name = "ite_intention"
    templates = (
        'Suppose you are a search engine, now a user searches that: "{intention}", can you '
        "select an item to respond to the user's query?",
        'A user is looking for something and says: "{intention}". Which item fits best?',
        'Find the item that best matches this request: "{intention}"',
        'Here is what a user wants: "{intention}". Recommend one item for them.',
    )


@TASKS.register("ite_history_intention")
class HistoryIntentionToItemTask(IntentionTask):
    """Recommend from the SID history plus the intention for the next item."""

    name = "ite_history_intention"
    templates = (
        "As a recommender system, you are assisting a user who has recently interacted with "
        "the following items: {history}. The user expresses a desire to obtain another item "
        'with the following characteristics: "{intention}". Please recommend an item that '
        "meets these criteria.",
        'The user\'s past items, oldest first: {history}. Now they say: "{intention}". '
        "Which item should you recommend?",
        'Interaction history: {history}. The user\'s current need: "{intention}". Pick the '
        "next item for this user.",
        'Given that a user has interacted with {history} and is looking for "{intention}", '
        "what item would you suggest?",
    )


@TASKS.register("per_preference")
class PreferenceTask(Task):
    """Infer a user's preferences in words from their SID history.

    One pair per user: the history is the user's training part (the items before the
    validation and test items), its last ``max_history`` items; the response is
    ``annotations["preference"]["<user id>"]``. Users without one are skipped.
    """

    name = "per_preference"
    requires = ("annotations",)
    skipped = 0
    templates = (
        "Utilizing the ordered list of the user's historical interaction items as a "
        "reference, please make an informed estimation of the user's preferences. The "
        "historical interactions are as follows: {history}.",
        "Here are the items a user interacted with, in chronological order: {history}. "
        "Describe what this user likes.",
        "From the interaction history {history}, summarise the user's tastes and interests.",
        "What can you infer about the preferences of a user whose past items are {history}?",
    )

    def __init__(
        self,
        *,
        max_history: int = 20,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        if max_history < 1:
            raise ValueError(f"task {self.name!r}: max_history must be >= 1, got {max_history}")
        self.max_history = max_history

    def check(self, ctx: TaskContext) -> None:
        annotation_table(ctx, self.name, "preference")
        super().check(ctx)
        if not ctx.split.train_sequences:
            raise TaskDataError(
                f"task {self.name!r} needs the split's train_sequences, which are empty"
            )

    def train_samples(self, ctx: TaskContext, rng: random.Random) -> list[Sample]:
        preferences = annotation_table(ctx, self.name, "preference")
        candidates = []  # (user, history, preference) of users with both
        for user, sequence in enumerate(ctx.split.train_sequences):
            preference = " ".join(preferences.get(ctx.dataset.user_ids[user], "").split())
            if preference and len(sequence):
                history = tuple(sequence[-self.max_history :].tolist())
                candidates.append((user, history, preference))
        samples = []
        for user, history, preference in self.epoch_subset(candidates, rng):
            template = self.templates[rng.randrange(len(self.templates))]
            prompt = template.format(history=ctx.history_text(history))
            samples.append(Sample(self.name, prompt, preference, user=user))
        if not samples and not any(u in preferences for u in ctx.dataset.user_ids):
            raise unmatched_annotations_error(
                self.name, "preference", preferences, ctx.dataset.user_ids[0]
            )
        self.skipped = len(ctx.split.train_sequences) - len(candidates)
        report_skipped(
            self.name, self.skipped, len(ctx.split.train_sequences), "no preference or history"
        )
        return samples
