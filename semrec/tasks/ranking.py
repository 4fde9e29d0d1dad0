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
from semrec.tasks.base import TASKS, RecommendationTask, Sample, TaskContext, TaskDataError
from semrec.tasks.item_fields import field_text

USER_INDEXES = ("sid", "original", "number", "none")
ITEM_FORMATS = ("title", "sid")
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
        if candidate_order not in CANDIDATE_ORDERS:
            raise ValueError(
                f"task {self.name!r}: candidate_order must be one of {CANDIDATE_ORDERS}, "
                f"got {candidate_order!r}"
            )
        self.candidate_order = candidate_order
        if user_index not in USER_INDEXES:
            raise ValueError(
                f"task {self.name!r}: user_index must be one of {USER_INDEXES}, got {user_index!r}"
            )
        if items_as not in ITEM_FORMATS:
            raise ValueError(
                f"task {self.name!r}: items_as must be one of {ITEM_FORMATS}, got {items_as!r}"
            )
        self.user_index = user_index
        self.items_as = items_as

    def item_text(self, ctx: TaskContext, item: int) -> str:
        """The item as the prompt writes it: its title (SID when untitled) or its SID."""
        if self.items_as == "sid":
            return ctx.sids[item]
        return field_text(ctx.dataset, item, "title") or ctx.sids[item]

    def check(self, ctx: TaskContext) -> None:
        if ctx.candidates is None:
            raise TaskDataError(
                f"task {self.name!r} needs retrieved candidates (the run retrieves them with "
                "the candidates: section when a task needs them)"
            )
        if self.user_index == "sid" and ctx.user_sids is None:
            raise TaskDataError(
                f"task {self.name!r}: user_index 'sid' needs user SIDs; give users a tokenizer "
                "(users.tokenizer) or use user_index original, number or none"
            )
        candidate_letters(ctx.candidates.k)  # at most 26

    def user_text(self, ctx: TaskContext, user: int) -> str:
        if self.user_index == "none":
            return ""
        index = {
            "sid": lambda: ctx.user_sids[user],
            "original": lambda: str(ctx.dataset.user_ids[user]),
            "number": lambda: str(user + 1),
        }[self.user_index]()
        return f"User index: {index}.\n"

    def lettered(self, ctx: TaskContext, example: Example, rng: random.Random) -> list[int]:
        """The example's candidates in the order they get letters A, B, ..."""
        candidates = list(ctx.candidates.of(example))
        if self.candidate_order == "shuffled":
            rng.shuffle(candidates)
        return candidates

    def _prompt(self, ctx: TaskContext, example: Example, order: list[int], template: int) -> str:
        history = " ".join(
            f"({k}) {self.item_text(ctx, item)}" for k, item in enumerate(example.history, 1)
        )
        letters = candidate_letters(len(order)) if order else []
        listed = " ".join(
            f"({letter}) {self.item_text(ctx, item)}" for letter, item in zip(letters, order)
        )
        return self.templates[template].format(
            user=self.user_text(ctx, example.user), history=history, candidates=listed
        )

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
