"""Small file-system primitives shared by the store's writers: directory fsync and exclusive locks."""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from store.errors import StoreError

__all__ = ["fsync_dir", "exclusive_lock"]


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename inside it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
