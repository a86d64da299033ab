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
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

__all__ = ["FrameContent", "PIXEL_POLICY", "pixel_sha256", "float_content", "stored_content"]

# Bump when the stored-integers -> float32 policy of store.dicom changes (rescale, MONOCHROME1 inversion):
# every stored digest then changes, so features computed under the old policy are recomputed.
PIXEL_POLICY = 1


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

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)


def _shape(array: np.ndarray) -> str:
    return "x".join(str(n) for n in array.shape)


def float_content(frame: np.ndarray) -> FrameContent:
    """The content of a decoded frame hashed as is: ``"<dtype>;<shape>;"`` then its bytes."""
    frame = np.asarray(frame)
    return FrameContent(f"{frame.dtype.str};{_shape(frame)};", frame)


def stored_content(
    frame: np.ndarray, *, photometric: str, slope: float | None, intercept: float | None, value_range: tuple[float, float]
) -> FrameContent:
    """The content of a greyscale DICOM frame as its stored integers plus the mapping to float32."""
    little = frame.dtype.newbyteorder("<")
    if frame.dtype != little:  # big-endian files decode to big-endian arrays: hash one byte order
        frame = frame.astype(little)
    rescale = "none" if slope is None or intercept is None else f"{float(slope)!r},{float(intercept)!r}"
    descriptor = (
        f"stored/{PIXEL_POLICY};{frame.dtype.str};{_shape(frame)};{photometric};rescale={rescale};"
        f"range={float(value_range[0])!r},{float(value_range[1])!r};"
    )
    return FrameContent(descriptor, frame)


def pixel_sha256(array: np.ndarray) -> str:
    """Hex SHA-256 of a decoded pixel array: ``"<dtype>;<shape>;"`` then its C-order bytes."""
    return float_content(array).sha256()
