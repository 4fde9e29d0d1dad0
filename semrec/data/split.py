"""Filtering and the leave-one-out split (as in LC-Rec, TIGER and RecBole's ``LS``).

For a user whose chronological sequence is ``s`` (length ``n``):

- test:  history ``s[:n-1]``, target ``s[n-1]``;
- valid: history ``s[:n-2]``, target ``s[n-2]``;
- train: the training part ``s[:n-2]``; one example per prefix, targets ``s[1] .. s[n-3]``.

Histories keep only their last ``max_history`` items. Everything is deterministic: users in
index order, examples in time order, timestamp ties broken by file order.

Helpers for models fitted on training data only: :func:`sequences_from_examples` (each
user's sequence, chained back from the examples), :func:`holdout_last_train` (an inner
split for early stopping without valid targets) and :func:`fingerprint_examples`.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from semrec.artifacts import content_hash
from semrec.data.dataset import DataError, RecDataset

MIN_SEQUENCE_LENGTH = 3


def kcore_filter(ds: RecDataset, k: int) -> RecDataset:
    """Keep the largest subset where every user and item has at least ``k`` interactions.

    Filtering repeats until stable (dropping items can push users below ``k`` and back).
    Users and items left without interactions are removed and re-indexed in their original
    order; all side information stays aligned, per-interaction reviews included (see
    :func:`select_interactions`). ``k <= 1`` is a no-op.
    """
    if k <= 1:
        return ds
    keep = np.ones(ds.num_interactions, dtype=bool)
    while True:
        user_counts = np.bincount(ds.users[keep], minlength=ds.num_users)
        item_counts = np.bincount(ds.items[keep], minlength=ds.num_items)
        still_ok = keep & (user_counts[ds.users] >= k) & (item_counts[ds.items] >= k)
        if np.array_equal(still_ok, keep):
            break
        keep = still_ok

    return select_interactions(ds, keep)


def select_interactions(ds: RecDataset, keep: np.ndarray) -> RecDataset:
    """``ds`` with only the interactions where the bool mask ``keep`` is true.

    Users and items left without interactions are removed and re-indexed in their original
    order; all per-user / per-item side information stays aligned. A user's ``user_text``
    holding one review per interaction (as many as the user has interactions, in time
    order, the convention the review tasks read) loses the reviews of the dropped
    interactions; other review lists are kept whole.
    """
    keep = np.asarray(keep, dtype=bool)
    if keep.shape != (ds.num_interactions,):
        raise ValueError(f"keep has shape {keep.shape}, expected ({ds.num_interactions},)")
    kept_users = np.flatnonzero(np.bincount(ds.users[keep], minlength=ds.num_users))
    kept_items = np.flatnonzero(np.bincount(ds.items[keep], minlength=ds.num_items))
    new_user = np.full(ds.num_users, -1, dtype=np.int64)
    new_user[kept_users] = np.arange(len(kept_users))
    new_item = np.full(ds.num_items, -1, dtype=np.int64)
    new_item[kept_items] = np.arange(len(kept_items))

    def per_user(values: list | None) -> list | None:
        return None if values is None else [values[u] for u in kept_users]

    def per_item(values: list | None) -> list | None:
        return None if values is None else [values[i] for i in kept_items]

    return RecDataset(
        name=ds.name,
        user_ids=per_user(ds.user_ids),
        item_ids=per_item(ds.item_ids),
        users=new_user[ds.users[keep]],
        items=new_item[ds.items[keep]],
        timestamps=ds.timestamps[keep],
        ratings=None if ds.ratings is None else ds.ratings[keep],
        item_text=per_item(ds.item_text),
        user_text=_kept_reviews(ds, keep, kept_users),
        user_features=per_user(ds.user_features),
        precomputed_sids=per_item(ds.precomputed_sids),
        source=ds.source,
    )


def _kept_reviews(
    ds: RecDataset, keep: np.ndarray, kept_users: np.ndarray
) -> list[list[str]] | None:
    """``ds.user_text`` of ``kept_users``; per-interaction reviews follow ``keep``."""
    if ds.user_text is None:
        return None
    counts = np.bincount(ds.users, minlength=ds.num_users)
    kept_in_time_order = np.split(keep[ds.chronological_order()], np.cumsum(counts)[:-1])
    reviews = []
    for user in kept_users.tolist():
        texts = ds.user_text[user]
        if len(texts) == counts[user]:  # one per interaction: drop the filtered ones
            texts = [text for text, kept in zip(texts, kept_in_time_order[user]) if kept]
        reviews.append(list(texts))
    return reviews


@dataclass(frozen=True)
class Example:
    """One next-item prediction: after ``history`` (oldest first), ``user`` chose ``target``."""

    user: int
    history: tuple[int, ...]
    target: int


@dataclass
class Split:
    """Leave-one-out examples plus what evaluation needs to know about the catalogue.

    ``train_sequences[u]`` is user ``u``'s training part ``s[:n-2]`` (empty for dropped
    users); use it for anything fitted on training data only (popularity, co-occurrence).
    """

    train: list[Example]
    valid: list[Example]
    test: list[Example]
    num_items: int
    num_users: int
    train_sequences: list[np.ndarray] = field(default_factory=list)
    dropped_users: int = 0
    _valid_targets: dict[int, int] | None = field(default=None, repr=False, compare=False)

    def train_item_counts(self) -> np.ndarray:
        """Per item, how often it occurs in the users' training parts (int64)."""
        if not self.train_sequences:
            return np.zeros(self.num_items, dtype=np.int64)
        return np.bincount(np.concatenate(self.train_sequences), minlength=self.num_items)

    def seen_items(self, example: Example, part: Literal["valid", "test"]) -> list[int]:
        """Every item ``example.user`` interacted with before the target of ``part``, uncapped.

        For a valid example that is the user's training part; for a test example also the
        valid target. (``example.history`` is capped at ``max_history``; this is not.)
        """
        seen = self.train_sequences[example.user].tolist()
        if part == "test":
            if self._valid_targets is None:
                self._valid_targets = {ex.user: ex.target for ex in self.valid}
            seen.append(self._valid_targets[example.user])
        elif part != "valid":
            raise ValueError(f"part must be 'valid' or 'test', got {part!r}")
        return seen

    def summary(self) -> dict:
        return {
            "num_users": self.num_users,
            "num_items": self.num_items,
            "train_examples": len(self.train),
            "valid_examples": len(self.valid),
            "test_examples": len(self.test),
            "dropped_users": self.dropped_users,
        }


