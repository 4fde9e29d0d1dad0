"""Pre-computed top-K recommendations per user (Semantic Convergence's serving, Fig. 3).

The paper serves an LLM recommender by caching, for every user, the top-K *valid* items
(SIDs that are real items) from a constrained beam search, so online inference is a
lookup. :class:`PredictionWriter` writes that cache as JSON lines, one user per line::

    {"user": "196", "items": ["242", "302", ...], "scores": [-1.93, -2.41, ...]}

and a ``<name>.meta.json`` next to it (what produced it: the run's training fingerprint,
``k``, whether seen items were excluded). Writing is resumable: lines are appended batch by
batch and flushed to disk; a killed writer leaves at most one partial last line, which the
next writer drops before it continues with the users that are not in the file yet, so the
finished file holds every requested user exactly once. A meta file that disagrees with the
new request (another model, another ``k``) is refused rather than mixed into.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from semrec.artifacts import atomic_write, read_json, write_json


class PredictionError(ValueError):
    """The prediction file cannot be continued as asked."""


class PredictionWriter:
    """Appends users' top-K lists to ``path`` (JSONL), continuing a file left by a killed run."""

    def __init__(self, path: str | Path, meta: dict[str, Any]) -> None:
        self.path = Path(path)
        self.meta_path = self.path.with_suffix(".meta.json")
        self.meta = meta
        self.done: set[str] = set()
        self._open()

    def _open(self) -> None:
        if self.path.exists():
            check_written_for(self.path, self.meta)
            self.done = self._complete_users()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.meta_path, self.meta)
            self.path.touch()

    def _complete_users(self) -> set[str]:
        """Users with a complete line; a partial last line (a kill mid-write) is cut off."""
        records, keep = complete_lines(self.path)
        if keep != self.path.stat().st_size:
            with open(self.path, "r+b") as fh:
                fh.truncate(keep)
        return {record["user"] for record in records}

    def pending(self, users: Sequence[str]) -> list[str]:
        """``users`` not in the file yet, in order."""
        return [user for user in users if user not in self.done]

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        """Append one batch of records in one write, flushed to disk."""
        lines = []
        for record in records:
            if record["user"] in self.done:
                raise PredictionError(f"user {record['user']!r} is already in {self.path}")
            lines.append(json.dumps(record, separators=(",", ":")) + "\n")
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write("".join(lines))
            fh.flush()
            os.fsync(fh.fileno())
        self.done.update(record["user"] for record in map(json.loads, lines))


def check_written_for(path: Path, meta: dict[str, Any]) -> None:
    """Raise :class:`PredictionError` unless the existing prediction file ``path`` was
    written for ``meta`` (its ``.meta.json`` holds exactly that), naming what differs."""
    meta_path = path.with_suffix(".meta.json")
    if not meta_path.is_file():
        raise PredictionError(
            f"{path} exists but has no {meta_path.name}: it was not written by semrec "
            "predict; move it away or choose another --output"
        )
    stored = read_json(meta_path)
    differs = [key for key in dict.fromkeys([*meta, *stored]) if stored.get(key) != meta.get(key)]
    if differs:
        detail = ", ".join(f"{key}: {stored.get(key)!r} -> {meta.get(key)!r}" for key in differs)
        raise PredictionError(
            f"{path} was written for another request ({detail}); nothing was changed. "
            "Delete it (and its .meta.json) to start over, or pick another --output"
        )


def shard_path(path: str | Path, shard: int, shards: int) -> Path:
    """Where shard ``shard`` of ``shards`` of the prediction file ``path`` is written."""
    path = Path(path)
    return path.with_name(f"{path.stem}.shard-{shard}-of-{shards}{path.suffix}")


def merge_shards(path: str | Path, shards: int, users: Sequence[str], meta: dict[str, Any]) -> Path:
    """Join the shard files of ``path`` into ``path`` itself, then delete the shards.

    As an unsharded predict appends: the users ``path`` already holds (for the same
    ``meta``) stay first, then each other user of ``users`` once, in that order. Every shard
    must have been written for ``meta`` (the same model and request) and the shards must
    hold every user of ``users`` that ``path`` lacks; a user in two places must have the
    same list in both. Raises :class:`PredictionError` otherwise, leaving every file as it
    was. The merged file and its meta appear atomically.
    """
    path = Path(path)
    finished = finished_records(path, meta)
    records: dict[str, dict[str, Any]] = dict(finished)
    for shard in range(shards):
        part = shard_path(path, shard, shards)
        if not part.is_file():
            raise PredictionError(f"{part}: shard {shard} of {shards} was not written")
        check_written_for(part, {**meta, "shard": [shard, shards]})
        for record in read_predictions(part):
            user = record["user"]
            if user in records and records[user] != record:
                raise PredictionError(f"user {user!r} has two different lists in the shards")
            records[user] = record
    missing = [user for user in users if user not in records]
    if missing:
        raise PredictionError(
            f"the {shards} shards of {path} lack {len(missing)} user(s), e.g. {missing[0]!r}: "
            "a shard is unfinished (run it again; it continues where it stopped)"
        )
    order = list(finished) + [user for user in dict.fromkeys(users) if user not in finished]
    write_json(path.with_suffix(".meta.json"), meta)  # first: a file without it is refused
    with atomic_write(path) as fh:
        for user in order:
            fh.write(json.dumps(records[user], separators=(",", ":")) + "\n")
    for shard in range(shards):
        part = shard_path(path, shard, shards)
        part.unlink()
        part.with_suffix(".meta.json").unlink()
    return path


def finished_records(path: str | Path, meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The complete records (user -> record, in file order) of the prediction file
    ``path`` if it was written for ``meta``; none if it does not exist. A partial last line
    (a killed writer) is left out. Raises :class:`PredictionError` for another request's."""
    path = Path(path)
    if not path.exists():
        return {}
    check_written_for(path, meta)
    return {record["user"]: record for record in complete_lines(path)[0]}


def complete_lines(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The records of a prediction file's complete lines, and their bytes: a partial last
    line (a writer killed mid-write) and anything after it are not read."""
    records, size = [], 0
    with open(path, "rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                break
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
            size += len(line)
    return records, size


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    """All records of a prediction file (JSONL or Parquet)."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    records = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not a JSON record ({err})") from None
    return records


def write_parquet(jsonl: str | Path) -> Path | None:
    """A Parquet copy of a finished JSONL file, next to it; None when pyarrow is missing."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return None
    jsonl = Path(jsonl)
    target = jsonl.with_suffix(".parquet")
    table = pa.Table.from_pylist(read_predictions(jsonl))
    with atomic_write(target, "wb") as fh:
        pq.write_table(table, fh)
    return target
