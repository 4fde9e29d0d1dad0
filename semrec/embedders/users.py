"""User embedders: the user vectors that a user tokenizer quantises into user SIDs.

Entries of :data:`USER_EMBEDDERS` are classes built from the ``users.embedder.params`` of a
config. Each reads only what a user did in training (``split``), never a valid or test
target, and embeds text through the run's text encoder (the ``encode`` callable, cached):

* ``history_text``: the mean of the text embeddings of the items in the user's training
  sequence, for datasets without reviews;
* ``profile``: the user's demographic fields as text (ml-100k: age, gender, occupation,
  zip code), e.g. ``"age: 24; gender: M; occupation: technician; zip_code: 85711"``;
* ``review_attention`` (ULMRec Eq. 1): a set of vectors per user, ``[num_users, 1 + R, d]``:
  the embedding of the user's original id string, then one per review of a training
  interaction (zero rows pad). The attention that pools them is learned with the RQ-VAE,
  so the set goes to the ``ulmrec_user`` tokenizer as it is. On a dataset without reviews
  (ml-100k) ``source: history_titles`` stands in for them: one text per training
  interaction, ``"<title> (rating: 4)"``, plus the profile text with ``profile: true``.
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


@USER_EMBEDDERS.register("review_attention")
class ReviewSetEmbedder(UserEmbedder):
    """Per user: the id-string embedding, then the embeddings of their training reviews.

    ``source``: ``reviews`` (``dataset.user_text``, one review per interaction in time
    order) or ``history_titles`` (the titles of the training items with their ratings, for
    datasets without reviews). ``profile`` adds the profile text (``dataset.user_features``)
    to the set; ``max_reviews`` keeps the most recent ones.
    """

    SOURCES = ("reviews", "history_titles")

    def __init__(
        self, source: str = "reviews", profile: bool = False, max_reviews: int = 20
    ) -> None:
        if source not in self.SOURCES:
            raise ValueError(
                f"review_attention: source must be one of {self.SOURCES}, got {source!r}"
            )
        if isinstance(max_reviews, bool) or not isinstance(max_reviews, int) or max_reviews < 1:
            raise ValueError(
                f"review_attention: max_reviews must be an int >= 1, got {max_reviews!r}"
            )
        self.source = source
        self.profile = profile
        self.max_reviews = max_reviews
        self.set_sizes: list[int] = []  # per user, after embed()

    def texts(self, dataset: RecDataset, split: Split) -> list[list[str]]:
        """Per user, the texts of the set after the id: training reviews (or titles), profile."""
        counts = [len(s) for s in train_sequences(split)]
        if self.source == "reviews":
            per_user = self._reviews(dataset, counts)
        else:
            per_user = self._rated_titles(dataset, counts)
        per_user = [texts[-self.max_reviews :] for texts in per_user]
        if self.profile:
            profiles = ProfileEmbedder().texts(dataset)
            per_user = [[*texts, profile] for texts, profile in zip(per_user, profiles)]
        empty = [u for u, texts in enumerate(per_user) if not texts]
        if empty:
            raise UserDataError(
                f"users.embedder 'review_attention': user {dataset.user_ids[empty[0]]!r} of "
                f"dataset {dataset.name!r} has no training {self.source.replace('_', ' ')} "
                f"({len(empty)} users have none); add profile: true or drop such users"
            )
        return per_user

    def _reviews(self, dataset: RecDataset, counts: list[int]) -> list[list[str]]:
        if dataset.user_text is None:
            raise UserDataError(
                f"users.embedder 'review_attention' needs reviews (user_text), which dataset "
                f"{dataset.name!r} ({dataset.source}) does not provide; use source: "
                "history_titles (titles of the training items with ratings) instead"
            )
        sequences = dataset.sequences()
        per_user = []
        for user, reviews in enumerate(dataset.user_text):
            if len(reviews) != len(sequences[user]):
                raise UserDataError(
                    f"users.embedder 'review_attention': user {dataset.user_ids[user]!r} has "
                    f"{len(reviews)} reviews but {len(sequences[user])} interactions in "
                    f"{dataset.source or dataset.name}; needs one review per interaction"
                )
            kept = [" ".join(r.split()) for r in reviews[: counts[user]]]
            per_user.append([r for r in kept if r])
        return per_user

    def _rated_titles(self, dataset: RecDataset, counts: list[int]) -> list[list[str]]:
        from semrec.data.dataset import field_text

        order = dataset.chronological_order()
        bounds = np.cumsum(np.bincount(dataset.users, minlength=dataset.num_users))[:-1]
        items = np.split(dataset.items[order], bounds)
        ratings = None if dataset.ratings is None else np.split(dataset.ratings[order], bounds)
        per_user = []
        for user, count in enumerate(counts):
            texts = []
            for k, item in enumerate(items[user][:count].tolist()):
                title = field_text(dataset, item, "title") or dataset.item_ids[item]
                rated = "" if ratings is None else f" (rating: {ratings[user][k]:g})"
                texts.append(title + rated)
            per_user.append(texts)
        return per_user

    def embed(
        self, dataset: RecDataset, split: Split, item_texts: Sequence[str], encode: Encode
    ) -> torch.Tensor:
        sets = self.texts(dataset, split)
        owners = encode([str(user_id) for user_id in dataset.user_ids])
        flat = encode([text for texts in sets for text in texts])
        width = max(len(texts) for texts in sets)
        packed = torch.zeros(dataset.num_users, 1 + width, owners.shape[1])
        packed[:, 0] = owners
        start = 0
        for user, texts in enumerate(sets):
            packed[user, 1 : 1 + len(texts)] = flat[start : start + len(texts)]
            start += len(texts)
        self.set_sizes = [len(texts) for texts in sets]
        return packed

    def notes(self) -> list[str]:
        sizes = self.set_sizes
        if not sizes:
            return []
        what = (
            "reviews"
            if self.source == "reviews"
            else "titles of training items with their ratings (a stand-in for reviews)"
        )
        extra = " plus the profile text" if self.profile else ""
        return [
            f"sets of {min(sizes)}-{max(sizes)} (mean {sum(sizes) / len(sizes):.1f}) {what}"
            f"{extra}, pooled by ULMRec's attention in the user tokenizer"
        ]


def build_user_embedder(name: str, **params: Any) -> UserEmbedder:
    """Instantiate the user embedder registered as ``name`` with ``params``."""
    return USER_EMBEDDERS.get(name)(**params)
