"""Run directories, the on-disk cache and atomic writes.

Every stage writes through :func:`atomic_write` / :func:`atomic_dir` so an interrupted or
failing stage never leaves a half-written artifact behind: files are written to a
temporary sibling and renamed into place only once complete. Cached embedding tables
go through :func:`read_cached_tensor` / :func:`write_cached_tensor`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch loads only with the tensor cache, not with every import of this
    import torch

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Root of semrec's cache (embeddings, converted models): ``$SEMREC_CACHE`` or ~/.cache/semrec."""
    root = os.environ.get("SEMREC_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "semrec"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def content_hash(*parts: Any) -> str:
    """Stable short hash of JSON-serialisable parts (strings, numbers, lists, dicts)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, bytes):
            h.update(part)
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]


def umask_mode(directory: bool = False) -> int:
    """The permission bits a new file (``0o666``) or directory (``0o777``) gets under this
    process's umask: what ``open`` and ``mkdir`` give, and what the temp files and
    directories of atomic writes (created ``0o600`` / ``0o700``) are set to."""
    mask = _umask()
    return (0o777 if directory else 0o666) & ~mask


def _umask() -> int:
    try:  # Linux >= 4.7 reports it without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, and put it back at once
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[Any]:
    """Open a temp file next to ``path``; rename it over ``path`` only if the block succeeds.
    The file gets the permissions the umask gives a new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, umask_mode())
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temp directory; it replaces ``path`` only if the block succeeds. The directory
    gets the permissions the umask gives a new directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, umask_mode(directory=True))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_write(path) as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")


def read_json(path: str | Path) -> Any:
    with open(path) as fh:
        return json.load(fh)


def read_cached_tensor(path: str | Path, rows: int) -> torch.Tensor | None:
    """The finite 2-D tensor with ``rows`` rows stored at ``path``, else ``None``.

    ``None`` also for a file that is unreadable, has another shape or holds NaN / inf
    (logged as a warning): the caller recomputes and replaces it.
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        return None
    try:
        cached = load_file(str(path))["embeddings"]
        if cached.ndim != 2 or cached.shape[0] != rows:
            log.warning(
                "%s holds %s embeddings for %d rows; recomputing", path, tuple(cached.shape), rows
            )
            return None
        if not bool(torch.isfinite(cached).all()):
            raise ValueError("holds NaN or inf values")
        return cached
    except (SafetensorError, OSError, KeyError, ValueError) as err:
        log.warning("%s is unreadable (%s); recomputing", path, err)
        return None


def write_cached_tensor(path: str | Path, tensor: torch.Tensor, key: Any) -> None:
    """Store ``tensor`` at ``path`` (atomically) with its JSON cache ``key`` as metadata."""
    from safetensors.torch import save as safetensors_bytes

    payload = safetensors_bytes(
        {"embeddings": tensor.contiguous()},
        metadata={"cache_key": json.dumps(key, sort_keys=True, default=str)},
    )
    with atomic_write(path, "wb") as fh:
        fh.write(payload)
