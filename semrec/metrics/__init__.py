"""Ranking metrics, per-user ranks, paired significance tests and the popularity ranking.

The lowest layer above ``data``: it imports nothing from semrec but ``artifacts`` and
``data.split``, so the CF baselines, the LightningModule and the evaluators all build on it.
"""

from semrec.metrics.popularity import evaluate_popularity, popularity_ranking
from semrec.metrics.ranking import TopKRankingMetrics, ranking_metrics, target_ranks

__all__ = [
    "TopKRankingMetrics",
    "evaluate_popularity",
    "popularity_ranking",
    "ranking_metrics",
    "target_ranks",
]
