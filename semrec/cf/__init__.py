"""Collaborative sequential recommenders (SASRec, GRU4Rec): baselines and CF item embedders.

Each is an estimator: ``fit(split)`` on the training prefixes, then ``score`` /
``recommend`` / ``item_embeddings`` (see :mod:`semrec.cf.base`); :func:`fit_cached` reuses
a stored fit (see :mod:`semrec.cf.cache`).
"""

from semrec.cf.base import PADDING, SequenceNetwork, SequentialRecommender, Validation
from semrec.cf.cache import fit_cached, fit_key
from semrec.cf.gru4rec import GRU4Rec
from semrec.cf.sasrec import SASRec

__all__ = [
    "PADDING",
    "GRU4Rec",
    "SASRec",
    "SequenceNetwork",
    "SequentialRecommender",
    "Validation",
    "fit_cached",
    "fit_key",
]
