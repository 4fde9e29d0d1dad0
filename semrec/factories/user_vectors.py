"""The vectors a run's user tokenizer reads, from ``users.embedder`` (:mod:`semrec.embedders.users`)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from semrec.config import ExperimentConfig
from semrec.embedders.users import Encode, UserDataError, build_user_embedder
from semrec.errors import RunError
from semrec.factories.data import PreparedData


def user_embeddings(
    config: ExperimentConfig,
    data: PreparedData,
    encode: Encode,
    echo: Callable[[str], None] = print,
) -> torch.Tensor:
    """[num_users, d]: the configured user embedder over ``data``; text goes through ``encode``."""
    cfg = config.users.embedder
    embedder = build_user_embedder(cfg.name, **cfg.params)
    try:
        vectors = embedder.embed(data.dataset, data.split, data.item_texts, encode)
    except UserDataError as err:
        raise RunError(str(err)) from None
    notes = "".join(f"; {note}" for note in embedder.notes())
    echo(
        f"[embed] users: {cfg.name} ({config.encoder.name}): {tuple(vectors.shape)} user "
        f"embeddings{notes}"
    )
    return vectors
