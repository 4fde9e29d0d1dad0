"""``sasrec`` / ``gru4rec``: the item embeddings of an in-framework CF model fitted on train only.

The model is fitted (through :func:`~semrec.cf.cache.fit_cached`) on
:func:`~semrec.data.split.holdout_last_train` of the split: each user's last train example
is the inner validation example that early stopping watches, so neither gradients nor the
choice of epoch ever read a valid or test target. The output is the model's
``item_embeddings()`` (its output embedding table, row ``i`` = item ``i``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from semrec.cf import GRU4Rec, SASRec, SequentialRecommender, fit_cached
from semrec.data.dataset import RecDataset
from semrec.data.split import Split, holdout_last_train
from semrec.embedders.base import ITEM_EMBEDDERS, ItemEmbedder
from semrec.registry import did_you_mean


class RecommenderEmbedder(ItemEmbedder):
    """Item embeddings of a :class:`~semrec.cf.base.SequentialRecommender` (see module docs).

    ``params`` are the recommender's constructor arguments (e.g. ``hidden_size``,
    ``max_epochs``, ``seed``); an unknown one is a ``ValueError`` naming it. After
    ``embed``, ``model`` is the fitted recommender.
    """

    uses_interactions: ClassVar[bool] = True
    seeded_by_run: ClassVar[bool] = True
    recommender: ClassVar[type[SequentialRecommender]]

    @classmethod
    def parameter_names(cls) -> list[str]:
        """The keywords ``params`` may hold: the recommender's constructor arguments."""
        return cls.recommender.parameter_names()

    def __init__(self, **params: Any) -> None:
        accepted = self.parameter_names()
        for key in params:
            if key not in accepted:
                raise ValueError(
                    f"{self.recommender.__name__} has no parameter {key!r}"
                    f"{did_you_mean(key, accepted, cutoff=0.5)} (accepted: {', '.join(accepted)})"
                )
        self.model = self.recommender(**params)

    def cache_key(self) -> dict[str, Any]:
        return {
            "recommender": self.recommender.__name__,
            "hyperparameters": self.model.hyperparameters(),
        }

    def embed(self, dataset: RecDataset, split: Split, item_texts: list[str]) -> torch.Tensor:
        return fit_cached(self.model, holdout_last_train(split)).item_embeddings()


@ITEM_EMBEDDERS.register("sasrec")
class SASRecEmbedder(RecommenderEmbedder):
    """SASRec's item embeddings (``params``: :class:`~semrec.cf.sasrec.SASRec`'s arguments)."""

    recommender = SASRec


@ITEM_EMBEDDERS.register("gru4rec")
class GRU4RecEmbedder(RecommenderEmbedder):
    """GRU4Rec's item embeddings (``params``: :class:`~semrec.cf.gru4rec.GRU4Rec`'s arguments)."""

    recommender = GRU4Rec
