"""Metrics, the popularity baseline and the evaluator."""

from semrec.evaluation.metrics import TopKRankingMetrics, ranking_metrics, target_ranks
from semrec.evaluation.popularity import evaluate_popularity, popularity_ranking

__all__ = [
    "TopKRankingMetrics",
    "evaluate_popularity",
    "popularity_ranking",
    "ranking_metrics",
    "target_ranks",
]
