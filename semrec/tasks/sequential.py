"""LC-Rec's sequential item prediction (SEQ): SID history -> next item's SID."""

from __future__ import annotations

import random

from semrec.data.split import Example
from semrec.tasks.base import TASKS, RecommendationTask, Sample, TaskContext


@TASKS.register("seq")
class SequentialTask(RecommendationTask):
    """Predict the next item from the chronological SID history (LC-Rec section III-C1)."""

    name = "seq"
    templates = (
        "Here are the user's historical interactions: {history}. Try to recommend another "
        "item to the user. Note that the historical interactions are arranged in "
        "chronological order.",
        "The user has interacted with these items in chronological order: {history}. "
        "Which item is the user most likely to interact with next?",
        "Given the user's interaction history, oldest first: {history}. Predict the next "
        "item the user will choose.",
        "A user's past items, in the order they were chosen: {history}. Recommend the "
        "single item that should come next.",
        "Based on this sequence of items the user engaged with ({history}), what item "
        "will the user want next?",
    )

    def prompt(self, ctx: TaskContext, example: Example, template: int = 0) -> str:
        return self.templates[template].format(history=ctx.history_text(example.history))

    def train_samples(self, ctx: TaskContext, rng: random.Random) -> list[Sample]:
        samples = []
        for ex in self.epoch_subset(ctx.split.train, rng):
            template = rng.randrange(len(self.templates))
            prompt = self.prompt(ctx, ex, template)
            samples.append(Sample(self.name, prompt, ctx.sids[ex.target], ex.target, ex.user))
        return samples
