"""Exported image files on disk: PNGs written whole or not at all, their export key, the CSV index.

``cli.py export images`` (``extractors.image_export``) computes the pixels; this module is the part that
touches disk. Every PNG carries its *export key* (a hash of the unit's source pixels and the export
settings) in a ``tEXt`` chunk before the image data, so a rerun reads back only the header of a file to
know whether it already holds the same content and can be skipped (resume).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import uuid
from pathlib import Path

import numpy as np

from features.errors import InputError, UnsafeLocationError
from store._fs import TMP_PREFIX, write_atomically
from store.layout import Store
from store.pixels import dataset_root
from store.render import check_output_location

__all__ = ["EXPORT_KEY", "export_folder", "write_png", "read_png", "png_text", "file_sha256", "write_index"]

EXPORT_KEY = "chronofeat-export-key"  # the tEXt chunk that holds a file's export key


def export_folder(store: Store, dataset: str, out: str | os.PathLike) -> Path:
    """The resolved export folder ``out`` (not created); refused inside the store or the dataset's source tree.

    ``UnsafeLocationError`` when ``out`` is (or lies inside) the store, holds the store, links into it
    (``store.render.check_output_location`` with ``export``) or lies inside the folder ``dataset`` was
    ingested from: exported files never mix with the files chronofeat reads.
    """
    folder = check_output_location(store, out, export=True)
    source = dataset_root(store, dataset).resolve()
    if folder == source or source in folder.parents:
        raise UnsafeLocationError(
            f"Refused to export into {str(out)!r}: it resolves to {folder}, inside the source folder {source} of "
            f"dataset {dataset!r}, whose files chronofeat reads. Choose a folder outside it, e.g. ./export. "
            "Nothing was written."
        )
    if folder.exists() and not folder.is_dir():
        raise InputError(f"The export folder {folder} is a file; give a folder (it is created when missing).")
    return folder


def _png_bytes(array: np.ndarray, text: dict[str, str]) -> bytes:
    from PIL import Image, PngImagePlugin

    if array.dtype == np.uint16 and array.ndim == 2:
        image = Image.fromarray(array, mode="I;16") if _pillow_needs_mode() else Image.fromarray(array)
    elif array.dtype == np.uint8 and (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        image = Image.fromarray(array)
    else:
        raise InputError(
            f"A PNG holds (H, W) uint8/uint16 or (H, W, 3) uint8 pixels; got {array.dtype} {array.shape}."
        )
    info = PngImagePlugin.PngInfo()
    for name, value in text.items():
        info.add_text(name, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, compress_level=1)  # speed over size
    return buffer.getvalue()


def _pillow_needs_mode() -> bool:
    import PIL

    return int(PIL.__version__.split(".")[0]) < 10


def write_png(path: Path, array: np.ndarray, *, text: dict[str, str]) -> str:
    """Write ``array`` (``(H, W)`` uint8 or uint16, or ``(H, W, 3)`` uint8) as a PNG at ``path`` with the
    ``text`` chunks (name -> value, e.g. ``EXPORT_KEY``) before its pixels; whole or not at all (temporary
    sibling, then rename). Returns the file's sha256."""
    data = _png_bytes(np.ascontiguousarray(array), text)
    _replace(Path(path), data)
    return hashlib.sha256(data).hexdigest()


def _replace(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` or its previous content, never a part: a hidden sibling renamed over it.

    Not fsynced (an fsync per image costs more than making it): after a power loss a file may be empty,
    and a rerun redoes it, since its export key is then missing.
    """
    tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}{path.suffix}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_png(path: str | os.PathLike) -> np.ndarray:
    """The pixels of a PNG written by ``write_png``: uint8 ``(H, W)`` / ``(H, W, 3)`` or uint16 ``(H, W)``."""
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image)
    return array.astype(np.uint16) if array.dtype.kind in "iu" and array.dtype.itemsize > 1 else array


def png_text(path: Path) -> dict[str, str]:
    """The text chunks before the pixels of the PNG at ``path`` (its header only is read); ``{}`` when the
    file is missing or is not a readable PNG."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return {k: v for k, v in image.info.items() if isinstance(v, str)}
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return {}


def file_sha256(path: Path) -> str:
    """The sha256 of the bytes of the file at ``path``."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_index(path: Path, columns: list[str], rows: list[dict]) -> None:
    """Write ``rows`` (dicts over ``columns``) as the CSV ``path``, whole or not at all (fsynced, then renamed;
    the folder fsynced too, which also flushes the renames of the PNGs written before it)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    text = buffer.getvalue()
    write_atomically(Path(path), lambda tmp: tmp.write_text(text))
