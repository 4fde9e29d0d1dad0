"""User preferences in words, as ULMRec's alignment tasks read them (section 4.2.2).

``preference_source``:

* ``annotations``: LLM-written preferences, ``annotations["preference"]["<user id>"]``
  (``semrec annotate --kind preference``; ULMRec asks GPT-3.5 to summarise the reviews);
* ``history``: a preference written from the user's training interactions only (never a
  valid or test item), for datasets without reviews or annotations, e.g.
  ``"Likes Drama, Comedy, Romance. Dislikes Horror. Favourites: Fargo (1996); Heat (1995).
  Profile: age 24, gender M, occupation technician."``: the most frequent categories of the
  items rated 4 or more (every item when there are no ratings), of those rated 2 or less, the
  latest best-rated titles and the profile fields (a category is never both liked and
  disliked).
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

import numpy as np

from semrec.data.dataset import RecDataset
from semrec.tasks.base import TaskContext, TaskDataError, check_choice
from semrec.tasks.intention import annotation_table, unmatched_annotations_error
from semrec.tasks.item_fields import field_text

PreferenceSource = Literal["annotations", "history"]
PREFERENCE_SOURCES = ("annotations", "history")
LIKED, DISLIKED = 4.0, 2.0  # rating thresholds of the derived preference
TOP_CATEGORIES, TOP_FAVOURITES = 3, 2
PROFILE_FIELDS = ("age", "gender", "occupation")


def check_preference_source(task: str, source: str) -> None:
    """Raise ``ValueError`` unless ``source`` is one of :data:`PREFERENCE_SOURCES`."""
    check_choice(task, "preference_source", source, PREFERENCE_SOURCES)


def preference_notes(task: str, source: str) -> list[str]:
    """The line a run prints when ``task`` reads preferences it did not get from an LLM."""
    if source != "history":
        return []
    return [
        f"{task}: preferences are written from the training history and profile "
        "(preference_source: history), not by an LLM from reviews"
    ]


def _categories(ds: RecDataset, items: list[int]) -> list[str]:
    counts = Counter(
        part.strip()
        for item in items
        for part in field_text(ds, item, "categories").split(",")
        if part.strip()
    )
    return [name for name, _ in counts.most_common(TOP_CATEGORIES)]


def derived_preference(
    ds: RecDataset, user: int, sequence: np.ndarray, rating_of: dict[tuple[int, int], float]
) -> str:
    """The ``history`` preference of ``user`` from their training ``sequence``; ``""`` if empty."""
    items = [int(i) for i in sequence]
    if not items:
        return ""
    rated = [(item, rating_of.get((user, item))) for item in items]
    liked = [i for i, r in rated if r is None or r >= LIKED]
    disliked = [i for i, r in rated if r is not None and r <= DISLIKED]
    parts = []
    liked_categories = _categories(ds, liked)
    if liked_categories:
        parts.append("Likes " + ", ".join(liked_categories) + ".")
    if categories := [c for c in _categories(ds, disliked) if c not in liked_categories]:
        parts.append("Dislikes " + ", ".join(categories) + ".")
    best = max((r for _, r in rated if r is not None), default=None)
    favourites = [i for i, r in rated if r == best] if best is not None else items
    titles = [field_text(ds, i, "title") for i in reversed(favourites)]
    titles = [t for t in titles if t][:TOP_FAVOURITES]
    if titles:
        parts.append("Favourites: " + "; ".join(titles) + ".")
    if ds.user_features is not None:
        profile = ds.user_features[user]
        fields = [f"{key} {profile[key]}" for key in PROFILE_FIELDS if profile.get(key)]
        if fields:
            parts.append("Profile: " + ", ".join(fields) + ".")
    return " ".join(parts)


def user_preferences(ctx: TaskContext, task: str, source: str) -> list[str]:
    """Every user's preference text (``""`` for a user without one), from ``source``."""
    if source == "history":
        if not ctx.split.train_sequences:
            raise TaskDataError(f"task {task!r} needs the split's train_sequences, which are empty")
        rating_of = ctx.dataset.ratings_by_pair
        return [
            derived_preference(ctx.dataset, user, sequence, rating_of)
            for user, sequence in enumerate(ctx.split.train_sequences)
        ]
    hint = ", or set the task's `params: {preference_source: history}`"
    table = annotation_table(ctx, task, "preference", hint)
    texts = [" ".join(table.get(user_id, "").split()) for user_id in ctx.dataset.user_ids]
    if not any(texts):
        raise unmatched_annotations_error(task, "preference", table, ctx.dataset.user_ids[0])
    return texts
