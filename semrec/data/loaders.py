"""Dataset loaders, one per on-disk format, selected by name through ``DATASET_LOADERS``.

A loader is a function ``(path, name) -> RecDataset``; keyword-only parameters after those
are its options (``dataset.options`` in a config, ``--option`` of ``semrec convert``). Add
a format without touching this module::

    @DATASET_LOADERS.register("my_format")
    def load_my_format(path: str | None, name: str | None, *, kcore: int = 5) -> RecDataset: ...

Built in:

- ``recbole``: RecBole atomic files ``<path>/<name>.inter`` (+ optional ``.item``, ``.user``);
- ``lcrec_json``: LC-Rec's ``<name>.inter.json`` / ``.item.json`` (+ optional ``.index.json``,
  ``.review.json``);
- ``ml-100k``: MovieLens-100k as shipped inside the ``recbole`` wheel;
- ``amazon2014`` / ``amazon2018`` / ``amazon2023``: Amazon review dumps
  (:mod:`semrec.data.amazon`).

Repeated interactions: a user may interact with the same item more than once (a re-watch,
a re-purchase); every occurrence is kept, in time order. Rows that repeat the same user, item
*and* timestamp are not repeats but duplicated lines (a file concatenated twice, a bad
join): ``recbole`` rejects them, naming both lines. Without a ``timestamp`` column each line
is its own time step, so nothing counts as duplicated; LC-Rec histories are positions, so
the same holds there. A JSON object that repeats a key (a user in ``inter.json``, an item
in ``item.json``) is rejected, where ``json`` would silently keep only the last value.

Item fields are renamed to semrec's normalised names (``movie_title`` -> ``title``,
``class``/``genre`` -> ``categories``, ``release_year`` -> ``year``); other fields keep their
own names.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semrec.data.dataset import DataError, RecDataset
from semrec.registry import Registry

DatasetLoader = Callable[[str | None, str | None], RecDataset]

DATASET_LOADERS: Registry[DatasetLoader] = Registry("dataset source")

ITEM_FIELD_ALIASES = {
    "movie_title": "title",
    "title": "title",
    "class": "categories",
    "genre": "categories",
    "genres": "categories",
    "category": "categories",
    "categories": "categories",
    "release_year": "year",
    "year": "year",
    "description": "description",
    "brand": "brand",
}

_ATOMIC_TYPES = {"token", "token_seq", "float", "float_seq"}

# SID tokens as semrec's tokenizers read them: <prefix_code>, e.g. <a_12> (one or more)
_SID_TOKENS = re.compile(r"(?:<[^<>_\s]+_\d+>)+")


def load_dataset(
    source: str, path: str | None = None, name: str | None = None, **options: Any
) -> RecDataset:
    """Load a dataset with the loader registered under ``source``.

    ``path`` is the directory holding the files and ``name`` their common prefix
    (default: the directory's name); ``options`` go to the loader (see
    :func:`dataset_options`). Unknown sources raise ``UnknownComponentError`` listing the
    registered ones, unknown options a ``ValueError`` listing the accepted ones.
    """
    loader = DATASET_LOADERS.get(source)
    accepted = dataset_options(source)
    unknown = [key for key in options if key not in accepted]
    if unknown:
        raise ValueError(
            f"dataset source {source!r} has no option {unknown[0]!r} "
            f"(options: {', '.join(accepted) or 'none'})"
        )
    return loader(path, name, **options)


def dataset_options(source: str) -> list[str]:
    """Names of the options (keyword-only parameters) of the loader registered as ``source``."""
    parameters = inspect.signature(DATASET_LOADERS.get(source)).parameters.values()
    return [p.name for p in parameters if p.kind is p.KEYWORD_ONLY]


# --------------------------------------------------------------------------- helpers


def _join_categories(parts: Iterable[Any]) -> str:
    return ", ".join(str(part).strip() for part in parts if str(part).strip())


def _categories_from_text(value: str, whitespace_separated: bool) -> str:
    """Comma-separated lists stay lists; RecBole ``token_seq`` without commas splits on spaces."""
    if "," in value:
        return _join_categories(value.split(","))
    return _join_categories(value.split()) if whitespace_separated else value.strip()


def _parse_timestamp(text: str) -> int:
    """Integer timestamp without a detour through float32 (``"1.5e9"`` still works)."""
    try:
        return int(text)
    except ValueError:
        value = float(text)  # ValueError propagates
        if not math.isfinite(value):
            raise ValueError(text) from None
        return int(value)


def _dataset_dir(source: str, path: str | None, name: str | None) -> tuple[Path, str]:
    if path is None:
        raise DataError(f"the {source!r} dataset source needs a path (the data directory)")
    directory = Path(path)
    if not directory.is_dir():
        raise DataError("dataset directory does not exist", source=directory)
    return directory, name or directory.name


def _require_file(path: Path, kind: str) -> None:
    if not path.is_file():
        found = sorted(p.name for p in path.parent.iterdir() if p.is_file())
        raise DataError(
            f"missing {kind} file (files in {path.parent}: {', '.join(found) or 'none'})",
            source=path,
        )


# --------------------------------------------------------------------------- RecBole


@dataclass
class _AtomicFile:
    """A parsed RecBole atomic file: header ``name:type`` columns and the data rows."""

    path: Path
    names: list[str]
    types: list[str]
    rows: list[tuple[int, list[str]]]  # (line number, values)

    def column(self, name: str) -> int:
        if name not in self.names:
            raise DataError(
                f"missing required column {name!r} (columns: {', '.join(self.names)})",
                source=self.path,
                line=1,
            )
        return self.names.index(name)

    def optional_column(self, name: str) -> int | None:
        return self.names.index(name) if name in self.names else None


def _read_atomic(path: Path) -> _AtomicFile:
    names: list[str] = []
    types: list[str] = []
    rows: list[tuple[int, list[str]]] = []
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"not valid UTF-8 ({err.reason})", source=path, line=lineno
                ) from None
            if lineno == 1:
                names, types = _parse_header(line, path)
                continue
            if not line.strip():
                continue
            values = line.split("\t")
            if len(values) != len(names):
                raise DataError(
                    f"expected {len(names)} tab-separated fields ({', '.join(names)}), "
                    f"got {len(values)}",
                    source=path,
                    line=lineno,
                )
            rows.append((lineno, values))
    if not names:
        raise DataError("empty file: expected a header of name:type columns", source=path)
    return _AtomicFile(path, names, types, rows)


def _parse_header(line: str, path: Path) -> tuple[list[str], list[str]]:
    names, types = [], []
    for column in line.split("\t"):
        name, sep, type_ = column.strip().partition(":")
        if not sep or not name:
            raise DataError(
                f"header column {column!r} is not of the form name:type", source=path, line=1
            )
        if type_ not in _ATOMIC_TYPES:
            raise DataError(
                f"unknown type {type_!r} (expected one of {', '.join(sorted(_ATOMIC_TYPES))})",
                source=path,
                line=1,
                field=name,
            )
        if name in names:
            raise DataError("duplicate column", source=path, line=1, field=name)
        names.append(name)
        types.append(type_)
    return names, types


def _read_item_file(path: Path) -> dict[str, dict[str, str]]:
    """``.item`` rows -> item id -> normalised text fields, in file order."""
    table = _read_atomic(path)
    id_col = table.column("item_id")
    renamed: dict[str, str] = {}
    for col, name in enumerate(table.names):
        if col == id_col:
            continue
        key = ITEM_FIELD_ALIASES.get(name, name)
        if key in renamed.values():
            first = next(raw for raw, norm in renamed.items() if norm == key)
            raise DataError(
                f"columns {first!r} and {name!r} both map to item field {key!r}",
                source=path,
                line=1,
            )
        renamed[name] = key
    items: dict[str, dict[str, str]] = {}
    first_line: dict[str, int] = {}
    for lineno, values in table.rows:
        item_id = values[id_col].strip()
        if not item_id:
            raise DataError("empty item id", source=path, line=lineno, field="item_id")
        if item_id in items:
            raise DataError(
                f"item {item_id!r} already defined on line {first_line[item_id]}",
                source=path,
                line=lineno,
            )
        text: dict[str, str] = {}
        for col, (name, type_) in enumerate(zip(table.names, table.types)):
            value = values[col].strip()
            if col == id_col or not value:
                continue
            key = renamed[name]
            if key == "categories":
                value = _categories_from_text(value, whitespace_separated=type_ == "token_seq")
            text[key] = value
        items[item_id] = text
        first_line[item_id] = lineno
    return items


def _read_user_file(path: Path) -> dict[str, dict[str, str]]:
    """``.user`` rows -> user id -> profile fields (raw names), in file order."""
    table = _read_atomic(path)
    id_col = table.column("user_id")
    users: dict[str, dict[str, str]] = {}
    for lineno, values in table.rows:
        user_id = values[id_col].strip()
        if user_id in users:
            raise DataError(f"user {user_id!r} defined twice", source=path, line=lineno)
        users[user_id] = {
            name: value.strip()
            for col, (name, value) in enumerate(zip(table.names, values))
            if col != id_col and value.strip()
        }
    return users


@DATASET_LOADERS.register("recbole")
def load_recbole(path: str | None, name: str | None = None) -> RecDataset:
    """RecBole atomic files ``<path>/<name>.inter`` and optional ``.item`` / ``.user``.

    Items are indexed in ``.item`` file order (catalogue items without interactions are
    kept), else in order of first appearance in ``.inter``. Users are indexed in ``.user``
    order, else first appearance; only users with interactions are kept. Without a
    ``timestamp`` column the line order is the time order.
    """
    directory, name = _dataset_dir("recbole", path, name)
    inter_path = directory / f"{name}.inter"
    _require_file(inter_path, "interaction (.inter)")
    item_path, user_path = directory / f"{name}.item", directory / f"{name}.user"
    item_table = _read_item_file(item_path) if item_path.is_file() else None
    user_table = _read_user_file(user_path) if user_path.is_file() else None

    inter = _read_atomic(inter_path)
    user_col, item_col = inter.column("user_id"), inter.column("item_id")
    time_col, rating_col = inter.optional_column("timestamp"), inter.optional_column("rating")

    item_index: dict[str, int] = {item_id: i for i, item_id in enumerate(item_table or {})}
    user_first: dict[str, int] = {}
    raw_users: list[str] = []
    item_idx = np.empty(len(inter.rows), dtype=np.int64)
    timestamps = np.empty(len(inter.rows), dtype=np.int64)
    ratings = np.empty(len(inter.rows), dtype=np.float32) if rating_col is not None else None
    for row, (lineno, values) in enumerate(inter.rows):
        user_id, item_id = values[user_col].strip(), values[item_col].strip()
        if not user_id or not item_id:
            field = "user_id" if not user_id else "item_id"
            raise DataError("empty id", source=inter_path, line=lineno, field=field)
        if item_id not in item_index:
            if item_table is not None:
                raise DataError(
                    f"item {item_id!r} is not in {item_path}",
                    source=inter_path,
                    line=lineno,
                    field="item_id",
                )
            item_index[item_id] = len(item_index)
        if user_id not in user_first:
            if user_table is not None and user_id not in user_table:
                raise DataError(
                    f"user {user_id!r} is not in {user_path}",
                    source=inter_path,
                    line=lineno,
                    field="user_id",
                )
            user_first[user_id] = len(user_first)
        raw_users.append(user_id)
        item_idx[row] = item_index[item_id]
        if time_col is None:
            timestamps[row] = row
        else:
            try:
                timestamps[row] = _parse_timestamp(values[time_col].strip())
            except (ValueError, OverflowError):
                raise DataError(
                    f"expected an integer timestamp, got {values[time_col]!r}",
                    source=inter_path,
                    line=lineno,
                    field="timestamp",
                ) from None
        if ratings is not None:
            try:
                rating = float(values[rating_col])
            except ValueError:
                rating = math.nan
            if not math.isfinite(rating):
                raise DataError(
                    f"expected a finite number, got {values[rating_col]!r}",
                    source=inter_path,
                    line=lineno,
                    field="rating",
                )
            ratings[row] = rating

    if not inter.rows:
        raise DataError(
            "no interactions: the file has a header but no data rows", source=inter_path
        )
    if time_col is not None:
        first_index = np.fromiter(
            (user_first[u] for u in raw_users), dtype=np.int64, count=len(raw_users)
        )
        _reject_duplicate_rows(inter, first_index, item_idx, timestamps, raw_users, item_index)

    if user_table is not None:
        user_ids = [user_id for user_id in user_table if user_id in user_first]
    else:
        user_ids = list(user_first)
    user_index = {user_id: i for i, user_id in enumerate(user_ids)}
    item_ids = list(item_index)
    return RecDataset(
        name=name,
        user_ids=user_ids,
        item_ids=item_ids,
        users=np.fromiter((user_index[u] for u in raw_users), dtype=np.int64, count=len(raw_users)),
        items=item_idx,
        timestamps=timestamps,
        ratings=ratings,
        item_text=[dict(item_table[i]) for i in item_ids] if item_table is not None else [],
        user_features=[dict(user_table[u]) for u in user_ids] if user_table is not None else None,
        source=str(inter_path),
    )


def _reject_duplicate_rows(
    inter: _AtomicFile,
    users: np.ndarray,
    items: np.ndarray,
    timestamps: np.ndarray,
    raw_users: list[str],
    item_index: dict[str, int],
) -> None:
    """Rows repeating the same (user, item, timestamp) are duplicated lines: name them."""
    order = np.lexsort((np.arange(len(users)), timestamps, items, users))  # stable
    same = (
        (users[order][1:] == users[order][:-1])
        & (items[order][1:] == items[order][:-1])
        & (timestamps[order][1:] == timestamps[order][:-1])
    )
    if not same.any():
        return
    repeats = order[1:][same]
    originals = order[:-1][same]
    first = int(np.argmin(repeats))  # the earliest repeating line in the file
    row, original = int(repeats[first]), int(originals[first])
    item_ids = list(item_index)
    raise DataError(
        f"{len(repeats)} duplicated interaction row(s) (same user, item and timestamp); this "
        f"one repeats line {inter.rows[original][0]}: user {raw_users[row]!r}, item "
        f"{item_ids[int(items[row])]!r}, timestamp {int(timestamps[row])}. Remove the "
        "duplicated lines (repeat interactions at different timestamps are kept)",
        source=inter.path,
        line=inter.rows[row][0],
    )


# --------------------------------------------------------------------------- LC-Rec JSON


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise _DuplicateKey(key)
        data[key] = value
    return data


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        raise DataError(
            f"invalid JSON: {err.msg} (column {err.colno})", source=path, line=err.lineno
        ) from None
    except UnicodeDecodeError as err:
        raise DataError(f"not valid UTF-8 ({err.reason})", source=path) from None
    except _DuplicateKey as err:
        raise DataError(
            f"key {err.args[0]!r} appears twice in one JSON object (JSON would keep only the "
            "last value); merge or remove the duplicate",
            source=path,
        ) from None
    if not isinstance(data, dict):
        raise DataError(
            f"expected a JSON object at top level, got {type(data).__name__}", source=path
        )
    return data


def _text_value(value: Any, key: str) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        joined = _join_categories if key == "categories" else " ".join
        return joined(str(part) for part in value)
    if key == "categories":
        return _categories_from_text(str(value), whitespace_separated=False)
    return str(value).strip()


def _lcrec_item_text(raw: Any, item_id: str, path: Path) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise DataError(
            f"expected an object of text fields, got {type(raw).__name__}",
            source=path,
            record=f"item {item_id!r}",
        )
    text: dict[str, str] = {}
    for name, value in raw.items():
        key = ITEM_FIELD_ALIASES.get(name, name)
        if key in text:
            raise DataError(
                f"two fields map to item field {key!r}", source=path, record=f"item {item_id!r}"
            )
        value = _text_value(value, key)
        if value:
            text[key] = value
    return text


@DATASET_LOADERS.register("lcrec_json")
def load_lcrec_json(path: str | None, name: str | None = None) -> RecDataset:
    """LC-Rec JSON files in ``<path>``.

    - ``<name>.inter.json``: user -> chronological list of item ids (timestamp = position);
    - ``<name>.item.json`` (optional): item -> {title, description, brand, categories, ...};
    - ``<name>.index.json`` (optional): item -> SID tokens, e.g. ``["<a_1>", "<b_2>"]``;
    - ``<name>.review.json`` (optional): user -> list of review texts.

    Items are indexed in ``item.json`` order, else by first appearance; users in
    ``inter.json`` order.
    """
    directory, name = _dataset_dir("lcrec_json", path, name)
    inter_path = directory / f"{name}.inter.json"
    _require_file(inter_path, "interaction (.inter.json)")
    item_path = directory / f"{name}.item.json"
    index_path = directory / f"{name}.index.json"
    review_path = directory / f"{name}.review.json"

    item_text: dict[str, dict[str, str]] = {}
    if item_path.is_file():
        for item_id, raw in _read_json_object(item_path).items():
            item_text[item_id] = _lcrec_item_text(raw, item_id, item_path)
    item_index = {item_id: i for i, item_id in enumerate(item_text)}

    user_ids: list[str] = []
    users: list[int] = []
    items: list[int] = []
    timestamps: list[int] = []
    for user_id, history in _read_json_object(inter_path).items():
        if not isinstance(history, list):
            raise DataError(
                f"expected a list of item ids, got {type(history).__name__}",
                source=inter_path,
                record=f"user {user_id!r}",
            )
        for position, raw_item in enumerate(history):
            item_id = str(raw_item)
            if item_id not in item_index:
                if item_path.is_file():
                    raise DataError(
                        f"item {item_id!r} is not in {item_path}",
                        source=inter_path,
                        record=f"user {user_id!r}",
                    )
                item_index[item_id] = len(item_index)
            users.append(len(user_ids))
            items.append(item_index[item_id])
            timestamps.append(position)
        user_ids.append(user_id)
    if not users:
        raise DataError("no interactions: every user history is empty", source=inter_path)
    item_ids = list(item_index)

    return RecDataset(
        name=name,
        user_ids=user_ids,
        item_ids=item_ids,
        users=np.asarray(users, dtype=np.int64),
        items=np.asarray(items, dtype=np.int64),
        timestamps=np.asarray(timestamps, dtype=np.int64),
        item_text=[item_text.get(item_id, {}) for item_id in item_ids],
        user_text=_read_reviews(review_path, user_ids) if review_path.is_file() else None,
        precomputed_sids=_read_sids(index_path, item_ids) if index_path.is_file() else None,
        source=str(inter_path),
    )


def _read_sids(path: Path, item_ids: list[str]) -> list[list[str]]:
    """``index.json`` -> per-item SID token lists aligned with ``item_ids``."""
    table = _read_json_object(path)
    known = set(item_ids)
    for item_id, tokens in table.items():
        if item_id not in known:
            raise DataError("item is not in the dataset", source=path, record=f"item {item_id!r}")
        if not (isinstance(tokens, list) and tokens and all(isinstance(t, str) for t in tokens)):
            raise DataError(
                f"expected a non-empty list of SID token strings, got {tokens!r}",
                source=path,
                record=f"item {item_id!r}",
            )
        bad = next((t for t in tokens if not _SID_TOKENS.fullmatch(t.replace(" ", ""))), None)
        if bad is not None:
            raise DataError(
                f"SID token {bad!r} is not of the form <prefix_code>, e.g. '<a_12>'",
                source=path,
                record=f"item {item_id!r}",
            )
    missing = [item_id for item_id in item_ids if item_id not in table]
    if missing:
        raise DataError(f"{len(missing)} items have no SID, first: {missing[0]!r}", source=path)
    return [list(table[item_id]) for item_id in item_ids]


def _read_reviews(path: Path, user_ids: list[str]) -> list[list[str]]:
    """``review.json`` -> per-user review lists aligned with ``user_ids`` (missing = [])."""
    table = _read_json_object(path)
    known = set(user_ids)
    reviews: dict[str, list[str]] = {}
    for user_id, texts in table.items():
        if user_id not in known:
            raise DataError("user is not in the dataset", source=path, record=f"user {user_id!r}")
        if isinstance(texts, str):
            texts = [texts]
        if not (isinstance(texts, list) and all(isinstance(t, str) for t in texts)):
            raise DataError(
                "expected a review string or a list of them",
                source=path,
                record=f"user {user_id!r}",
            )
        reviews[user_id] = texts
    return [reviews.get(user_id, []) for user_id in user_ids]


# --------------------------------------------------------------------------- ml-100k


ML100K_IN_WHEEL = "recbole/dataset_example/ml-100k"


@DATASET_LOADERS.register("ml-100k")
def load_ml100k(path: str | None = None, name: str | None = None) -> RecDataset:
    """MovieLens-100k from the ``recbole`` wheel (located via metadata, never imported).

    943 users, 1682 items, 100,000 ratings; item fields ``title``, ``year``,
    ``categories`` (genres); user features ``age``, ``gender``, ``occupation``,
    ``zip_code``.
    """
    if path is not None:
        raise DataError(
            f"the built-in ml-100k takes no path (got {path!r}); "
            "use source 'recbole' with a path to load your own copy",
            source=ML100K_IN_WHEEL,
        )
    try:
        distribution = importlib.metadata.distribution("recbole")
    except importlib.metadata.PackageNotFoundError:
        raise DataError(
            "the built-in ml-100k ships inside the recbole wheel, which is not installed: "
            "pip install --no-deps recbole",
            source=ML100K_IN_WHEEL,
        ) from None
    directory = Path(str(distribution.locate_file(ML100K_IN_WHEEL)))
    if not directory.is_dir():
        raise DataError(
            "the installed recbole wheel has no ml-100k files; "
            "reinstall it with pip install --no-deps --force-reinstall recbole",
            source=directory,
        )
    return load_recbole(str(directory), "ml-100k")
