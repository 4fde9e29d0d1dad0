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
    ranks_candidates,
)
from semrec.tasks.high_order import CommentTask, NextUserTask
from semrec.tasks.intention import HistoryIntentionToItemTask, IntentionToItemTask, PreferenceTask
from semrec.tasks.negative import NegativeBehaviorTask
from semrec.tasks.query import QueryAlignmentTask
from semrec.tasks.ranking import CandidateRankingTask, IntentToCandidateTask
from semrec.tasks.sequential import SequentialTask
from semrec.tasks.token_alignment import SemanticToTokenTask, TokenToSemanticTask
from semrec.tasks.user_alignment import (
    HistoryToIndexTask,
    IndexToPreferenceTask,
    PreferenceToIndexTask,
    RatingPredictionTask,
)

__all__ = [
    "TASKS",
    "CandidateRankingTask",
    "CommentTask",
    "HistoryIntentionToItemTask",
    "HistoryToDescriptionTask",
    "HistoryToIndexTask",
    "HistoryToTitleTask",
    "IndexToPreferenceTask",
    "IntentToCandidateTask",
    "IntentionToItemTask",
    "NegativeBehaviorTask",
    "NextUserTask",
    "PreferenceTask",
    "PreferenceToIndexTask",
    "RatingPredictionTask",
    "QueryAlignmentTask",
    "RecommendationTask",
    "SIDToTextTask",
    "Sample",
    "SemanticToTokenTask",
    "SequentialTask",
    "Task",
    "TaskContext",
    "TaskDataError",
    "TextToSIDTask",
    "TitleHistoryTask",
    "TokenToSemanticTask",
    "build_mixture",
    "ranks_candidates",
]
