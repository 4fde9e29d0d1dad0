"""Reuse fitted collaborative models: ``fit_cached(recommender, split)``.

A fit is stored under ``cache_dir()/cf/<Class>-<hash>/`` (see
:meth:`~semrec.cf.base.SequentialRecommender.save`). The hash covers exactly what the fit
result depends on: the class, its :meth:`~semrec.cf.base.SequentialRecommender.hyperparameters`
(not ``echo``, ``num_threads`` or ``eval_batch_size``), the train and valid examples (the
valid ones steer early stopping), ``num_items`` and the positional range (which, without
``max_history``, is the longest history of the split, test included).
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

from semrec.artifacts import cache_dir, content_hash
from semrec.cf.base import FIT_RECORD_FILE, SequentialRecommender
from semrec.data.split import Split, fingerprint_examples

log = logging.getLogger(__name__)


def fit_key(recommender: SequentialRecommender, split: Split) -> str:
    """The cache key of ``recommender.fit(split)`` (see module docs)."""
    return content_hash(
        type(recommender).__name__,
        recommender.hyperparameters(),
        split.num_items,
        recommender.history_length_for(split),
        fingerprint_examples(split.train),
        fingerprint_examples(split.valid),
    )


def fit_cached(
    recommender: SequentialRecommender, split: Split, directory: str | Path | None = None
) -> SequentialRecommender:
    """``recommender.fit(split)``, or the same fit loaded from the cache; returns recommender.

    ``directory`` holds the ``<Class>-<hash>`` folders (default ``cache_dir()/cf``). A
    stored fit that cannot be read is refitted and replaced. ``recommender.from_cache``
    says which happened.
    """
    root = Path(directory) if directory is not None else cache_dir() / "cf"
    path = root / f"{type(recommender).__name__}-{fit_key(recommender, split)}"
    if (path / FIT_RECORD_FILE).is_file():
        try:
            recommender.load(path)
            recommender.from_cache = True
            return recommender
        except (
            OSError,
            RuntimeError,
            KeyError,
            TypeError,
            ValueError,
            pickle.UnpicklingError,
        ) as err:
            log.warning("%s is unreadable (%s); fitting again", path, err)
    recommender.fit(split)
    recommender.save(path)
    recommender.from_cache = False
    return recommender
