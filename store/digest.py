"""What ``pixel_sha256`` hashes: one frame's pixel content, stated as a descriptor plus its bytes.

A scan's ``pixel_sha256`` identifies the pixels an extractor will get for it (``store.pixels``), so a
file whose pixels change is recomputed. Two equivalent contents are hashed:

- ``float32``: the decoded float32 frame itself (``"<f4;HxW;"`` then its bytes), for every image
  that is not plain greyscale DICOM (PNG/TIFF/NPY, colour, palette, Modality LUT);
- ``stored``: for greyscale DICOM, the integer values pydicom decodes (after the unused-bit
  correction) together with everything that maps them to the float32 frame: photometric
  interpretation, rescale slope and intercept, the stored value range and the pixel policy
  version. The float32 frame is a pure function of these, so equal digests still mean equal
  arrays, while ingestion hashes half the bytes and never builds the float32 frame. Lossless
  re-encodings of one image (JPEG-LS, RLE, uncompressed) decode to the same integers and share a digest.

An uncompressed greyscale frame can also be described by where its stored integers lie in the file
(``FileFrameContent``): it hashes to the same digest, and the bytes are read only when it is hashed,
possibly by another process than the one that parsed the header.

What a table stores is not that raw digest but ``keyed_sha256(secret, raw)``, an HMAC of it under the
store's secret (``pixel_sha256(array, secret=...)`` computes it from pixels): equal pixels still share a
``pixel_sha256`` within a store, while the same image in two stores cannot be linked by it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from dataclasses import dataclass

import numpy as np

from features.errors import DecodeError

__all__ = [
    "FileFrameContent",
    "FrameContent",
    "PIXEL_POLICY",
    "clear_unused_bits",
    "float_content",
    "keyed_sha256",
    "open_regular",
    "pixel_sha256",
    "stored_content",
    "stored_descriptor",
]

# Bump when the stored-integers -> float32 policy of store.dicom changes (rescale, MONOCHROME1 inversion):
# every stored digest then changes, so features computed under the old policy are recomputed.
PIXEL_POLICY = 1
_KEYED_DOMAIN = b"chronofeat.pixel-sha256\0"


def keyed_sha256(secret: bytes, raw: str) -> str:
    """The stored ``pixel_sha256`` of a frame whose raw digest (hex SHA-256 of its content) is ``raw``:
    hex HMAC-SHA256 under the store ``secret`` of the raw digest's bytes, 64 characters."""
    return hmac.new(secret, _KEYED_DOMAIN + bytes.fromhex(raw), hashlib.sha256).hexdigest()


def open_regular(path, *, label: str, buffered: bool = True):
    """``path`` opened for binary reading (its ``name`` is ``path``, as ``open`` gives); ``DecodeError``
    naming ``label`` when it is not a regular file (a FIFO, socket or device is refused without
    waiting on it: opened non-blocking, checked, then read) or cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise DecodeError(
            f"{label}: could not be opened ({exc.strerror or type(exc).__name__}). Check that it exists and is "
            "readable."
        ) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise DecodeError(
                f"{label}: not a regular file (a FIFO, socket or device); it was not read. Move it out of the "
                "dataset folder."
            )
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        handle = os.fdopen(fd, "rb", buffering=-1 if buffered else 0)
    except BaseException:
        os.close(fd)
        raise
    (handle.raw if buffered else handle).name = os.fsdecode(path)
    return handle


@dataclass(frozen=True)
class FrameContent:
    """One frame as hashed: ``descriptor`` (ASCII) then the C-order bytes of ``data``."""

    descriptor: str
    data: np.ndarray

    def sha256(self) -> str:
        """Hex SHA-256 of the descriptor followed by the frame's bytes."""
        digest = hashlib.sha256(self.descriptor.encode("ascii"))
        data = np.ascontiguousarray(self.data)
        digest.update(data.data if data.ndim else data.tobytes())
        return digest.hexdigest()


