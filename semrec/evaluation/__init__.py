"""Evaluators above training: baselines, diagnostics, reports, seeds; re-exports the metrics of
:mod:`semrec.metrics` under their old names."""

from semrec.metrics.popularity import evaluate_popularity, popularity_ranking
from semrec.metrics.ranking import TopKRankingMetrics, ranking_metrics, target_ranks

__all__ = [
    "TopKRankingMetrics",
    "evaluate_popularity",
    "popularity_ranking",
    "ranking_metrics",
    "target_ranks",
]
