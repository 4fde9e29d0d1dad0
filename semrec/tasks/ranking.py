"""ULMRec's next-item prediction over candidates (section 4.2.1), ranked by a verbalizer.

``candidate_ranking``: the prompt holds the user index, the history as numbered titles and
the retrieved candidates lettered ``(A)`` ... ``(T)`` in a shuffled order; the answer is the
target's letter. Evaluation scores each candidate by its letter's logit at the answer
position (:class:`~semrec.ranking.verbalizer.VerbalizerRanker`), so the model never
generates. The candidates come from the run's retriever (:mod:`semrec.ranking.candidates`).

``user_index`` picks how the prompt names the user (ULMRec Figure 9): ``sid`` (the user's
SID, "P-ID"; needs ``users.tokenizer``), ``original`` (the dataset's raw user id, "O-ID"),
``number`` (1, 2, 3, ...: "N-ID") or ``none``. ``items_as`` writes history and candidates
as titles (ULMRec, LlamaRec; an untitled item appears as its SID) or as SIDs.
``candidate_order`` letters the candidates in a shuffled order (``shuffled``: a new order
every training epoch, a fixed one per evaluation example, so the letter says nothing about
the retriever's rank) or in the retriever's order (``retriever``: ``(A)`` is its top item).
"""

from __future__ import annotations

import random
from typing import Any

from semrec.data.split import Example
from semrec.ranking.verbalizer import candidate_letters
from semrec.tasks.base import (
    TASKS,
    RecommendationTask,
    Sample,
    TaskContext,
    TaskDataError,
    check_choice,
)
from semrec.tasks.item_fields import check_items_as, item_label, numbered
from semrec.tasks.preferences import (
    PreferenceSource,
    check_preference_source,
    preference_notes,
    user_preferences,
)
from semrec.tasks.user_index import UserIndex

CANDIDATE_ORDERS = ("shuffled", "retriever")


@TASKS.register("candidate_ranking")
class CandidateRankingTask(RecommendationTask):
    """Pick the next item among lettered candidates; the response is its letter."""

    name = "candidate_ranking"
    requires = ("candidates",)
    templates = (
        "{user}The user's history: {history}.\nCandidates: {candidates}.\nWhich candidate "
        "will the user interact with next? Answer with the letter of the candidate.",
        "{user}These are the items the user interacted with, in order: {history}.\nChoose "
        "the user's next item from {candidates}. Reply with its letter.",
        "{user}History: {history}.\nOptions: {candidates}.\nThe letter of the item the user "
        "is most likely to choose next is",
        "{user}Given the user's past items {history}, rank the candidates {candidates} and "
        "answer with the letter of the best one.",
    )

    def __init__(
        self,
        *,
        user_index: str = "sid",
        items_as: str = "title",
        candidate_order: str = "shuffled",
        **common: Any,
    ) -> None:
        super().__init__(**common)
        check_choice(self.name, "candidate_order", candidate_order, CANDIDATE_ORDERS)
        self.candidate_order = candidate_order
        check_items_as(self.name, items_as)
        self.user_index = UserIndex(user_index, self.name)
        self.items_as = items_as

    def check(self, ctx: TaskContext) -> None:
        if ctx.candidates is None:
            raise TaskDataError(
                f"task {self.name!r} needs retrieved candidates (the run retrieves them with "
                "the candidates: section when a task needs them)"
            )
        self.user_index.check(ctx)
        candidate_letters(ctx.candidates.k)  # at most 26

    def user_text(self, ctx: TaskContext, user: int) -> str:
        index = self.user_index.text(ctx, user)
        return f"User index: {index}.\n" if index else ""

    def lettered(self, ctx: TaskContext, example: Example, rng: random.Random) -> list[int]:
        """The example's candidates in the order they get letters A, B, ..."""
        candidates = list(ctx.candidates.of(example))
        if self.candidate_order == "shuffled":
            rng.shuffle(candidates)
        return candidates

    def _prompt(self, ctx: TaskContext, example: Example, order: list[int], template: int) -> str:
        history = numbered([item_label(ctx, i, self.items_as) for i in example.history])
        listed = self.listed(ctx, order)
        return self.templates[template].format(
            user=self.user_text(ctx, example.user), history=history, candidates=listed
        )

    def listed(self, ctx: TaskContext, order: list[int]) -> str:
        """The candidates lettered: ``"(A) first (B) second ..."``."""
        letters = candidate_letters(len(order)) if order else []
        return numbered([item_label(ctx, i, self.items_as) for i in order], letters)

    def prompt(self, ctx: TaskContext, example: Example, template: int = 0) -> str:
        return self._prompt(ctx, example, self.lettered(ctx, example, eval_rng(example)), template)

    def train_samples(self, ctx: TaskContext, rng: random.Random) -> list[Sample]:
        self.check(ctx)
        samples = []
        for ex in self.epoch_subset(ctx.split.train, rng):
            order = self.lettered(ctx, ex, rng)
            letter = candidate_letters(len(order))[order.index(ex.target)]
            prompt = self._prompt(ctx, ex, order, rng.randrange(len(self.templates)))
            samples.append(Sample(self.name, prompt, letter, ex.target, ex.user))
        return samples

    def eval_candidates(self, ctx: TaskContext, examples: list[Example]) -> list[list[int]]:
        """Each eval example's candidates in letter order (what the verbalizer ranks)."""
        return [self.lettered(ctx, ex, eval_rng(ex)) for ex in examples]

    def eval_samples(self, ctx: TaskContext, examples: list[Example]) -> list[Sample]:
        self.check(ctx)
        samples = []
        for ex, order in zip(examples, self.eval_candidates(ctx, examples)):
            letters = candidate_letters(len(order)) if order else []
            answer = letters[order.index(ex.target)] if ex.target in order else ""
            prompt = self._prompt(ctx, ex, order, 0)
            samples.append(Sample(self.name, prompt, answer, ex.target, ex.user))
        return self.personalize(ctx, samples)


