"""The in-memory dataset every later stage reads: interactions, item text, user text.

External ids (strings from the source files) are mapped to dense internal indices once,
here; everything downstream works with indices. List position in ``user_ids`` /
``item_ids`` *is* the internal index, and every per-item / per-user list is aligned to it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np


class DataError(ValueError):
    """Bad or inconsistent input data.

    The message always starts with the source file, then the line / record / field when
    known, e.g. ``data/ml.inter:12 (field 'timestamp'): expected an integer, got 'x'``.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | os.PathLike[str] | None = None,
        line: int | None = None,
        record: str | None = None,
        field: str | None = None,
    ) -> None:
        self.source = None if source is None else str(source)
        self.line = line
        self.record = record
        self.field = field
        location = self.source or ""
        if line is not None:
            location += f":{line}"
        details = []
        if record is not None:
            details.append(record)
        if field is not None:
            details.append(f"field {field!r}")
        if details:
            location += f" ({', '.join(details)})"
        super().__init__(f"{location}: {message}" if location else message)


@dataclass
class RecDataset:
    """Interactions plus the side information of one dataset.

    Interactions are parallel arrays (one entry per interaction, in file order):
    ``users`` and ``items`` hold internal indices, ``timestamps`` are int64 at full
    precision (float32 would round Unix seconds to 64 s and reorder histories), and
    ``ratings`` is float32 or ``None``.

    ``item_text[i]`` maps normalised field names (``title``, ``description``, ``brand``,
    ``categories``, ``year``, ...) to text. ``user_text[u]`` holds a user's reviews,
    ``user_features[u]`` their profile fields, ``precomputed_sids[i]`` an item's SID
    tokens from LC-Rec's ``index.json`` (e.g. ``["<a_1>", "<b_2>", "<c_3>"]``).
    """

    name: str
    user_ids: list[str]
    item_ids: list[str]
    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    ratings: np.ndarray | None = None
    item_text: list[dict[str, str]] = field(default_factory=list)
    user_text: list[list[str]] | None = None
    user_features: list[dict[str, str]] | None = None
    precomputed_sids: list[list[str]] | None = None
    source: str = ""

    def __post_init__(self) -> None:
        self.users = np.asarray(self.users, dtype=np.int64)
        self.items = np.asarray(self.items, dtype=np.int64)
        if np.asarray(self.timestamps).dtype.kind == "f":
            raise DataError(
                "timestamps must be integers (float timestamps lose precision)", source=self.source
            )
        self.timestamps = np.asarray(self.timestamps, dtype=np.int64)
        if self.ratings is not None:
            self.ratings = np.asarray(self.ratings, dtype=np.float32)
        if not self.item_text:
            self.item_text = [{} for _ in self.item_ids]
        self._validate()

    def _validate(self) -> None:
        n = len(self.users)
        for label, array in [("items", self.items), ("timestamps", self.timestamps)] + (
            [("ratings", self.ratings)] if self.ratings is not None else []
        ):
            if array.ndim != 1 or len(array) != n:
                raise DataError(
                    f"{label} has shape {array.shape}, expected ({n},) like users",
                    source=self.source,
                )
        for label, indices, count in [
            ("users", self.users, self.num_users),
            ("items", self.items, self.num_items),
        ]:
            if n and (indices.min() < 0 or indices.max() >= count):
                raise DataError(f"{label} holds indices outside [0, {count})", source=self.source)
        for label, ids in [("user_ids", self.user_ids), ("item_ids", self.item_ids)]:
            if len(set(ids)) != len(ids):
                raise DataError(f"{label} contains duplicates", source=self.source)
        aligned = [
            ("item_text", self.item_text, self.num_items),
            ("precomputed_sids", self.precomputed_sids, self.num_items),
            ("user_text", self.user_text, self.num_users),
            ("user_features", self.user_features, self.num_users),
        ]
        for label, values, count in aligned:
            if values is not None and len(values) != count:
                raise DataError(
                    f"{label} has {len(values)} entries, expected {count}", source=self.source
                )

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_interactions(self) -> int:
        return len(self.users)

    def item_index(self) -> dict[str, int]:
        """External item id -> internal index."""
        return {item_id: index for index, item_id in enumerate(self.item_ids)}

    def user_index(self) -> dict[str, int]:
        """External user id -> internal index."""
        return {user_id: index for index, user_id in enumerate(self.user_ids)}

    def chronological_order(self) -> np.ndarray:
        """Interaction positions sorted by (user, timestamp); ties keep file order."""
        return np.lexsort((self.timestamps, self.users))  # lexsort is stable

    def sequences(self) -> list[np.ndarray]:
        """Per user (by index), their item indices in chronological order."""
        if self.num_users == 0:
            return []
        order = self.chronological_order()
        counts = np.bincount(self.users, minlength=self.num_users)
        return np.split(self.items[order], np.cumsum(counts)[:-1])

    @cached_property
    def ratings_by_pair(self) -> dict[tuple[int, int], float]:
        """``(user, item) -> rating`` (the latest one when a pair repeats); ``{}`` unrated.
        Computed once per dataset object."""
        if self.ratings is None:
            return {}
        order = self.chronological_order()
        pairs = zip(self.users[order].tolist(), self.items[order].tolist())
        return dict(zip(pairs, self.ratings[order].tolist()))

    def item_popularity(self) -> np.ndarray:
        """Number of interactions per item (int64, length ``num_items``)."""
        return np.bincount(self.items, minlength=self.num_items)

    def summary(self) -> dict:
        """Counts and coverage, for logs and reports."""
        lengths = np.bincount(self.users, minlength=self.num_users)
        cells = self.num_users * self.num_items
        fields: dict[str, int] = {}
        for text in self.item_text:
            for name, value in text.items():
                if value.strip():
                    fields[name] = fields.get(name, 0) + 1
        return {
            "name": self.name,
            "source": self.source,
            "num_users": self.num_users,
            "num_items": self.num_items,
            "num_interactions": self.num_interactions,
            "density": self.num_interactions / cells if cells else 0.0,
            "sequence_length": {
                "min": int(lengths.min()) if len(lengths) else 0,
                "median": float(np.median(lengths)) if len(lengths) else 0.0,
                "max": int(lengths.max()) if len(lengths) else 0,
            },
            "has_ratings": self.ratings is not None,
            "item_text_fields": dict(sorted(fields.items())),
            "has_user_text": self.user_text is not None,
            "has_user_features": self.user_features is not None,
            "has_precomputed_sids": self.precomputed_sids is not None,
        }


def field_text(ds: RecDataset, item: int, field: str) -> str:
    """Item ``item``'s ``field`` with whitespace collapsed; ``""`` when absent or blank."""
    return " ".join(str(ds.item_text[item].get(field, "")).split())
