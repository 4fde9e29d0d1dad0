"""Online lookup of pre-cached recommendations (the file ``semrec predict`` writes)."""

from __future__ import annotations

from pathlib import Path

from semrec.serving.precache import read_predictions


class TopKCache:
    """Serves ``recommend(user, k)`` from a ``semrec predict`` file (JSONL or Parquet)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no prediction file; run `semrec predict`")
        self._table: dict[str, tuple[list[str], list[float]]] = {}
        self._record: dict[str, int] = {}  # user -> record number (1-based), for errors
        for number, record in enumerate(read_predictions(self.path), 1):
            where = f"{self.path}: record {number}"
            try:
                user, items, scores = record["user"], record["items"], record["scores"]
            except (KeyError, TypeError) as err:
                raise ValueError(f"{where} lacks the key {err}") from None
            if not isinstance(items, list) or not isinstance(scores, list):
                raise ValueError(f"{where}: items and scores must be lists")
            if len(items) != len(scores):
                raise ValueError(
                    f"{where}: user {str(user)[:80]!r} has {len(items)} items but "
                    f"{len(scores)} scores"
                )
            key = str(user)
            if key in self._table:
                raise ValueError(
                    f"{where}: user {key[:80]!r} is cached twice (first in record "
                    f"{self._record[key]}); a cache holds one line per user"
                )
            self._table[key] = ([str(item) for item in items], [float(s) for s in scores])
            self._record[key] = number

    def check_catalogue(self, item_ids: set[str] | frozenset[str]) -> None:
        """Refuse a cache naming an item that is not in the catalogue (``item_ids``)."""
        for user, (items, _) in self._table.items():
            unknown = [item for item in items if item not in item_ids]
            if unknown:
                raise ValueError(
                    f"{self.path}: record {self._record[user]} (user {user[:80]!r}) names "
                    f"{len(unknown)} item(s) not in the export's catalogue, e.g. "
                    f"{unknown[0][:80]!r}: the cache was written for another export"
                )

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, user: object) -> bool:
        return str(user) in self._table

    @property
    def k(self) -> int:
        """The most items cached for any user."""
        return max((len(items) for items, _ in self._table.values()), default=0)

    def recommend(self, user: str, k: int = 10) -> list[tuple[str, float]]:
        """The user's best ``k`` (item id, score) pairs, best first."""
        key = str(user)
        if key not in self._table:
            raise KeyError(f"user {key!r} is not in {self.path} ({len(self)} users cached)")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        items, scores = self._table[key]
        if k > len(items):
            raise ValueError(
                f"k={k} but {self.path} holds only {len(items)} items for user {key!r}; "
                "rerun `semrec predict` with a larger --k"
            )
        return list(zip(items[:k], scores[:k]))
