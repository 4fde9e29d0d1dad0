"""Amazon review datasets as published (McAuley lab): 2014, 2018 and 2023 dumps.

Sources ``amazon2014``, ``amazon2018`` and ``amazon2023``: ``path`` is the directory holding
the files, ``name`` the category (``Beauty``, ``All_Beauty``, ...). Each file is found plain
or gzipped (``.gz``):

========== ============================================== ==========================
source     reviews (first found)                          metadata
========== ============================================== ==========================
amazon2014 ``reviews_<name>_5.json``, ``<name>_5.json``,  ``meta_<name>.json``
amazon2018 then the full ``reviews_<name>.json``,
           ``<name>.json``
amazon2023 ``<name>.jsonl``                               ``meta_<name>.jsonl``
========== ============================================== ==========================

Review lines are JSON objects (2014/2018: ``reviewerID``, ``asin``, ``overall``,
``unixReviewTime`` in seconds, ``summary``, ``reviewText``; 2023: ``user_id``,
``parent_asin``, ``rating``, ``timestamp`` in milliseconds, ``title``, ``text``). 2014
metadata lines are Python dict literals, read with :func:`ast.literal_eval` (never
``eval``); JSON lines are accepted there too. Timestamps are kept as given, int64.

Preprocessing, as LC-Rec does it, in this order:

1. repeated (user, item) pairs: ``dedup: first`` keeps each pair's earliest interaction
   (ties: the first line), ``all`` keeps every one;
2. ``missing_meta: drop`` (the default) removes items without a metadata line, which have
   no text for the text embedders and tasks; ``keep`` keeps them with empty text. Either
   way they are counted and logged;
3. iterative ``kcore`` (default 5; 0 or 1: none) with :func:`~semrec.data.split.kcore_filter`.

Texts (item fields and reviews) are HTML-unescaped, stripped of tags and of repeated
whitespace. Item fields are renamed to semrec's names: ``title``, ``description``,
``brand`` (2023: ``store``), ``categories`` (2014: the flattened category paths),
``main_category``, ``features``, ``price``. Reviews become ``RecDataset.user_text``: per
user, one review per interaction in time order (summary / title, then the text), the
alignment the review tasks read; ``""`` where a line has none, and ``None`` when no line
has any (or with ``reviews: false``, which saves their memory on large categories).

Users and items are indexed in order of first appearance in the review file; interactions
keep file order, so timestamp ties keep it too. Files are streamed line by line, with a
progress bar (by bytes read) for files over ``PROGRESS_MIN_BYTES``. A malformed line
raises a :class:`DataError` naming the file, line and field; ``on_bad_line: skip`` skips
it instead and logs how many were skipped and the first one. A truncated or corrupt gzip
file is always an error.
"""

from __future__ import annotations

import array
import ast
import contextlib
import gzip
import html
import json
import logging
import math
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from semrec.data.dataset import DataError, RecDataset
from semrec.data.loaders import DATASET_LOADERS, _dataset_dir, _parse_timestamp
from semrec.data.split import kcore_filter, select_interactions

log = logging.getLogger(__name__)

PROGRESS_MIN_BYTES = 64 * 2**20  # files at least this large get a progress bar

_TAG = re.compile(r"<!--.*?-->|</?[A-Za-z][^<>]*>", re.DOTALL)
_INT64_MAX = 2**63 - 1


def clean_html(text: str) -> str:
    """``text`` with HTML entities unescaped, tags removed and whitespace collapsed."""
    return " ".join(_TAG.sub(" ", html.unescape(text)).split())


@dataclass(frozen=True)
class AmazonFormat:
    """Where one dump keeps its files and fields."""

    source: str
    review_stems: tuple[str, ...]  # "{name}" stands for the category
    meta_stems: tuple[str, ...]
    user_field: str
    item_field: str
    rating_field: str
    time_field: str
    review_fields: tuple[str, str]  # (summary / title, text)
    meta_item_field: str
    meta_fields: dict[str, str]  # raw field -> semrec's name, in output order
    python_literals: bool = False  # lines may be Python dict literals (2014)


