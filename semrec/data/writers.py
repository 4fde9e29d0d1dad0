"""Write a :class:`RecDataset` in other tools' formats (``semrec convert``).

Writers are registered in ``DATASET_WRITERS`` as ``(dataset, out_dir, **options) -> paths``:

- ``recbole``: RecBole atomic files ``<name>.inter`` (``user_id:token item_id:token
  rating:float timestamp:float``, integer timestamps at full precision, rows per user in
  time order), ``<name>.item`` (every item, ``item_id:token`` then its text fields as
  ``token_seq``, except ``categories:token``, a comma-separated list kept whole so it reads
  back unchanged) and ``<name>.user`` when the dataset has user features. Tabs and line
  breaks inside texts become spaces. Reviews are not written (RecBole has no place for
  them);
- ``lcrec_json``: LC-Rec's ``<name>.inter.json`` (user -> item ids in time order),
  ``<name>.item.json`` (item -> text fields, every item), ``<name>.review.json`` (user ->
  reviews in time order, when the dataset has them) and ``<name>.index.json`` (item -> SID
  tokens, when it has them): what ``load_lcrec_json`` reads. Timestamps and ratings are not
  part of this format: the position is the time;
- ``minionerec_csv``: MiniOneRec's split CSVs ``train/<name>.csv``, ``valid/<name>.csv``,
  ``test/<name>.csv`` from semrec's leave-one-out split (one row per example; columns
  ``user_id``, ``history_item_title``, ``item_title``, ``history_item_id``, ``item_id``,
  plus ``history_item_sid`` / ``item_sid`` and ``info/<name>.txt`` (``sid<TAB>title<TAB>
  item_id``) when the dataset has SIDs; lists are Python list literals, as MiniOneRec reads
  them), and ``<name>.item.json`` (LC-Rec item texts, for MiniOneRec's SID scripts).

Loading either of the first two back gives the same users, items, item texts and
leave-one-out split. All files of one conversion are written to a temporary directory
inside ``out_dir`` and moved into place only once every one is complete.
"""

from __future__ import annotations

import contextlib
import csv
import inspect
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from semrec.data.dataset import DataError, RecDataset
from semrec.data.loaders import load_dataset
from semrec.data.split import leave_one_out
from semrec.registry import Registry

log = logging.getLogger(__name__)

DatasetWriter = Callable[..., list[Path]]

DATASET_WRITERS: Registry[DatasetWriter] = Registry("dataset format")


def convert(
    source: str,
    path: str | None,
    name: str | None,
    to: str,
    out: str | Path,
    *,
    options: dict[str, Any] | None = None,
    writer_options: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> tuple[RecDataset, list[Path]]:
    """Load ``source`` (with loader ``options``) and write it as ``to`` into ``out``.

    Returns the dataset and the written paths. Unknown formats and writer options are
    refused before anything is read; files already in ``out`` that the conversion would
    replace are refused unless ``overwrite``.
    """
    writer = DATASET_WRITERS.get(to)
    writer_options = dict(writer_options or {})
    accepted = [
        p.name
        for p in inspect.signature(writer).parameters.values()
        if p.kind is p.KEYWORD_ONLY and p.name != "overwrite"
    ]
    unknown = [key for key in writer_options if key not in accepted]
    if unknown:
        raise ValueError(
            f"format {to!r} has no option {unknown[0]!r} (options: {', '.join(accepted) or 'none'})"
        )
    dataset = load_dataset(source, path, name, **(options or {}))
    return dataset, writer(dataset, Path(out), overwrite=overwrite, **writer_options)


class _Staging:
    """Files written under a temporary directory in ``out``, moved into place by ``commit``;
    files of the format this conversion does not write (say a ``.review.json`` of an earlier
    conversion with reviews) are removed then, so the output never mixes two conversions."""

    def __init__(self, out: Path, overwrite: bool = False) -> None:
        self.out = out
        self.overwrite = overwrite
        self.created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix=".convert.", suffix=".tmp", dir=out))
        self.names: list[str] = []
        self.stale: list[str] = []

    def path(self, relative: str) -> Path:
        """Where to write ``relative`` (a path inside ``out``) for now."""
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        self.names.append(relative)
        return target

    def not_written(self, relative: str) -> None:
        """``relative`` is a file of this format that this conversion leaves out."""
        self.stale.append(relative)

    def commit(self) -> list[Path]:
        """Move the staged files into ``out``; refuses (writing nothing) to replace files
        already there unless ``overwrite``."""
        taken = [r for r in [*self.names, *self.stale] if (self.out / r).exists()]
        if taken and not self.overwrite:
            raise FileExistsError(
                f"--out {self.out} already holds {', '.join(taken[:3])}"
                f"{' and more' if len(taken) > 3 else ''} (an earlier conversion?); nothing "
                "was written. Pass --overwrite to replace them, or choose another --out"
            )
        for relative in self.stale:
            if (self.out / relative).is_file():
                log.info("removing %s from an earlier conversion", self.out / relative)
                (self.out / relative).unlink()
        written = []
        for relative in self.names:
            final = self.out / relative
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.root / relative, final)
            written.append(final)
        return written

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        if self.created:
            with contextlib.suppress(OSError):
                self.out.rmdir()  # only if empty


