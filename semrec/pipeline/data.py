"""The data stage of a run: the dataset and its split, the item vectors, retrieved candidates."""

from __future__ import annotations

from functools import cached_property

from semrec.factories.candidates import run_candidates
from semrec.factories.data import PreparedData, prepare_data
from semrec.factories.item_vectors import ItemVectors
from semrec.pipeline.context import RunContext
from semrec.tasks import ranks_candidates


class DataStage:
    """Loads what the later stages read; each part is built on first use and kept."""

    def __init__(self, context: RunContext) -> None:
        self.context = context

    @cached_property
    def data(self) -> PreparedData:
        """The dataset, its split and the item texts (``dataset:``)."""
        context = self.context
        with context.timed("data"):
            data = prepare_data(context.config.dataset)
        context.echo(data.summary_line(context.config.dataset.max_history))
        return data

    @cached_property
    def vectors(self) -> ItemVectors:
        """The embedder's item vectors, cold-start fill-in and LLM alignment targets."""
        return ItemVectors(self.context.config, self.data, self.context.echo)

    @cached_property
    def candidates(self):
        """Retrieved candidates of every example, when a task ranks them (else None)."""
        config = self.context.config
        if not ranks_candidates(config.task_names()):
            return None
        with self.context.timed("candidates"):
            return run_candidates(config, self.data.split, self.context.echo)
