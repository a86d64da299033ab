"""Where an internal error's traceback goes: a private file in the store's ``logs/`` folder.

The terminal gets one line naming the file, never the traceback: a third-party exception message can
quote header values, and the store is the one place already trusted with what the images say.
"""

from __future__ import annotations

import os
import tempfile
import time
import traceback
from pathlib import Path

__all__ = ["save_traceback", "LOGS_DIR"]

LOGS_DIR = "logs"


def _log_folder(store_option: str | None) -> Path:
    """``<store>/logs`` when the store folder exists, else the system temporary folder."""
    root = Path(store_option or os.environ.get("CHRONOFEAT_STORE") or "featurestore").expanduser()
    if root.is_dir():
        folder = root / LOGS_DIR
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
            return folder
        except OSError:
            pass
    return Path(tempfile.gettempdir())


def save_traceback(store_option: str | None, exc: BaseException) -> Path:
    """Write ``exc``'s traceback to a new mode-0600 file; return its path.

    ``store_option`` is the command's ``--store`` value (``None``: ``$CHRONOFEAT_STORE`` or
    ``./featurestore``). The store is not opened or validated: this runs after something went wrong.
    """
    folder = _log_folder(store_option)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    path = folder / f"chronofeat-error-{stamp}-{os.getpid()}.log"
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as handle:
        handle.write(text)
    return path
