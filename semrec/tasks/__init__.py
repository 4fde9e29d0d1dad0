"""Instruction tasks (registry ``TASKS``); importing this package registers the built-in ones."""

from semrec.tasks.base import (
    TASKS,
    RecommendationTask,
    Sample,
    Task,
    TaskContext,
    TaskDataError,
    build_mixture,
)
from semrec.tasks.sequential import SequentialTask

for _name in ("mut", "asy", "ite", "per"):
    TASKS.plan(_name, "LC-Rec alignment tasks, issue #4")
for _name in ("ts_align_semantic_to_token", "ts_align_token_to_semantic"):
    TASKS.plan(_name, "TS-Rec token-level alignment, issue #5")

__all__ = [
    "TASKS",
    "RecommendationTask",
    "Sample",
    "SequentialTask",
    "Task",
    "TaskContext",
    "TaskDataError",
    "build_mixture",
]
