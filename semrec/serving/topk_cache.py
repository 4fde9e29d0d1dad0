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
        for record in read_predictions(self.path):
            try:
                user, items, scores = record["user"], record["items"], record["scores"]
            except KeyError as err:
                raise ValueError(f"{self.path}: a record lacks the key {err}: {record}") from None
            if len(items) != len(scores):
                raise ValueError(
                    f"{self.path}: user {user!r} has {len(items)} items but {len(scores)} scores"
                )
            self._table[str(user)] = (list(items), [float(s) for s in scores])

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
