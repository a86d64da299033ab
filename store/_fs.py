"""Small file-system primitives shared by the store's writers: atomic files, directory fsync, exclusive locks."""

from __future__ import annotations

import fcntl
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from features.errors import StoreError

__all__ = ["fsync_dir", "exclusive_lock", "write_atomically", "TMP_PREFIX"]

TMP_PREFIX = ".tmp-"


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename inside it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """Make ``path`` hold what ``write(tmp)`` writes to a hidden sibling ``tmp``: whole or not at all.

    The sibling (``.tmp-<random><suffix>``) is fsynced, renamed over ``path`` and the folder fsynced, so
    a reader, or a rerun after SIGKILL, sees the previous file or the new one, never a torn one; on any
    error the sibling is removed and ``path`` is untouched. Returns ``path``.
    """
    tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}{path.suffix}")
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


@contextmanager
def exclusive_lock(lock_path: Path, *, busy_message: str, timeout_s: float = 600.0) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path``; after ``timeout_s`` raise ``StoreError(busy_message)``."""
    with open(lock_path, "a+") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreError(busy_message) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