def leave_one_out(
    ds: RecDataset,
    max_history: int | None = 20,
    max_train_examples_per_user: int | None = None,
    short_users: Literal["error", "drop"] = "error",
) -> Split:
    """Split every user's sequence into train / valid / test examples (see module docstring).

    ``max_history=None`` keeps whole histories; ``max_train_examples_per_user`` keeps each
    user's most recent training examples. Users with fewer than 3 interactions raise a
    ``DataError`` unless ``short_users="drop"``.
    """
    if max_history is not None and max_history < 1:
        raise ValueError(f"max_history must be >= 1 or None, got {max_history}")
    if max_train_examples_per_user is not None and max_train_examples_per_user < 1:
        raise ValueError(
            f"max_train_examples_per_user must be >= 1 or None, got {max_train_examples_per_user}"
        )
    if short_users not in ("error", "drop"):
        raise ValueError(f"short_users must be 'error' or 'drop', got {short_users!r}")

    if ds.num_interactions == 0 or ds.num_users == 0:
        raise DataError(
            "no interactions left to split: leave-one-out needs users with >= "
            f"{MIN_SEQUENCE_LENGTH} interactions each. If a k-core filter ran "
            "(dataset.kcore), it removed every user and item: lower dataset.kcore",
            source=ds.source or ds.name,
        )
    sequences = ds.sequences()
    short = [u for u, seq in enumerate(sequences) if len(seq) < MIN_SEQUENCE_LENGTH]
    if short and short_users == "error":
        first = short[0]
        raise DataError(
            f"user {ds.user_ids[first]!r} has {len(sequences[first])} interaction(s) and "
            f"{len(short)} of {ds.num_users} users have fewer than {MIN_SEQUENCE_LENGTH}, "
            "which leave-one-out needs (one each for train, valid and test). Set "
            "`dataset.short_users: drop` or apply a k-core filter (k >= 3).",
            source=ds.source or ds.name,
        )

    def clip(history: np.ndarray) -> tuple[int, ...]:
        if max_history is not None:
            history = history[-max_history:]
        return tuple(history.tolist())

    short_set = set(short)
    train: list[Example] = []
    valid: list[Example] = []
    test: list[Example] = []
    train_sequences: list[np.ndarray] = []
    for user, seq in enumerate(sequences):
        if user in short_set:
            train_sequences.append(seq[:0])
            continue
        n = len(seq)
        train_part = seq[: n - 2]
        train_sequences.append(train_part)
        first_target = 1
        if max_train_examples_per_user is not None:
            first_target = max(1, len(train_part) - max_train_examples_per_user)
        for t in range(first_target, len(train_part)):
            train.append(Example(user, clip(train_part[:t]), int(train_part[t])))
        valid.append(Example(user, clip(seq[: n - 2]), int(seq[n - 2])))
        test.append(Example(user, clip(seq[: n - 1]), int(seq[n - 1])))

    return Split(
        train=train,
        valid=valid,
        test=test,
        num_items=ds.num_items,
        num_users=ds.num_users,
        train_sequences=train_sequences,
        dropped_users=len(short),
    )