_REVIEWS_2014_2018 = (
    "reviews_{name}_5.json",
    "{name}_5.json",
    "reviews_{name}.json",
    "{name}.json",
)

AMAZON_2014 = AmazonFormat(
    source="amazon2014",
    review_stems=_REVIEWS_2014_2018,
    meta_stems=("meta_{name}.json",),
    user_field="reviewerID",
    item_field="asin",
    rating_field="overall",
    time_field="unixReviewTime",
    review_fields=("summary", "reviewText"),
    meta_item_field="asin",
    meta_fields={
        "title": "title",
        "description": "description",
        "brand": "brand",
        "categories": "categories",
        "price": "price",
    },
    python_literals=True,
)

AMAZON_2018 = replace(
    AMAZON_2014,
    source="amazon2018",
    meta_fields={
        "title": "title",
        "description": "description",
        "brand": "brand",
        "category": "categories",
        "main_cat": "main_category",
        "feature": "features",
        "price": "price",
    },
    python_literals=False,
)

AMAZON_2023 = AmazonFormat(
    source="amazon2023",
    review_stems=("{name}.jsonl",),
    meta_stems=("meta_{name}.jsonl",),
    user_field="user_id",
    item_field="parent_asin",
    rating_field="rating",
    time_field="timestamp",
    review_fields=("title", "text"),
    meta_item_field="parent_asin",
    meta_fields={
        "title": "title",
        "description": "description",
        "store": "brand",
        "categories": "categories",
        "main_category": "main_category",
        "features": "features",
        "price": "price",
    },
)

_SEPARATORS = {"categories": ", ", "features": "; "}  # other list fields join with " "


# --------------------------------------------------------------------------- loaders


def _register_loader(fmt: AmazonFormat, files: str) -> None:
    """Register ``fmt.source``: a loader ``(path, name, **options)`` for one dump."""

    def load(
        path: str | None,
        name: str | None = None,
        *,
        kcore: int = 5,
        dedup: str = "first",
        missing_meta: str = "drop",
        on_bad_line: str = "error",
        reviews: bool = True,
    ) -> RecDataset:
        return load_amazon(fmt, path, name, kcore, dedup, missing_meta, on_bad_line, reviews)

    load.__name__ = load.__qualname__ = f"load_{fmt.source}"
    load.__doc__ = f"{fmt.source} ({files}); options in the module docstring."
    DATASET_LOADERS.register(fmt.source)(load)


_register_loader(AMAZON_2014, "``reviews_<name>_5.json[.gz]`` + ``meta_<name>.json[.gz]``")
_register_loader(AMAZON_2018, "``<name>_5.json[.gz]`` + ``meta_<name>.json[.gz]``")
_register_loader(AMAZON_2023, "``<name>.jsonl[.gz]`` + ``meta_<name>.jsonl[.gz]``")


def load_amazon(
    fmt: AmazonFormat,
    path: str | None,
    name: str | None,
    kcore: int = 5,
    dedup: str = "first",
    missing_meta: str = "drop",
    on_bad_line: str = "error",
    reviews: bool = True,
) -> RecDataset:
    """Load one Amazon dump described by ``fmt`` (see the module docstring)."""
    _check_options(fmt.source, kcore, dedup, missing_meta, on_bad_line, reviews)
    directory, name = _dataset_dir(fmt.source, path, name)
    review_path = _find_file(directory, fmt.review_stems, name, f"{fmt.source} review")
    meta_path = _find_file(directory, fmt.meta_stems, name, f"{fmt.source} metadata")

    ds = _read_interactions(fmt, review_path, name, on_bad_line, reviews)
    read = ds.num_interactions
    if dedup == "first":
        ds = select_interactions(ds, _first_of_each_pair(ds))
        if ds.num_interactions < read:
            log.info(
                "%s: dropped %d repeated (user, item) interactions (dedup: first)",
                review_path,
                read - ds.num_interactions,
            )
    if missing_meta == "drop":  # before the k-core, which then sees only items with text
        meta = _read_meta(fmt, meta_path, set(ds.item_ids), on_bad_line)
        has_meta = _has_meta(ds, meta)
        _log_missing_meta(ds.item_ids, has_meta, meta_path, "dropped")
        ds = kcore_filter(select_interactions(ds, has_meta[ds.items]), kcore)
    else:
        ds = kcore_filter(ds, kcore)
    if ds.num_interactions == 0:
        raise DataError(
            f"no interactions left after preprocessing ({read} read; dedup: {dedup}, "
            f"missing_meta: {missing_meta}, kcore: {kcore}); lower kcore"
            + (
                f", or check that {meta_path.name} describes these items (missing_meta: keep "
                "keeps items without metadata)"
                if missing_meta == "drop"
                else ""
            ),
            source=review_path,
        )
    if missing_meta == "keep":  # only the items the k-core kept: less text held in memory
        meta = _read_meta(fmt, meta_path, set(ds.item_ids), on_bad_line)
        _log_missing_meta(
            ds.item_ids,
            _has_meta(ds, meta),
            meta_path,
            "kept with empty text (missing_meta: drop removes them before the k-core)",
        )
    log.info(
        "%s %s: %d users, %d items, %d interactions (%d lines read)",
        fmt.source,
        name,
        ds.num_users,
        ds.num_items,
        ds.num_interactions,
        read,
    )
    return replace(ds, item_text=[meta.get(item_id, {}) for item_id in ds.item_ids])


