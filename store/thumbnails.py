"""The thumbnail cache: small PNGs of scans and difference images, named by the pixels they show.

``<store>/thumbnails/<pixel_sha256>_<kind>.png``: ``pixel_sha256`` is the scan's keyed pixel hash (for a
difference image ``store.provenance.combine_hashes`` of its two scans' hashes, the pair's
``source_sha256``) and ``kind`` names the recipe (e.g. ``s96c224x224``: a scan at 96 px on a 224 x 224
canvas). A file is written once, atomically (``store._fs.write_atomically``), and reused by every later
``view`` / ``report``: changed pixels get a new hash and so a new file; nothing is ever overwritten.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from features.errors import ParameterError
from store._fs import write_atomically
from store.layout import Store

__all__ = ["THUMBNAILS_DIR", "thumbnails_dir", "thumbnail_name", "cached_thumbnail", "write_page"]

THUMBNAILS_DIR = "thumbnails"
_HASH = re.compile(r"^[0-9a-f]{16,128}$")
_KIND = re.compile(r"^[a-z0-9]{1,40}$")


def thumbnails_dir(store: Store) -> Path:
    """``<store>/thumbnails`` (created)."""
    path = store.root / THUMBNAILS_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def thumbnail_name(pixel_sha256: str, kind: str) -> str:
    """The file name of a thumbnail: ``<pixel_sha256>_<kind>.png``; ``ParameterError`` for a hash that is not
    lower-case hex or a kind that is not lower-case letters and digits."""
    if not isinstance(pixel_sha256, str) or not _HASH.match(pixel_sha256):
        raise ParameterError(f"The 'pixel_sha256' of a thumbnail must be a lower-case hex digest. "
                             f"Got {pixel_sha256!r} instead.")
    if not isinstance(kind, str) or not _KIND.match(kind):
        raise ParameterError(f"The 'kind' of a thumbnail must be 1-40 lower-case letters or digits. Got {kind!r}.")
    return f"{pixel_sha256}_{kind}.png"


def _save_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    image = np.asarray(rgb)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ParameterError(f"A thumbnail must be a uint8 (H, W) or (H, W, 3) array. Got {image.dtype} {image.shape}.")
    write_atomically(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG", optimize=True))


def cached_thumbnail(store: Store, pixel_sha256: str, kind: str, make: Callable[[], np.ndarray]) -> tuple[Path, bool]:
    """The thumbnail of ``pixel_sha256`` in recipe ``kind``: the cached file, else ``make()`` (a uint8 grey or RGB
    array) written as PNG. Returns (path, True when it was written now)."""
    path = thumbnails_dir(store) / thumbnail_name(pixel_sha256, kind)
    if path.is_file():
        return path, False
    _save_png(path, make())
    return path, True


def write_page(path: Path, text: str) -> Path:
    """Write an HTML page (``text``, UTF-8) atomically at ``path`` (its folder created); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