def _by_user(examples: Sequence[Example]) -> dict[int, list[Example]]:
    grouped: dict[int, list[Example]] = {}
    for example in examples:
        grouped.setdefault(example.user, []).append(example)
    return grouped


def sequences_from_examples(examples: Sequence[Example], num_users: int) -> list[np.ndarray]:
    """Per user, the item sequence that their next-item ``examples`` were cut from (int64).

    A user's examples (in the order given) must be consecutive prefixes of one sequence, as
    :func:`leave_one_out` makes them: the sequence is the first example's history followed
    by every example's target, and each later history must end that sequence so far (it may
    be capped, i.e. shorter). Applied to ``split.train`` this is ``s[:n-2]`` again, except
    for items before the first kept example under ``max_train_examples_per_user`` (and the
    lone item of users with no training example, who get an empty sequence); it reads no
    valid or test target. A ``ValueError`` names the first user whose examples do not chain.
    """
    sequences = [np.zeros(0, dtype=np.int64) for _ in range(num_users)]
    for user, user_examples in _by_user(examples).items():
        if not 0 <= user < num_users:
            raise ValueError(f"example user {user} is outside [0, {num_users})")
        sequence = list(user_examples[0].history)
        for position, example in enumerate(user_examples):
            history = example.history
            if position and (not history or tuple(sequence[-len(history) :]) != history):
                raise ValueError(
                    f"user {user}: example {position} (history {history}) does not continue "
                    f"the sequence {sequence[-len(history) - 1 :]} of the examples before it; "
                    "examples must be consecutive prefixes of one sequence"
                )
            sequence.append(example.target)
        sequences[user] = np.asarray(sequence, dtype=np.int64)
    return sequences


def items_in_train(split: Split) -> np.ndarray:
    """Bool [num_items]: whether the item occurs in a training sequence (history or target)."""
    seen = np.zeros(split.num_items, dtype=bool)
    for sequence in sequences_from_examples(split.train, split.num_users):
        seen[sequence] = True
    return seen


def holdout_last_train(split: Split) -> Split:
    """A train-only split: each user's last train example becomes their valid example.

    Users with a single train example keep it in train (and get no valid example); ``test``
    is empty. Early stopping on the result never reads a valid or test target of
    ``split``. ``train_sequences`` (when ``split`` has them) lose the held-out target.
    """
    train: list[Example] = []
    valid: list[Example] = []
    for user_examples in _by_user(split.train).values():
        if len(user_examples) == 1:
            train.extend(user_examples)
        else:
            train.extend(user_examples[:-1])
            valid.append(user_examples[-1])
    train_sequences = list(split.train_sequences)
    for example in valid if train_sequences else ():
        sequence = train_sequences[example.user]
        if not len(sequence) or sequence[-1] != example.target:
            raise ValueError(
                f"user {example.user}: the last train target {example.target} is not the last "
                f"item of train_sequences[{example.user}]"
            )
        train_sequences[example.user] = sequence[:-1]
    return dataclasses.replace(
        split,
        train=train,
        valid=valid,
        test=[],
        train_sequences=train_sequences,
        _valid_targets=None,
    )


def fingerprint_examples(examples: Sequence[Example]) -> str:
    """Content hash of the examples' users, histories and targets, in order."""
    count = len(examples)
    users = np.fromiter((ex.user for ex in examples), np.int64, count)
    targets = np.fromiter((ex.target for ex in examples), np.int64, count)
    lengths = np.fromiter((len(ex.history) for ex in examples), np.int64, count)
    items = np.fromiter(itertools.chain.from_iterable(ex.history for ex in examples), np.int64)
    return content_hash(
        count, users.tobytes(), targets.tobytes(), lengths.tobytes(), items.tobytes()
    )