@dataclass(frozen=True)
class FileFrameContent:
    """One frame of native (uncompressed little-endian) stored integers, by its place in a file.

    ``count`` values of ``dtype`` start at byte ``offset`` of ``path``; as pydicom does, the bits
    above ``bits_stored`` are cleared (or the sign extended) before hashing. ``name`` is how errors
    refer to the file. Hashes exactly as ``stored_content`` of the decoded frame with the same
    ``descriptor`` does.
    """

    descriptor: str
    path: str
    name: str
    offset: int
    dtype: str
    count: int
    bits_stored: int

    @property
    def nbytes(self) -> int:
        return self.count * np.dtype(self.dtype).itemsize

    def read(self) -> np.ndarray:
        """The frame's stored integers as a flat array; ``DecodeError`` if the file no longer holds them."""
        try:
            with open_regular(self.path, label=self.name, buffered=False) as handle:
                handle.seek(self.offset)
                data = handle.read(self.nbytes)
        except OSError as exc:
            raise DecodeError(
                f"{self.name}: could not be read again for its pixel data ({exc.strerror or type(exc).__name__}); "
                "it was moved or changed while being ingested. Ingest again with --retry-failed."
            ) from None
        if len(data) != self.nbytes:
            raise DecodeError(
                f"{self.name}: its pixel data ends early ({len(data)} of {self.nbytes} bytes at offset "
                f"{self.offset}); the file changed while it was being ingested. Ingest again with --retry-failed "
                "once it is complete."
            )
        return clear_unused_bits(np.frombuffer(data, dtype=self.dtype), bits_stored=self.bits_stored)

    def sha256(self) -> str:
        """Hex SHA-256 of the descriptor followed by the frame's stored integers, read from the file."""
        digest = hashlib.sha256(self.descriptor.encode("ascii"))
        digest.update(self.read().data)
        return digest.hexdigest()


def clear_unused_bits(values: np.ndarray, *, bits_stored: int) -> np.ndarray:
    """Native pixel values as pydicom decodes them: bits above ``bits_stored`` cleared (unsigned dtype)
    or the sign bit extended over them (signed dtype).

    ``values`` itself comes back when every value already lies in the stored range, which two read-only
    passes confirm; otherwise a corrected copy.
    """
    allocated = values.dtype.itemsize * 8
    if bits_stored >= allocated:
        return values
    signed = values.dtype.kind == "i"
    low = -(1 << (bits_stored - 1)) if signed else 0
    high = (1 << (bits_stored - 1)) - 1 if signed else (1 << bits_stored) - 1
    if values.size == 0 or (int(values.max()) <= high and int(values.min()) >= low):
        return values
    shift = allocated - bits_stored
    return np.right_shift(np.left_shift(values, shift), shift)


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape)


def float_content(frame: np.ndarray) -> FrameContent:
    """The content of a decoded frame hashed as is: ``"<dtype>;<shape>;"`` then its bytes."""
    frame = np.asarray(frame)
    return FrameContent(f"{frame.dtype.str};{_shape(frame.shape)};", frame)


def stored_content(
    frame: np.ndarray,
    *,
    photometric: str,
    slope: float | None,
    intercept: float | None,
    value_range: tuple[float, float],
) -> FrameContent:
    """The content of a greyscale DICOM frame as its stored integers plus the mapping to float32."""
    little = frame.dtype.newbyteorder("<")
    if frame.dtype != little:  # big-endian files decode to big-endian arrays: hash one byte order
        frame = frame.astype(little)
    descriptor = stored_descriptor(
        frame.dtype, frame.shape, photometric=photometric, slope=slope, intercept=intercept, value_range=value_range
    )
    return FrameContent(descriptor, frame)


def stored_descriptor(
    dtype: np.dtype, shape: tuple[int, ...], *, photometric: str, slope: float | None, intercept: float | None,
    value_range: tuple[float, float],
) -> str:
    """The descriptor hashed before a greyscale frame's stored integers of little-endian ``dtype`` and
    ``shape``: the integers' layout and everything that maps them to the float32 frame."""
    rescale = "none" if slope is None or intercept is None else f"{float(slope)!r},{float(intercept)!r}"
    return (
        f"stored/{PIXEL_POLICY};{np.dtype(dtype).newbyteorder('<').str};{_shape(shape)};{photometric};"
        f"rescale={rescale};range={float(value_range[0])!r},{float(value_range[1])!r};"
    )


def pixel_sha256(array: np.ndarray, *, secret: bytes) -> str:
    """The stored ``pixel_sha256`` of a decoded pixel array under the store ``secret``: ``keyed_sha256`` of
    the hex SHA-256 of ``"<dtype>;<shape>;"`` then its C-order bytes."""
    return keyed_sha256(secret, float_content(array).sha256())
