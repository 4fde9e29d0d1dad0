"""Serving: pre-cached top-K recommendations (``semrec predict``) and their online reader."""

from semrec.serving.precache import PredictionError, PredictionWriter, read_predictions
from semrec.serving.topk_cache import TopKCache

__all__ = ["PredictionError", "PredictionWriter", "TopKCache", "read_predictions"]
