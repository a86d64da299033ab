"""Filling in ``pixel_sha256`` while ingestion parses the next files.

Hashing a 512x512 16-bit frame (SHA-256, 0.3 ms) takes about as long as parsing its file. A helper
thread cannot take that off the parsing thread: it needs the GIL back after every frame, and gets it
only when the busy parser is forced to switch, so it lags and slows the parser. A helper *process*
needs no GIL of ours. It gets only where a frame's stored integers lie in its file
(``store.digest.FileFrameContent``), reads and hashes them itself, and sends the digests back.

This process hashes a batch itself whenever the helper already holds as many as it may, so the
two share the work whatever their speeds, and a stall at the end of a chunk stays short.

The helper is a plain ``python -c`` subprocess talking over two pipes, not a ``multiprocessing``
child: those re-import the caller's main script, which runs again whatever a script without an
``if __name__ == "__main__"`` guard does at top level. Where it cannot start (no POSIX pipes to
pass, no ``sys.executable``), or dies, this process hashes everything itself.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections import deque
from multiprocessing.connection import Connection
from pathlib import Path

from features.errors import DecodeError
from store.digest import FileFrameContent, FrameContent

__all__ = ["FrameHasher", "hash_frames", "serve"]

_BATCH = 4  # file frames per message to the helper
_IN_FLIGHT = 3  # batches the helper may hold; past that this process hashes the next batch itself


def hash_frames(contents: list[FrameContent | FileFrameContent]) -> list[tuple[str | None, str | None]]:
    """``(digest, None)`` per frame, or ``(None, message)`` for a frame whose file no longer holds it."""
    out: list[tuple[str | None, str | None]] = []
    for content in contents:
        try:
            out.append((content.sha256(), None))
        except DecodeError as exc:
            out.append((None, str(exc)))
    return out


_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)  # the folder holding store/
_HELPER_CODE = (
    "import sys; sys.path.insert(0, sys.argv[1]); from store._frame_hasher import serve; "
    "serve(int(sys.argv[2]), int(sys.argv[3]))"
)


def serve(read_fd: int, write_fd: int) -> None:
    """The helper process: hash each batch read from ``read_fd``, send the results to ``write_fd``, until
    ``None`` arrives or the parent's end closes (it exited or was killed)."""
    incoming, outgoing = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    try:
        while True:
            batch = incoming.recv()
            if batch is None:
                return
            outgoing.send(hash_frames(batch))
    except (EOFError, OSError, KeyboardInterrupt):  # the parent is gone or stopping: nothing to hand back
        return


class FrameHasher:
    """Sets ``row["pixel_sha256"]`` for each ``(row, content)`` added, inline or (``helper=True``) shared
    with one helper process.

    ``finish()`` waits until every row added so far has its digest and returns ``(row, message)`` for
    frames that could not be hashed (their file changed while being read). Use as a context manager:
    leaving it stops the helper. Only ``FileFrameContent`` frames go to the helper; in-memory frames are
    hashed here, where their bytes already are.
    """

    def __init__(self, *, helper: bool = False) -> None:
        self.helper = helper
        self._batch: list[tuple[dict, FileFrameContent]] = []
        self._sent: deque[tuple[list[dict], list[FileFrameContent]]] = deque()
        self._errors: list[tuple[dict, str]] = []
        self._process: subprocess.Popen | None = None
        self._to_helper: Connection | None = None
        self._from_helper: Connection | None = None

    # -------------------------------------------------------------------------------- public

    def add(self, row: dict, content: FrameContent | FileFrameContent) -> None:
        """Hash ``content`` into ``row["pixel_sha256"]``, now or by the time ``finish`` returns."""
        if not self.helper or not isinstance(content, FileFrameContent):
            self._store([row], hash_frames([content]))
            return
        self._batch.append((row, content))
        if len(self._batch) >= _BATCH:
            self._dispatch()

    def finish(self) -> list[tuple[dict, str]]:
        """Wait for every digest; the ``(row, message)`` of frames that could not be hashed, then forget them."""
        if self._batch:  # hashed here while the helper works through what it holds
            rows, contents = zip(*self._batch, strict=True)
            self._batch = []
            self._store(list(rows), hash_frames(list(contents)))
        while self._sent:
            self._receive()
        errors, self._errors = self._errors, []
        return errors

    def close(self) -> None:
        """Stop the helper process (if one was started)."""
        process, to_helper, from_helper = self._process, self._to_helper, self._from_helper
        self._process = self._to_helper = self._from_helper = None
        if to_helper is not None:
            with contextlib.suppress(OSError):
                to_helper.send(None)
            to_helper.close()
        if from_helper is not None:
            from_helper.close()
        if process is not None:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> FrameHasher:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ------------------------------------------------------------------------------- private

    def _store(self, rows: list[dict], results: list[tuple[str | None, str | None]]) -> None:
        for row, (digest, message) in zip(rows, results, strict=True):
            row["pixel_sha256"] = digest
            if message is not None:
                self._errors.append((row, message))

    def _start(self) -> bool:
        """Start the helper (it inherits only its two pipes, not the dataset lock); False where it cannot."""
        if os.name != "posix" or not sys.executable:
            return False
        helper_read, parent_write = os.pipe()
        parent_read, helper_write = os.pipe()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _HELPER_CODE, _PACKAGE_ROOT, str(helper_read), str(helper_write)],
                pass_fds=(helper_read, helper_write), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            )
        except OSError:
            os.close(parent_read)
            os.close(parent_write)
            return False
        finally:
            os.close(helper_read)
            os.close(helper_write)
        self._to_helper = Connection(parent_write, readable=False)
        self._from_helper = Connection(parent_read, writable=False)
        return True

    def _dispatch(self) -> None:
        rows = [row for row, _ in self._batch]
        contents = [content for _, content in self._batch]
        self._batch = []
        if self._process is None and not self._start():
            self.helper = False
        while self.helper and self._sent and self._from_helper.poll():
            self._receive()
        if not self.helper or len(self._sent) >= _IN_FLIGHT:
            self._store(rows, hash_frames(contents))
            return
        try:
            self._to_helper.send(contents)
        except OSError:  # the helper died: hash everything here from now on
            self._lost_helper()
            self._store(rows, hash_frames(contents))
            return
        self._sent.append((rows, contents))

    def _receive(self) -> None:
        """The digests of the oldest batch the helper holds (waiting for them)."""
        try:
            results = self._from_helper.recv()
        except (EOFError, OSError):
            self._lost_helper()
            return
        rows, _ = self._sent.popleft()
        self._store(rows, results)

    def _lost_helper(self) -> None:
        """The helper is gone (killed, out of memory): hash what it held here, and send it nothing more."""
        pending = list(self._sent)
        self._sent.clear()
        self.helper = False
        self.close()
        for rows, contents in pending:
            self._store(rows, hash_frames(contents))
