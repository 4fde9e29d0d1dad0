"""TS-Rec's token-level semantic alignment (TS-Align, section 4.2): single SID token <-> meaning.

- ``ts_align_semantic_to_token``: the description ``D_s`` of what a token's items share ->
  the token ``s`` (understanding);
- ``ts_align_token_to_semantic``: the token ``s`` -> its description ``D_s`` (generation).

Descriptions come from ``TaskContext.token_semantics`` (made by ``semrec annotate --kind
token_semantics``). Each task makes one pair per described token per epoch; ``levels``
restricts the tokens to some SID levels (0 = first). The first template of each task is the
paper's wording.
"""

from __future__ import annotations

import random
from typing import Any

from semrec.tasks.base import TASKS, Sample, Task, TaskContext, TaskDataError


class _TokenAlignmentTask(Task):
    requires = ("token_semantics",)
    template_field: str

    def __init__(
        self,
        *,
        levels: list[int] | None = None,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        for index, template in enumerate(self.templates):
            if "{" + self.template_field + "}" not in template:
                raise ValueError(
                    f"task {self.name!r}: template {index} ({template!r}) must contain "
                    f"{{{self.template_field}}}"
                )
        if levels is not None and (not levels or any(level < 0 for level in levels)):
            raise ValueError(f"task {self.name!r}: levels must be non-negative, got {levels}")
        self.levels = None if levels is None else frozenset(levels)

    def check(self, ctx: TaskContext) -> None:
        self.token_descriptions(ctx)

    def token_descriptions(self, ctx: TaskContext) -> list[tuple[str, str]]:
        """(token, description) pairs of the selected levels, in SID-level order."""
        semantics = ctx.token_semantics or {}
        if not semantics:
            raise TaskDataError(
                f"task {self.name!r} needs token semantics, which are missing; make them with "
                "`semrec annotate --config <your config>.yaml --kind token_semantics`"
            )
        pairs = []
        for level, tokens in enumerate(ctx.level_tokens or []):
            if self.levels is not None and level not in self.levels:
                continue
            pairs.extend((t, semantics[t].description) for t in tokens if t in semantics)
        if not pairs:
            raise TaskDataError(
                f"task {self.name!r}: no SID token of levels {sorted(self.levels or [])} has a "
                f"description ({len(semantics)} tokens are described)"
            )
        return pairs

    def _template(self, rng: random.Random) -> str:
        return self.templates[rng.randrange(len(self.templates))]


@TASKS.register("ts_align_semantic_to_token")
class SemanticToTokenTask(_TokenAlignmentTask):
    """Name the SID token whose items share a described scope (TS-Align task 1)."""

    name = "ts_align_semantic_to_token"
    template_field = "description"
    templates = (
        "Identify the specific SID token shared by items that exhibit the following scope "
        'and characteristics: "{description}"',
        'Which single SID token stands for items described as follows? "{description}"',
        'Items that carry one SID token in common are described like this: "{description}". '
        "Which token is it?",
    )

    def train_samples(self, ctx: TaskContext, rng: random.Random) -> list[Sample]:
        return [
            Sample(self.name, self._template(rng).format(description=description), token)
            for token, description in self.epoch_subset(self.token_descriptions(ctx), rng)
        ]


@TASKS.register("ts_align_token_to_semantic")
class TokenToSemanticTask(_TokenAlignmentTask):
    """Describe the items that carry a SID token (TS-Align task 2)."""

    name = "ts_align_token_to_semantic"
    template_field = "token"
    templates = (
        'Describe the typical scope and shared features of items associated with the token: "{token}"',
        'What do the items whose SID contains the token "{token}" have in common?',
        "Explain what the SID token {token} says about an item.",
    )

    def train_samples(self, ctx: TaskContext, rng: random.Random) -> list[Sample]:
        return [
            Sample(self.name, self._template(rng).format(token=token), description)
            for token, description in self.epoch_subset(self.token_descriptions(ctx), rng)
        ]
