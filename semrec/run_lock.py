"""Advisory locks on the directories a command writes: a run, an export, a compare's output,
a conversion's output.

``semrec fit`` on a run directory that another ``semrec fit`` is training would share its
checkpoints, and the last writer would win. :func:`directory_lock` holds an exclusive
``flock`` on a small file beside the directory (``.<name>.semrec.lock`` in its parent, so
it works before the directory exists and does not make an export target non-empty) for the
whole command. A second command on the same directory is refused with the holder's pid and
command line.

The kernel drops a ``flock`` when its process dies, so a lock left by a killed command is
simply free: the next command takes it over and says whose it was. A command that ends
removes its lock file (while still holding the lock; a command that opened the file just
before sees that it was removed and locks the new one).

The processes a command starts itself (``predict --workers``, Lightning's DDP processes)
inherit the held paths through the environment (``SEMREC_HELD_LOCKS``) and do not lock
again; processes of a multi-process launch other than global rank zero never lock (rank
zero writes the directory).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from semrec.distributed import is_rank_zero
from semrec.errors import RunError

HELD_ENV = "SEMREC_HELD_LOCKS"


class DirectoryInUseError(RunError):
    """Another live semrec command holds the directory's lock."""


def lock_path(directory: str | Path) -> Path:
    """The lock file of ``directory``: ``.<name>.semrec.lock`` beside it."""
    directory = Path(directory).absolute()
    return directory.parent / f".{directory.name}.semrec.lock"


def _held() -> list[str]:
    return [p for p in os.environ.get(HELD_ENV, "").split(os.pathsep) if p]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 65536).decode("utf-8", "replace")
    try:
        found = json.loads(text)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


@contextlib.contextmanager
def directory_lock(
    directory: str | Path,
    command: str | None = None,
    echo: Callable[[str], None] = print,
) -> Iterator[None]:
    """Hold ``directory``'s lock for the block; raise :class:`DirectoryInUseError` if a live
    process holds it. ``command`` (default: this process's command line) is recorded."""
    path = lock_path(directory)
    if str(path) in _held() or not is_rank_zero():
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path, directory)
    try:
        previous = _holder(fd)
        pid = previous.get("pid")
        if isinstance(pid, int) and pid != os.getpid() and not _alive(pid):
            echo(
                f"[lock] {directory}: took over the lock of pid {pid} "
                f"({previous.get('command', '?')!r}), which is no longer running"
            )
        record = {
            "pid": os.getpid(),
            "command": command or " ".join(sys.argv),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(record).encode())
        before = os.environ.get(HELD_ENV)
        os.environ[HELD_ENV] = os.pathsep.join([*_held(), str(path)])
        try:
            yield
        finally:
            if before is None:
                os.environ.pop(HELD_ENV, None)
            else:
                os.environ[HELD_ENV] = before
            path.unlink(missing_ok=True)  # still locked: nobody can take this inode now
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _acquire(path: Path, directory: str | Path) -> int:
    """A descriptor of ``path`` holding its exclusive lock (the file as it is now on disk)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise DirectoryInUseError(
                f"{directory} is in use by another semrec command (pid "
                f"{holder.get('pid', '?')}: {holder.get('command', '?')!r}, since "
                f"{holder.get('started', '?')}); wait for it to finish, stop it, or use "
                "another directory"
            ) from None
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            return fd
        os.close(fd)  # its holder removed it as we opened it: lock the file there now


__all__ = ["DirectoryInUseError", "directory_lock", "lock_path"]
