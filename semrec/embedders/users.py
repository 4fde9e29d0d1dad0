"""User embedders: the user vectors that a user tokenizer quantises into user SIDs.

Entries of :data:`USER_EMBEDDERS` are classes built from the ``users.embedder.params`` of a
config. Each reads only what a user did in training (``split``), never a valid or test
target, and embeds text through the run's text encoder (the ``encode`` callable, cached):

* ``history_text``: the mean of the text embeddings of the items in the user's training
  sequence, for datasets without reviews;
* ``profile``: the user's demographic fields as text (ml-100k: age, gender, occupation,
  zip code), e.g. ``"age: 24; gender: M; occupation: technician; zip_code: 85711"``.

``review_attention`` (ULMRec Eq. 1) is planned: it aggregates review embeddings with a
learnable attention trained jointly with the RQ-VAE, so it belongs to the ``ulmrec_user``
tokenizer's training rather than to a fixed embedding.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from semrec.data.dataset import RecDataset
from semrec.data.split import Split, sequences_from_examples
from semrec.registry import Registry

Encode = Callable[[list[str]], torch.Tensor]


class UserDataError(ValueError):
    """A user embedder needs data the dataset does not have; the message names it."""


class UserEmbedder(ABC):
    """Makes the user vectors [num_users, d] that a user tokenizer quantises."""

    @abstractmethod
    def embed(
        self, dataset: RecDataset, split: Split, item_texts: Sequence[str], encode: Encode
    ) -> torch.Tensor:
        """FloatTensor [dataset.num_users, d]; row ``u`` is user ``u``."""

    def notes(self) -> list[str]:
        """Facts about the last :meth:`embed` a run should print."""
        return []


USER_EMBEDDERS: Registry[type[UserEmbedder]] = Registry("user embedder")
USER_EMBEDDERS.plan(
    "review_attention",
    "ULMRec Eq. 1, review embeddings aggregated by an attention trained with the RQ-VAE; "
    "use 'history_text' or 'profile'",
)


def train_sequences(split: Split) -> list[np.ndarray]:
    """Each user's training sequence (``s[:n-2]``), never a valid or test target."""
    if split.train_sequences:
        return [np.asarray(s, dtype=np.int64) for s in split.train_sequences]
    return sequences_from_examples(split.train, split.num_users)


@USER_EMBEDDERS.register("history_text")
class HistoryTextEmbedder(UserEmbedder):
    """The mean text embedding of the items a user interacted with in training.

    A user without training items gets the mean over all items (counted in :meth:`notes`).
    """

    def __init__(self) -> None:
        self.users_without_history = 0

    def embed(
        self, dataset: RecDataset, split: Split, item_texts: Sequence[str], encode: Encode
    ) -> torch.Tensor:
        items = encode(list(item_texts))
        sequences = train_sequences(split)
        vectors = items.mean(dim=0).repeat(split.num_users, 1)
        self.users_without_history = 0
        for user, sequence in enumerate(sequences):
            if len(sequence):
                vectors[user] = items[torch.from_numpy(sequence)].mean(dim=0)
            else:
                self.users_without_history += 1
        return vectors

    def notes(self) -> list[str]:
        if not self.users_without_history:
            return []
        return [
            f"{self.users_without_history} users have no training items and got the mean "
            "item vector"
        ]


@USER_EMBEDDERS.register("profile")
class ProfileEmbedder(UserEmbedder):
    """The text embedding of a user's profile fields (``dataset.user_features``).

    ``fields`` picks and orders the fields (default: all, in the dataset's order).
    """

    def __init__(self, fields: list[str] | None = None) -> None:
        if fields is not None and not fields:
            raise ValueError("profile: fields must name at least one field, or be null")
        self.fields = fields

    def texts(self, dataset: RecDataset) -> list[str]:
        """One ``"field: value; ..."`` text per user."""
        if dataset.user_features is None:
            raise UserDataError(
                f"users.embedder 'profile' needs user profile fields, which dataset "
                f"{dataset.name!r} ({dataset.source}) does not provide; use 'history_text'"
            )
        texts = []
        for user, features in enumerate(dataset.user_features):
            names = self.fields if self.fields is not None else list(features)
            missing = [name for name in names if name not in features]
            if missing:
                raise UserDataError(
                    f"users.embedder 'profile': user {dataset.user_ids[user]!r} of dataset "
                    f"{dataset.name!r} has no field {missing[0]!r} (fields: {sorted(features)})"
                )
            texts.append("; ".join(f"{name}: {features[name]}" for name in names))
        return texts

    def embed(
        self, dataset: RecDataset, split: Split, item_texts: Sequence[str], encode: Encode
    ) -> torch.Tensor:
        return encode(self.texts(dataset))


def build_user_embedder(name: str, **params: Any) -> UserEmbedder:
    """Instantiate the user embedder registered as ``name`` with ``params``."""
    return USER_EMBEDDERS.get(name)(**params)
