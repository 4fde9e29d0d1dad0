"""ULMRec's user-centric alignment tasks (section 4.2.2-4.2.5), one pair per user per epoch.

- ``user_preference``: the user index -> the user's preferences (4.2.2, Figure 3);
- ``preference_user``: the preferences -> the user index (4.2.3, Figure 4);
- ``history_user``: the chronological history as titles -> the user index (4.2.4, Figure 5);
- ``rating_prediction``: index, preferences and the rated history -> the rating of its last
  item, whose own rating is left out (4.2.5, Figure 6). Evaluation scores it by MAE/RMSE on
  the test items (:mod:`semrec.evaluation.rating`).

``user_index`` (:mod:`semrec.tasks.user_index`) is how the user is named, as in the
candidate-ranking task; ``preference_source`` where preferences come from
(:mod:`semrec.tasks.preferences`). Every task reads only the user's training part.
"""

from __future__ import annotations

import random
from abc import abstractmethod
from typing import Any

from semrec.data.split import Example
from semrec.tasks.base import TASKS, Sample, Task, TaskContext, TaskDataError
from semrec.tasks.item_fields import check_items_as, item_label, numbered, report_skipped
from semrec.tasks.preferences import (
    PreferenceSource,
    check_preference_source,
    preference_notes,
    user_preferences,
)
from semrec.tasks.user_index import UserIndex