def _has_meta(ds: RecDataset, meta: dict[str, dict[str, str]]) -> np.ndarray:
    return np.fromiter((item in meta for item in ds.item_ids), dtype=bool, count=ds.num_items)


def _check_options(
    source: str, kcore: Any, dedup: Any, missing_meta: Any, on_bad_line: Any, reviews: Any
) -> None:
    if isinstance(kcore, bool) or not isinstance(kcore, int) or kcore < 0:
        raise ValueError(f"{source}: option kcore must be an integer >= 0, got {kcore!r}")
    for option, value, allowed in [
        ("dedup", dedup, ("first", "all")),
        ("missing_meta", missing_meta, ("keep", "drop")),
        ("on_bad_line", on_bad_line, ("error", "skip")),
    ]:
        if value not in allowed:
            raise ValueError(
                f"{source}: option {option} must be {' or '.join(map(repr, allowed))}, "
                f"got {value!r}"
            )
    if not isinstance(reviews, bool):
        raise ValueError(f"{source}: option reviews must be true or false, got {reviews!r}")


def _find_file(directory: Path, stems: tuple[str, ...], name: str, kind: str) -> Path:
    candidates = [
        directory / (stem.format(name=name) + suffix) for stem in stems for suffix in ("", ".gz")
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    present = sorted(p.name for p in directory.iterdir() if p.is_file())
    shown = ", ".join(present[:20]) + (f", ... ({len(present)} files)" if len(present) > 20 else "")
    raise DataError(
        f"no {kind} file for {name!r}: looked for {', '.join(c.name for c in candidates)} "
        f"(files there: {shown or 'none'})",
        source=directory,
    )


# --------------------------------------------------------------------------- reading


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) of a plain or gzip file, streamed, with a progress bar
    (compressed bytes read) for large files."""
    size = path.stat().st_size
    lineno = 0
    done = 0
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(open(path, "rb"))
        stream = raw
        if path.name.endswith(".gz"):
            stream = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
        bar = stack.enter_context(
            tqdm(
                total=size,
                unit="B",
                unit_scale=True,
                desc=path.name,
                disable=size < PROGRESS_MIN_BYTES,
            )
        )
        try:
            for lineno, line in enumerate(stream, start=1):
                yield lineno, line
                if lineno % 4096 == 0:
                    position = raw.tell()
                    bar.update(position - done)
                    done = position
        except (EOFError, gzip.BadGzipFile, zlib.error) as err:
            raise DataError(
                f"truncated or corrupt gzip file: unreadable after line {lineno} ({err})",
                source=path,
            ) from None
        bar.update(size - done)


class _BadLines:
    """The ``on_bad_line`` policy for one file: raise, or count and remember the first."""

    def __init__(self, path: Path, policy: str) -> None:
        self.path = path
        self.policy = policy
        self.count = 0
        self.first: DataError | None = None

    def __call__(self, error: DataError) -> None:
        if self.policy == "error":
            raise error
        self.count += 1
        self.first = self.first or error

    def report(self) -> None:
        if self.count:
            log.warning(
                "%s: skipped %d malformed line(s) (on_bad_line: skip); the first: %s",
                self.path,
                self.count,
                self.first,
            )


def _records(path: Path, python_literals: bool, bad: _BadLines) -> Iterator[tuple[int, dict]]:
    """(line number, object) of every non-blank line; unparsable lines go to ``bad``."""
    for lineno, raw in _lines(path):
        if not raw.strip():
            continue
        try:
            record = _parse_line(raw, path, lineno, python_literals)
        except DataError as err:
            bad(err)
            continue
        yield lineno, record


def _parse_line(raw: bytes, path: Path, lineno: int, python_literals: bool) -> dict:
    try:
        text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"not valid UTF-8 ({err.reason})", source=path, line=lineno) from None
    try:
        record = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        detail = f"{err.msg} (column {err.colno})" if hasattr(err, "msg") else str(err)
        if not python_literals:
            raise DataError(f"invalid JSON: {detail}", source=path, line=lineno) from None
        try:
            record = ast.literal_eval(text.strip())
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise DataError(
                f"neither JSON ({detail}) nor a Python dict literal", source=path, line=lineno
            ) from None
    if not isinstance(record, dict):
        raise DataError(
            f"expected an object per line, got {type(record).__name__}", source=path, line=lineno
        )
    return record


def _record_id(record: dict, key: str, path: Path, lineno: int) -> str:
    value = record.get(key)
    if value is None:
        raise DataError("missing required field", source=path, line=lineno, field=key)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(
            f"expected an id string, got {type(value).__name__}",
            source=path,
            line=lineno,
            field=key,
        )
    value = str(value).strip()
    if not value:
        raise DataError("empty id", source=path, line=lineno, field=key)
    return value


def _record_timestamp(record: dict, key: str, path: Path, lineno: int) -> int:
    value = record.get(key)
    if value is None:
        raise DataError("missing required field", source=path, line=lineno, field=key)
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int):
            stamp = value
        elif isinstance(value, float) and value.is_integer():
            stamp = int(value)
        elif isinstance(value, str):
            stamp = _parse_timestamp(value.strip())
        else:
            raise ValueError
        if abs(stamp) > _INT64_MAX:
            raise ValueError
    except (ValueError, OverflowError):
        raise DataError(
            f"expected an integer timestamp, got {value!r}", source=path, line=lineno, field=key
        ) from None
    return stamp


def _record_rating(record: dict, key: str, path: Path, lineno: int) -> float:
    value = record.get(key)
    if value is None:
        raise DataError("missing required field", source=path, line=lineno, field=key)
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError
        rating = float(value)
    except (ValueError, OverflowError):
        rating = math.nan
    if not math.isfinite(rating):
        raise DataError(
            f"expected a finite number, got {value!r}", source=path, line=lineno, field=key
        )
    return rating


def _review_text(record: dict, fields: tuple[str, str]) -> str:
    """Summary (2023: title) and text as one review; ``""`` without either."""
    summary, text = (_text_field(record.get(key)) for key in fields)
    if summary and text:
        return f"{summary} {text}" if summary[-1] in ".!?" else f"{summary}. {text}"
    return summary or text


def _text_field(value: Any) -> str:
    return clean_html(value) if isinstance(value, str) else ""


def _read_interactions(
    fmt: AmazonFormat, path: Path, name: str, on_bad_line: str, keep_reviews: bool
) -> RecDataset:
    """Every review line as one interaction, in file order (before any filtering)."""
    user_index: dict[str, int] = {}
    item_index: dict[str, int] = {}
    users, items = array.array("q"), array.array("q")
    timestamps, ratings = array.array("q"), array.array("f")
    texts: list[str] = []
    bad = _BadLines(path, on_bad_line)
    for lineno, record in _records(path, fmt.python_literals, bad):
        try:  # parse every field before recording any, so a skipped line leaves no trace
            user = _record_id(record, fmt.user_field, path, lineno)
            item = _record_id(record, fmt.item_field, path, lineno)
            stamp = _record_timestamp(record, fmt.time_field, path, lineno)
            rating = _record_rating(record, fmt.rating_field, path, lineno)
        except DataError as err:
            bad(err)
            continue
        users.append(user_index.setdefault(user, len(user_index)))
        items.append(item_index.setdefault(item, len(item_index)))
        timestamps.append(stamp)
        ratings.append(rating)
        if keep_reviews:
            texts.append(_review_text(record, fmt.review_fields))
    bad.report()
    if not users:
        raise DataError("no interactions: the file has no valid review line", source=path)
    ds = RecDataset(
        name=name,
        user_ids=list(user_index),
        item_ids=list(item_index),
        users=np.frombuffer(users, dtype=np.int64),
        items=np.frombuffer(items, dtype=np.int64),
        timestamps=np.frombuffer(timestamps, dtype=np.int64),
        ratings=np.frombuffer(ratings, dtype=np.float32),
        source=str(path),
    )
    if keep_reviews and any(texts):
        ds.user_text = _per_user_in_time_order(ds, texts)
    return ds


def _per_user_in_time_order(ds: RecDataset, values: list[str]) -> list[list[str]]:
    """Per-interaction ``values`` (file order) regrouped per user in time order."""
    per_user: list[list[str]] = [[] for _ in range(ds.num_users)]
    for position in ds.chronological_order().tolist():
        per_user[int(ds.users[position])].append(values[position])
    return per_user


def _first_of_each_pair(ds: RecDataset) -> np.ndarray:
    """Bool mask: each (user, item) pair's earliest interaction (ties: the first line)."""
    n = ds.num_interactions
    order = np.lexsort((np.arange(n), ds.timestamps, ds.items, ds.users))
    users, items = ds.users[order], ds.items[order]
    first = np.ones(n, dtype=bool)
    first[1:] = (users[1:] != users[:-1]) | (items[1:] != items[:-1])
    keep = np.zeros(n, dtype=bool)
    keep[order[first]] = True
    return keep