@contextlib.contextmanager
def _staged(out: Path, overwrite: bool = False) -> Iterator[_Staging]:
    staging = _Staging(out, overwrite)
    try:
        yield staging
    except BaseException:
        staging.discard()
        raise
    shutil.rmtree(staging.root, ignore_errors=True)


def _open_text(path: Path):
    return open(path, "w", encoding="utf-8", newline="")


# --------------------------------------------------------------------------- RecBole


def _cell(value: str) -> str:
    return " ".join(value.replace("\t", " ").replace("\r", " ").replace("\n", " ").split())


def _check_ids(ids: list[str], what: str, source: str) -> None:
    for external in ids:
        if any(c in external for c in "\t\r\n") or external != external.strip():
            raise DataError(
                f"{what} id {external!r} has tabs, line breaks or surrounding spaces, which "
                "RecBole atomic files cannot hold",
                source=source,
            )


def _field_names(rows: list[dict[str, str]]) -> list[str]:
    names: dict[str, None] = {}
    for row in rows:
        for key, value in row.items():
            if value.strip():
                names.setdefault(key, None)
    return list(names)


def _header_names(names: list[str], source: str) -> None:
    for name in names:
        if not name or any(c in name for c in ":\t\r\n "):
            raise DataError(
                f"field name {name!r} cannot be a RecBole column (no spaces, tabs or ':')",
                source=source,
                field=name,
            )


@DATASET_WRITERS.register("recbole")
def write_recbole(ds: RecDataset, out: Path, *, overwrite: bool = False) -> list[Path]:
    """RecBole atomic files ``<name>.inter``, ``.item`` (+ ``.user``) in ``out``."""
    source = ds.source or ds.name
    _check_ids(ds.user_ids, "user", source)
    _check_ids(ds.item_ids, "item", source)
    order = ds.chronological_order()
    _reject_repeated_rows(ds)
    item_fields = _field_names(ds.item_text)
    _header_names(item_fields, source)
    user_fields = _field_names(ds.user_features) if ds.user_features is not None else []
    _header_names(user_fields, source)
    if ds.user_text is not None:
        log.info("recbole: %s's reviews (user_text) are not written", ds.name)

    with _staged(Path(out), overwrite) as stage:
        with _open_text(stage.path(f"{ds.name}.inter")) as fh:
            columns = ["user_id:token", "item_id:token"]
            columns += ["rating:float"] if ds.ratings is not None else []
            fh.write("\t".join([*columns, "timestamp:float"]) + "\n")
            users = ds.users[order].tolist()
            items = ds.items[order].tolist()
            stamps = ds.timestamps[order].tolist()
            ratings = ds.ratings[order] if ds.ratings is not None else None
            for row, (user, item, stamp) in enumerate(zip(users, items, stamps)):
                values = [ds.user_ids[user], ds.item_ids[item]]
                if ratings is not None:
                    values.append(np.format_float_positional(ratings[row], trim="-"))
                values.append(str(stamp))
                fh.write("\t".join(values) + "\n")
        with _open_text(stage.path(f"{ds.name}.item")) as fh:
            types = ["token" if name == "categories" else "token_seq" for name in item_fields]
            header = ["item_id:token"] + [f"{n}:{t}" for n, t in zip(item_fields, types)]
            fh.write("\t".join(header) + "\n")
            for item_id, text in zip(ds.item_ids, ds.item_text):
                cells = [_cell(text.get(name, "")) for name in item_fields]
                fh.write("\t".join([item_id, *cells]) + "\n")
        if ds.user_features is None:
            stage.not_written(f"{ds.name}.user")
        else:
            with _open_text(stage.path(f"{ds.name}.user")) as fh:
                fh.write("\t".join(["user_id:token"] + [f"{n}:token" for n in user_fields]))
                fh.write("\n")
                for user_id, features in zip(ds.user_ids, ds.user_features):
                    cells = [_cell(features.get(name, "")) for name in user_fields]
                    fh.write("\t".join([user_id, *cells]) + "\n")
        return stage.commit()