class UserAlignmentTask(Task):
    """Base of the tasks about one user: user index, preferences and the training history."""

    uses_preference: bool = True
    skipped = 0

    def __init__(
        self,
        *,
        user_index: str = "sid",
        preference_source: PreferenceSource = "annotations",
        items_as: str = "title",
        max_history: int = 20,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        check_preference_source(self.name, preference_source)
        check_items_as(self.name, items_as)
        if max_history < 1:
            raise ValueError(f"task {self.name!r}: max_history must be >= 1, got {max_history}")
        if user_index == "none":
            raise ValueError(
                f"task {self.name!r} is about the user index; user_index can't be none"
            )
        self.user_index = UserIndex(user_index, self.name)
        self.preference_source = preference_source
        self.items_as = items_as
        self.max_history = max_history

    def check(self, ctx: TaskContext) -> None:
        super().check(ctx)
        self.user_index.check(ctx)
        if not ctx.split.train_sequences:
            raise TaskDataError(
                f"task {self.name!r} needs the split's train_sequences, which are empty"
            )

    def notes(self) -> list[str]:
        return preference_notes(self.name, self.preference_source) if self.uses_preference else []

    def history_text(self, ctx: TaskContext, items: list[int]) -> str:
        """``items`` numbered ``(1) ... (n)``, as titles or SIDs (``items_as``)."""
        return numbered([item_label(ctx, item, self.items_as) for item in items])

    @abstractmethod
    def pair(self, ctx: TaskContext, user: int, preference: str, template: str) -> tuple[str, str]:
        """The (prompt, response) of ``user`` with ``template``."""

    def train_samples(self, ctx: TaskContext, rng: random.Random) -> list[Sample]:
        self.check(ctx)
        preferences = (
            user_preferences(ctx, self.name, self.preference_source)
            if self.uses_preference
            else [""] * ctx.split.num_users
        )
        users = [
            u
            for u, sequence in enumerate(ctx.split.train_sequences)
            if len(sequence) and (preferences[u] or not self.uses_preference)
        ]
        self.skipped = ctx.split.num_users - len(users)
        report_skipped(self.name, self.skipped, ctx.split.num_users, "no history or preference")
        samples = []
        for user in self.epoch_subset(users, rng):
            template = self.templates[rng.randrange(len(self.templates))]
            prompt, response = self.pair(ctx, user, preferences[user], template)
            samples.append(Sample(self.name, prompt, response, user=user))
        return samples


@TASKS.register("user_preference")
class IndexToPreferenceTask(UserAlignmentTask):
    """The user index -> the user's preferences (ULMRec 4.2.2)."""

    name = "user_preference"
    templates = (
        "Given the user index, describe the user's preferences.\nUser index: {user}",
        "What does the user {user} like? Describe their preferences.",
        "User index: {user}. Summarise this user's tastes.",
    )

    def pair(self, ctx: TaskContext, user: int, preference: str, template: str) -> tuple[str, str]:
        return template.format(user=self.user_index.text(ctx, user)), preference


@TASKS.register("preference_user")
class PreferenceToIndexTask(UserAlignmentTask):
    """The user's preferences -> the user index (ULMRec 4.2.3)."""

    name = "preference_user"
    templates = (
        "Given user's preference, predict the user index.\nPreference: {preference}",
        "Which user has these preferences? {preference}\nAnswer with the user index.",
        "Preference: {preference}\nWhat is this user's index?",
    )

    def pair(self, ctx: TaskContext, user: int, preference: str, template: str) -> tuple[str, str]:
        return template.format(preference=preference), self.user_index.text(ctx, user)


@TASKS.register("history_user")
class HistoryToIndexTask(UserAlignmentTask):
    """The history in chronological order (titles) -> the user index (ULMRec 4.2.4)."""

    name = "history_user"
    uses_preference = False
    templates = (
        "Given user's history in chronological order, predict the user index.\n"
        "User history: {history}",
        "These items were chosen by one user, oldest first: {history}. Which user is it? "
        "Answer with the user index.",
        "User history: {history}\nWhat is this user's index?",
    )

    def pair(self, ctx: TaskContext, user: int, preference: str, template: str) -> tuple[str, str]:
        history = ctx.split.train_sequences[user][-self.max_history :].tolist()
        return template.format(history=self.history_text(ctx, history)), self.user_index.text(
            ctx, user
        )


@TASKS.register("rating_prediction")
class RatingPredictionTask(UserAlignmentTask):
    """Index, preferences and the rated history -> the last item's rating (ULMRec 4.2.5).

    Training: the last item of each user's training part is the one to rate. Evaluation
    (:meth:`eval_pairs`): the test item, after the training part and the valid item.
    The response is the rating as ``"4.0"``.
    """

    name = "rating_prediction"
    requires = ("ratings",)
    templates = (
        "Given user index and preferences, predict the user's rating of the last item of "
        "user history out of 5.\nUser ID: {user};\nPreference: {preference};\n"
        "User history: {history}",
        "User {user}. Preference: {preference}\nTheir ratings, oldest first: {history}\n"
        "How would they rate the last item, out of 5?",
    )

    def rated_prompt(
        self, ctx: TaskContext, user: int, items: list[int], preference: str, template: str
    ) -> str:
        """The prompt rating ``items[-1]`` after ``items[:-1]`` (shown with their ratings)."""
        rating_of = ctx.dataset.ratings_by_pair
        shown = items[-self.max_history :]
        labels = [
            f"{item_label(ctx, item, self.items_as)} (Rating: {rating_of[(user, item)]:.1f})"
            for item in shown[:-1]
        ]
        labels.append(item_label(ctx, shown[-1], self.items_as))
        return template.format(
            user=self.user_index.text(ctx, user), preference=preference, history=numbered(labels)
        )

    def pair(self, ctx: TaskContext, user: int, preference: str, template: str) -> tuple[str, str]:
        items = ctx.split.train_sequences[user].tolist()
        rating = ctx.dataset.ratings_by_pair[(user, items[-1])]
        return self.rated_prompt(ctx, user, items, preference, template), f"{rating:.1f}"

    def eval_pairs(self, ctx: TaskContext, examples: list[Example], seen: list[list[int]]):
        """(prompts, true ratings) of rating each example's target after ``seen`` items."""
        self.check(ctx)
        preferences = user_preferences(ctx, self.name, self.preference_source)
        rating_of = ctx.dataset.ratings_by_pair
        prompts, truth = [], []
        for example, items in zip(examples, seen):
            prompts.append(
                self.rated_prompt(
                    ctx,
                    example.user,
                    [*items, example.target],
                    preferences[example.user],
                    self.templates[0],
                )
            )
            truth.append(rating_of[(example.user, example.target)])
        return prompts, truth
