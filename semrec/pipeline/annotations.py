"""The texts a run's LLM reads beyond the dataset: the tasks' annotations and TS-Rec's token semantics."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from semrec.annotate.errors import MissingAnnotations
from semrec.annotate.run_annotations import RunAnnotations
from semrec.artifacts import write_json
from semrec.errors import RunError
from semrec.factories.prompts import build_tasks
from semrec.pipeline.context import RunContext
from semrec.pipeline.data import DataStage
from semrec.pipeline.tokenizers import TokenizerStage


class AnnotationStage:
    """The configured tasks and the cached annotations they (or SA-Init) read."""

    def __init__(self, context: RunContext, data: DataStage, tokenizers: TokenizerStage) -> None:
        self.context = context
        self.inputs = data
        self.tokenizers = tokenizers

    @cached_property
    def source(self) -> RunAnnotations:
        """Makes and caches annotations (``semrec annotate``) for this run's data and SIDs."""
        data = self.inputs.data
        return RunAnnotations(
            self.context.config,
            data.dataset,
            data.split,
            lambda: self.tokenizers.tokenizer,
            self.context.echo,
        )

    def annotate(self, kind: str) -> int:
        """Generate (or reuse from the cache) the ``kind`` annotations; returns how many exist."""
        return self.source.generate(kind)

    @cached_property
    def tasks(self) -> list[tuple[Any, float]]:
        """The configured (task, weight) pairs."""
        return build_tasks(self.context.config)

    @cached_property
    def annotations(self) -> dict[str, dict[str, str]] | None:
        """Cached user annotations (intention, preference) if any task needs them (tasks say
        which command makes missing ones)."""
        if not any("annotations" in task.requires for task, _ in self.tasks):
            return None
        return self.source.cached_user_annotations()

    @cached_property
    def token_semantics(self) -> dict[str, Any] | None:
        """SID token -> parsed TS-Rec semantics, when SA-Init or a task uses them.

        Also written to ``run_dir/token_semantics.json`` for inspection.
        """
        init = self.context.config.model.semantic_init
        uses = (init.enabled and init.source == "token_semantics") or any(
            "token_semantics" in task.requires for task, _ in self.tasks
        )
        if not uses:
            return None
        try:
            parsed, _ = self.source.cached_token_semantics()
        except MissingAnnotations as err:
            raise RunError(str(err)) from None
        context = self.context
        if not context.read_only and context.rank_zero:
            context.run_dir.mkdir(parents=True, exist_ok=True)
            write_json(
                context.run_dir / "token_semantics.json",
                {
                    t: {"description": s.description, "keywords": list(s.keywords)}
                    for t, s in parsed.items()
                },
            )
        return parsed
