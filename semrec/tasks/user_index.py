"""How a prompt names its user (ULMRec section 5.4.2, Figure 9).

``sid``: the user's SID ("P-ID", the personalised index; needs ``users.tokenizer``);
``original``: the dataset's raw user id ("O-ID"); ``number``: 1, 2, 3, ... ("N-ID");
``none``: the prompt does not name the user.
"""

from __future__ import annotations

from dataclasses import dataclass

from semrec.tasks.base import TaskContext, TaskDataError, check_choice

USER_INDEXES = ("sid", "original", "number", "none")


@dataclass(frozen=True)
class UserIndex:
    """One of :data:`USER_INDEXES`; :meth:`text` writes user ``u``'s index."""

    kind: str = "sid"
    task: str = "task"

    def __post_init__(self) -> None:
        check_choice(self.task, "user_index", self.kind, USER_INDEXES)

    def check(self, ctx: TaskContext) -> None:
        """Raise :class:`TaskDataError` when the index needs user SIDs the run lacks."""
        if self.kind == "sid" and ctx.user_sids is None:
            raise TaskDataError(
                f"task {self.task!r}: user_index 'sid' needs user SIDs; give users a tokenizer "
                "(users.tokenizer) or use user_index original, number or none"
            )

    def text(self, ctx: TaskContext, user: int) -> str:
        """User ``user``'s index as the prompt (or response) writes it; ``""`` for none."""
        if self.kind == "sid":
            return ctx.user_sids[user]
        if self.kind == "original":
            return str(ctx.dataset.user_ids[user])
        if self.kind == "number":
            return str(user + 1)
        return ""