def _read_meta(
    fmt: AmazonFormat, path: Path, wanted: set[str], on_bad_line: str
) -> dict[str, dict[str, str]]:
    """Item id -> normalised text fields, for the ``wanted`` items (first line wins)."""
    meta: dict[str, dict[str, str]] = {}
    repeated = 0
    bad = _BadLines(path, on_bad_line)
    for lineno, record in _records(path, fmt.python_literals, bad):
        try:
            item = _record_id(record, fmt.meta_item_field, path, lineno)
        except DataError as err:
            bad(err)
            continue
        if item not in wanted:
            continue
        if item in meta:
            repeated += 1
            continue
        text = {}
        for raw_name, field in fmt.meta_fields.items():
            value = _meta_text(record.get(raw_name), _SEPARATORS.get(field, " "), field)
            if value:
                text[field] = value
        meta[item] = text
    bad.report()
    if repeated:
        log.info("%s: %d repeated item lines ignored (the first one counts)", path, repeated)
    return meta


def _meta_text(value: Any, separator: str, field: str) -> str:
    parts = [clean_html(part) for part in _flatten(value)]
    parts = [part for part in parts if part]
    if field == "categories":
        parts = list(dict.fromkeys(parts))  # 2014 category paths repeat their top levels
    return separator.join(parts)


def _flatten(value: Any) -> Iterator[str]:
    if value is None or isinstance(value, (bool, dict)):
        return
    if isinstance(value, (list, tuple)):
        for part in value:
            yield from _flatten(part)
    elif isinstance(value, float):
        yield repr(value) if math.isfinite(value) else ""
    else:
        yield str(value)


def _log_missing_meta(item_ids: list[str], has_meta: np.ndarray, path: Path, what: str) -> None:
    missing = np.flatnonzero(~has_meta)
    if len(missing):
        log.warning(
            "%s: %d of %d items have no metadata line (first: %r); %s",
            path,
            len(missing),
            len(item_ids),
            item_ids[int(missing[0])],
            what,
        )
