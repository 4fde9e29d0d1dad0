"""The annotation cache and the loop that fills it.

Answers are cached by :func:`prompt_hash` of (annotator settings, prompt) in an append-only
JSONL file, one ``{"hash": ..., "key": ..., "text": ...}`` line per answer. Each batch's
lines are written whole and flushed to disk before the next batch starts, so an interrupted
run keeps every finished batch; a torn last line is ignored on load and cut off before the
next append. The file is meant for one writer at a time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Collection
from pathlib import Path

from semrec.annotate.annotators import Annotator, FileAnnotator
from semrec.annotate.errors import AnnotationError
from semrec.artifacts import cache_dir, content_hash

Progress = Callable[[int, int], None]


def prompt_hash(annotator_key: dict, prompt: str) -> str:
    """The cache key of ``prompt`` answered by an annotator with ``cache_key() == annotator_key``."""
    return content_hash(annotator_key, prompt)


class AnnotationStore:
    """Cached answers of one annotation kind: ``<directory>/<kind>.jsonl``.

    ``directory`` defaults to ``cache_dir()/annotations``.
    """

    def __init__(self, kind: str, directory: str | os.PathLike[str] | None = None) -> None:
        root = Path(directory) if directory is not None else cache_dir() / "annotations"
        self.path = root / f"{kind}.jsonl"
        self._valid_bytes: int | None = None  # length of the file's whole, valid lines

    def load(self) -> dict[str, str]:
        """Hash -> text of every complete entry (a torn last line is skipped)."""
        self._valid_bytes = 0
        if not self.path.exists():
            return {}
        data = self.path.read_bytes()
        entries: dict[str, str] = {}
        offset = 0
        lines = data.split(b"\n")
        for number, line in enumerate(lines, start=1):
            is_last = number == len(lines)
            end = offset + len(line) + (0 if is_last else 1)
            if line.strip():
                entry = self._parse(line, number, torn_ok=is_last)
                if entry is None:  # torn last line: drop it
                    break
                entries[entry[0]] = entry[1]
                if is_last:  # whole record without its newline; append() adds one
                    end = offset + len(line)
            offset = end
            self._valid_bytes = end
        return entries

    def _parse(self, line: bytes, number: int, torn_ok: bool) -> tuple[str, str] | None:
        try:
            record = json.loads(line)
            if isinstance(record, dict):
                hash_, text = record.get("hash"), record.get("text")
                if isinstance(hash_, str) and isinstance(text, str):
                    return hash_, text
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass
        if torn_ok:
            return None
        raise AnnotationError(
            f"{self.path}:{number}: corrupt cache entry (expected a JSON object with string "
            "'hash' and 'text'); delete the line or the file to regenerate it"
        )

    def append(self, entries: list[tuple[str, str, str]]) -> None:
        """Append ``(hash, key, text)`` entries as whole lines and flush them to disk."""
        if not entries:
            return
        if self._valid_bytes is None:
            self.load()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size > self._valid_bytes:  # a torn line from an interrupted run
                fh.truncate(self._valid_bytes)
            prefix = b""
            if self._valid_bytes and not self._ends_with_newline():
                prefix = b"\n"
            lines = b"".join(
                json.dumps({"hash": h, "key": key, "text": text}, ensure_ascii=False).encode()
                + b"\n"
                for h, key, text in entries
            )
            fh.write(prefix + lines)
            fh.flush()
            os.fsync(fh.fileno())
            self._valid_bytes += len(prefix) + len(lines)

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as fh:
            fh.seek(self._valid_bytes - 1)
            return fh.read(1) == b"\n"


def annotate(
    kind: str,
    requests: dict[str, str],
    annotator: Annotator | FileAnnotator,
    store: AnnotationStore,
    batch_size: int = 8,
    progress: Progress | None = None,
    *,
    known_keys: Collection[str] | None = None,
    check: Callable[[str], object] | None = None,
    retry_prompt: Callable[[str, str], str] | None = None,
    max_retries: int = 0,
    keep_invalid: bool = False,
) -> dict[str, str]:
    """Key -> annotation text for every request, asking ``annotator`` only for uncached prompts.

    ``progress(done, total)`` is called once before the first batch and after every batch
    (counted in requests). A file annotator (``jsonl``) answers nothing: its table is returned
    as is, after checking its keys against ``known_keys`` (default: the request keys).

    ``check(text)`` raising ``ValueError`` marks an answer unusable; such prompts are asked
    again up to ``max_retries`` times as ``retry_prompt(prompt, error message)``. Answers that
    stay unusable are cached anyway with ``keep_invalid=True`` (their consumer skips them);
    otherwise every usable answer is cached and an :class:`AnnotationError` then lists the
    failures, so a rerun asks only for those.
    """
    if isinstance(annotator, FileAnnotator):
        return annotator.lookup(kind, requests.keys() if known_keys is None else known_keys)
    if batch_size < 1:
        raise AnnotationError(f"batch_size must be >= 1, got {batch_size}")
    settings = annotator.cache_key()
    hashes = {key: prompt_hash(settings, prompt) for key, prompt in requests.items()}
    cached = store.load()
    pending: dict[str, list[str]] = {}  # hash -> keys sharing that prompt
    for key, h in hashes.items():
        if h not in cached:
            pending.setdefault(h, []).append(key)
    total = len(requests)
    done = total - sum(len(keys) for keys in pending.values())
    if progress:
        progress(done, total)
    if max_retries < 0:
        raise AnnotationError(f"max_retries must be >= 0, got {max_retries}")
    asker = _CheckedAsker(kind, annotator, check, retry_prompt, max_retries)
    failures: dict[str, tuple[str, str]] = {}  # key -> (error, last answer)
    todo = list(pending.items())
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        texts, errors = asker.ask([requests[keys[0]] for _, keys in batch])
        usable = []
        for (h, keys), text, error in zip(batch, texts, errors, strict=True):
            done += len(keys)
            if error is not None:
                failures[keys[0]] = (error, text)
                if not keep_invalid:
                    continue
            usable.append((h, keys[0], text))
            cached[h] = text
        store.append(usable)
        if progress:
            progress(done, total)
    if failures and not keep_invalid:
        raise _invalid_answers_error(kind, failures, len(requests), max_retries)
    return {key: cached[h] for key, h in hashes.items()}


class _CheckedAsker:
    """Asks an annotator and re-asks, with a corrected prompt, for answers ``check`` rejects."""

    def __init__(self, kind, annotator, check, retry_prompt, max_retries) -> None:
        self.kind = kind
        self.annotator = annotator
        self.check = check
        self.retry_prompt = retry_prompt or (lambda prompt, error: prompt)
        self.max_retries = max_retries

    def _complete(self, prompts: list[str]) -> list[str]:
        texts = self.annotator.complete(prompts)
        if len(texts) != len(prompts):
            name = self.annotator.cache_key().get("annotator", "?")
            raise AnnotationError(
                f"{self.kind} annotator {name!r} returned {len(texts)} texts for "
                f"{len(prompts)} prompts"
            )
        return texts

    def _error(self, text: str) -> str | None:
        if self.check is None:
            return None
        try:
            self.check(text)
        except ValueError as err:
            return str(err)
        return None

    def ask(self, prompts: list[str]) -> tuple[list[str], list[str | None]]:
        """(answers, error or None per answer) after at most ``max_retries`` retries."""
        texts = self._complete(prompts)
        errors = [self._error(text) for text in texts]
        for _ in range(self.max_retries):
            bad = [i for i, error in enumerate(errors) if error is not None]
            if not bad:
                break
            again = self._complete([self.retry_prompt(prompts[i], errors[i]) for i in bad])
            for i, text in zip(bad, again, strict=True):
                texts[i], errors[i] = text, self._error(text)
        return texts, errors


def _invalid_answers_error(
    kind: str, failures: dict[str, tuple[str, str]], total: int, retries: int
) -> AnnotationError:
    shown = "; ".join(
        f"{key}: {error} (answer begins {text[:80]!r})"
        for key, (error, text) in list(failures.items())[:3]
    )
    return AnnotationError(
        f"{len(failures)} of {total} {kind} answers could not be used after {retries} "
        f"retr{'y' if retries == 1 else 'ies'}: {shown}. The usable answers are cached, so a "
        "rerun asks only for these. Use a stronger annotator (annotate.annotator), raise "
        "annotate.max_retries, or set annotate.keep_invalid: true to skip them."
    )


def load_annotations(
    kind: str,
    requests: dict[str, str],
    annotator: Annotator | FileAnnotator,
    store: AnnotationStore,
    *,
    known_keys: Collection[str] | None = None,
) -> dict[str, str] | None:
    """The table :func:`annotate` would return, or ``None`` if any request is not cached yet.

    Never calls the annotator's ``complete``; a file annotator's table is always available.
    """
    if isinstance(annotator, FileAnnotator):
        return annotator.lookup(kind, requests.keys() if known_keys is None else known_keys)
    settings = annotator.cache_key()
    cached = store.load()
    table = {}
    for key, prompt in requests.items():
        h = prompt_hash(settings, prompt)
        if h not in cached:
            return None
        table[key] = cached[h]
    return table