def _reject_repeated_rows(ds: RecDataset) -> None:
    """RecBole's loader reads a repeated (user, item, timestamp) row as a duplicated line."""
    key = np.lexsort((ds.timestamps, ds.items, ds.users))
    same = (
        (np.diff(ds.users[key]) == 0)
        & (np.diff(ds.items[key]) == 0)
        & (np.diff(ds.timestamps[key]) == 0)
    )
    if same.any():
        row = int(key[1:][same][0])
        raise DataError(
            f"{int(same.sum())} interaction(s) repeat the same user, item and timestamp (e.g. "
            f"user {ds.user_ids[ds.users[row]]!r}, item {ds.item_ids[ds.items[row]]!r}), "
            "which RecBole atomic files cannot tell from duplicated lines; load the source "
            "with repeats removed (Amazon: dedup: first)",
            source=ds.source or ds.name,
        )


# --------------------------------------------------------------------------- LC-Rec JSON


def _dump_json(path: Path, obj: Any) -> None:
    with _open_text(path) as fh:
        json.dump(obj, fh, ensure_ascii=False)
        fh.write("\n")


@DATASET_WRITERS.register("lcrec_json")
def write_lcrec_json(ds: RecDataset, out: Path, *, overwrite: bool = False) -> list[Path]:
    """LC-Rec JSON ``<name>.inter.json``, ``.item.json`` (+ ``.review.json``, ``.index.json``)."""
    sequences = ds.sequences()
    with _staged(Path(out), overwrite) as stage:
        _dump_json(
            stage.path(f"{ds.name}.inter.json"),
            {
                user_id: [ds.item_ids[item] for item in sequence.tolist()]
                for user_id, sequence in zip(ds.user_ids, sequences)
            },
        )
        _dump_json(stage.path(f"{ds.name}.item.json"), dict(zip(ds.item_ids, ds.item_text)))
        if ds.user_text is None:
            stage.not_written(f"{ds.name}.review.json")
        else:
            _dump_json(stage.path(f"{ds.name}.review.json"), dict(zip(ds.user_ids, ds.user_text)))
        if ds.precomputed_sids is None:
            stage.not_written(f"{ds.name}.index.json")
        else:
            _dump_json(
                stage.path(f"{ds.name}.index.json"), dict(zip(ds.item_ids, ds.precomputed_sids))
            )
        return stage.commit()


# --------------------------------------------------------------------------- MiniOneRec CSV


@DATASET_WRITERS.register("minionerec_csv")
def write_minionerec_csv(
    ds: RecDataset, out: Path, *, max_history: int = 20, overwrite: bool = False
) -> list[Path]:
    """MiniOneRec's ``train|valid|test/<name>.csv`` from the leave-one-out split (users with
    fewer than 3 interactions are left out and counted in the log)."""
    split = leave_one_out(ds, max_history=max_history, short_users="drop")
    if split.dropped_users:
        log.warning(
            "minionerec_csv: %d users with fewer than 3 interactions left out", split.dropped_users
        )
    titles = [text.get("title", "") for text in ds.item_text]
    sids = (
        None if ds.precomputed_sids is None else ["".join(tokens) for tokens in ds.precomputed_sids]
    )
    columns = ["user_id", "history_item_title", "item_title", "history_item_id", "item_id"]
    columns += ["history_item_sid", "item_sid"] if sids is not None else []
    with _staged(Path(out), overwrite) as stage:
        for part, examples in [
            ("train", split.train),
            ("valid", split.valid),
            ("test", split.test),
        ]:
            with _open_text(stage.path(f"{part}/{ds.name}.csv")) as fh:
                writer = csv.writer(fh)
                writer.writerow(columns)
                for example in examples:
                    history = list(example.history)
                    row = [
                        ds.user_ids[example.user],
                        repr([titles[i] for i in history]),
                        titles[example.target],
                        repr([ds.item_ids[i] for i in history]),
                        ds.item_ids[example.target],
                    ]
                    if sids is not None:
                        row += [repr([sids[i] for i in history]), sids[example.target]]
                    writer.writerow(row)
        if sids is None:
            stage.not_written(f"info/{ds.name}.txt")
        else:
            with _open_text(stage.path(f"info/{ds.name}.txt")) as fh:
                for item_id, sid, title in zip(ds.item_ids, sids, titles):
                    fh.write(f"{sid}\t{_cell(title)}\t{item_id}\n")
        _dump_json(stage.path(f"{ds.name}.item.json"), dict(zip(ds.item_ids, ds.item_text)))
        return stage.commit()
