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
