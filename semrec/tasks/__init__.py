"""Instruction tasks (registry ``TASKS``); importing this package registers the built-in ones."""

from semrec.tasks.alignment import SIDToTextTask, TextToSIDTask
from semrec.tasks.asymmetric import HistoryToDescriptionTask, HistoryToTitleTask, TitleHistoryTask
from semrec.tasks.base import (
    TASKS,
    RecommendationTask,
    Sample,
    Task,
    TaskContext,
    TaskDataError,
    build_mixture,
)
from semrec.tasks.intention import HistoryIntentionToItemTask, IntentionToItemTask, PreferenceTask
from semrec.tasks.sequential import SequentialTask

for _name in ("ts_align_semantic_to_token", "ts_align_token_to_semantic"):
    TASKS.plan(_name, "TS-Rec token-level alignment, issue #5")

__all__ = [
    "TASKS",
    "HistoryIntentionToItemTask",
    "HistoryToDescriptionTask",
    "HistoryToTitleTask",
    "IntentionToItemTask",
    "PreferenceTask",
    "RecommendationTask",
    "SIDToTextTask",
    "Sample",
    "SequentialTask",
    "Task",
    "TaskContext",
    "TaskDataError",
    "TextToSIDTask",
    "TitleHistoryTask",
    "build_mixture",
]