def eval_rng(example: Example) -> random.Random:
    """The fixed letter order of an evaluation example (the same in every run)."""
    return random.Random(f"{example.user}:{len(example.history)}:{example.history[-1:]}")


@TASKS.register("intent_candidate")
class IntentToCandidateTask(CandidateRankingTask):
    """ULMRec's intent-based item prediction (4.2.6): preferences and lettered candidates ->
    the letter of the user's next item, without the history.

    One pair per user: the target is the user's last training item, the candidates those of
    that training example. Preferences come from ``preference_source``
    (:mod:`semrec.tasks.preferences`).
    """

    name = "intent_candidate"
    templates = (
        "{user}Given user's preference and candidate items, recommend an item from the "
        "candidate pool with its index letter for this user.\nPreference: {preference}\n"
        "Candidate pool: {candidates}",
        "{user}The user's preferences: {preference}\nWhich of these items suits the user "
        "best? {candidates}\nAnswer with its letter.",
    )

    def __init__(
        self,
        *,
        preference_source: PreferenceSource = "annotations",
        user_index: str = "none",
        **common: Any,
    ) -> None:
        super().__init__(user_index=user_index, **common)
        check_preference_source(self.name, preference_source)
        self.preference_source = preference_source

    def notes(self) -> list[str]:
        return preference_notes(self.name, self.preference_source)

    def train_samples(self, ctx: TaskContext, rng: random.Random) -> list[Sample]:
        self.check(ctx)
        preferences = user_preferences(ctx, self.name, self.preference_source)
        last = {ex.user: ex for ex in ctx.split.train}  # train examples are in time order
        samples = []
        for user in self.epoch_subset(sorted(last), rng):
            if not preferences[user]:
                continue
            example = last[user]
            order = self.lettered(ctx, example, rng)
            letter = candidate_letters(len(order))[order.index(example.target)]
            prompt = self.templates[rng.randrange(len(self.templates))].format(
                user=self.user_text(ctx, user),
                preference=preferences[user],
                candidates=self.listed(ctx, order),
            )
            samples.append(Sample(self.name, prompt, letter, example.target, user))
        return samples

    def prompt(self, ctx: TaskContext, example: Example, template: int = 0) -> str:
        raise TaskDataError(
            f"task {self.name!r} is a training task; evaluate with candidate_ranking"
        )
