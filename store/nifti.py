"""NIfTI-1/NIfTI-2 files (``.nii``, ``.nii.gz``) through nibabel: recognised from their bytes, decoded
within the decoding budget, returned as ``(z, y, x)`` voxels with their RAS affine.

Only geometry and voxels are read from the header: its free-text fields (``descrip``, ``aux_file``,
``intent_name``, ``db_name``) may hold identifying text and are never returned or stored. A 4-D (or
higher) image is refused: split it into 3-D volumes first.
"""

from __future__ import annotations

import gzip
import io
import zlib
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from features.errors import DecodeError
from store.limits import check_decoded_size

__all__ = ["NiftiVolume", "is_nifti_bytes", "sniff_nifti", "read_nifti", "read_nifti_geometry", "NIFTI_SUFFIXES"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
_GZIP_MAGIC = b"\x1f\x8b"
_HEADER_BYTES = 544  # NIfTI-2 header length (NIfTI-1: 348)


@dataclass(frozen=True)
class NiftiVolume:
    """A decoded NIfTI volume: ``array`` ``(z, y, x)`` (native dtype, or float32 when the header's
    ``scl_slope``/``scl_inter`` are not the identity), ``affine`` voxel ``(i, j, k)`` -> RAS mm (the
    sform when set, else the qform), ``spacing`` ``(z, y, x)`` mm."""

    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]


def is_nifti_bytes(head: bytes) -> bool:
    """True when ``head`` (the first >= 348 uncompressed bytes) carries the NIfTI-1 or NIfTI-2 magic."""
    return (len(head) >= 348 and head[344:348] in (b"n+1\0", b"ni1\0")) or (
        len(head) >= 8 and head[4:8] in (b"n+2\0", b"ni2\0")
    )


def _uncompressed_head(handle: BinaryIO) -> bytes:
    """The first header bytes of ``handle`` (gunzipped when it is gzip); the handle is rewound."""
    start = handle.tell()
    try:
        first = handle.read(2)
        handle.seek(start)
        if first == _GZIP_MAGIC:
            try:
                return gzip.GzipFile(fileobj=handle, mode="rb").read(_HEADER_BYTES)
            except (OSError, EOFError, zlib.error):
                return b""
        return handle.read(_HEADER_BYTES)
    finally:
        handle.seek(start)


def sniff_nifti(handle: BinaryIO) -> bool:
    """True when the open binary ``handle`` is a NIfTI file (plain or gzip); the handle is rewound."""
    return is_nifti_bytes(_uncompressed_head(handle))


def _image_class(head: bytes):
    import nibabel as nib

    return nib.Nifti2Image if head[4:8] in (b"n+2\0", b"ni2\0") else nib.Nifti1Image


def _header(head: bytes, label: str):
    """The nibabel header parsed from ``head``; ``DecodeError`` when it is not a usable NIfTI header."""
    cls = _image_class(head)
    try:
        return cls.header_class.from_fileobj(io.BytesIO(head)), cls
    except Exception as exc:  # nibabel raises HeaderDataError, ValueError... for a broken header
        raise DecodeError(f"{label}: the NIfTI header cannot be read ({type(exc).__name__}). Write the file again.") \
            from None


def _check_shape(label: str, shape: tuple[int, ...], max_bytes: int | None) -> tuple[int, int, int]:
    """``(x, y, z)`` of a 2-D or 3-D image (trailing singleton axes dropped); ``DecodeError`` for 4-D+."""
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) > 3:
        raise DecodeError(
            f"{label}: a {len(dims)}-D NIfTI image (shape {tuple(dims)}); only 2-D and 3-D images are read. Split "
            "it into one 3-D file per volume (e.g. fslsplit or nibabel.four_to_three)."
        )
    while len(dims) < 3:
        dims.append(1)
    x, y, z = (int(n) for n in dims)
    if min(x, y, z) < 1:
        raise DecodeError(f"{label}: the NIfTI header gives an empty shape {tuple(shape)}. Write the file again.")
    check_decoded_size(label, frames=z, rows=y, cols=x, budget=max_bytes)
    return x, y, z


def _body(handle: BinaryIO, label: str) -> bytes:
    raw = handle.read()
    if raw[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DecodeError(f"{label}: the gzip stream is damaged ({exc}). Copy the file again.") from None
    return raw


def _scaled(image, header) -> np.ndarray:
    """The voxels in native dtype, or float32 when the header scales them."""
    slope, inter = header.get_slope_inter()
    raw = np.asanyarray(image.dataobj.get_unscaled())
    if (slope is None or slope == 1.0) and (inter is None or inter == 0.0):
        return raw
    return (raw.astype(np.float32) * np.float32(slope if slope is not None else 1.0)
            + np.float32(inter or 0.0))


def read_nifti(handle: BinaryIO, *, name: str, max_bytes: int | None = None) -> NiftiVolume:
    """Decode the NIfTI file open as ``handle`` (positioned at its start) into a ``NiftiVolume``.

    ``name`` labels messages. The header's shape is checked against ``max_bytes`` (``None``: the budget of
    ``store.limits``) before the voxels are decompressed. ``DecodeError`` for a damaged, truncated or
    4-D file.
    """
    head = _uncompressed_head(handle)
    if not is_nifti_bytes(head):
        raise DecodeError(f"{name}: not a NIfTI file (no n+1/n+2 magic). Convert it, or move it out of the folder.")
    header, cls = _header(head, name)
    x, y, z = _check_shape(name, tuple(int(n) for n in header.get_data_shape()), max_bytes)
    body = _body(handle, name)
    try:
        image = cls.from_bytes(body)
        data = _scaled(image, image.header)
    except Exception as exc:  # truncated data, bad offsets
        raise DecodeError(
            f"{name}: the NIfTI voxels cannot be read ({type(exc).__name__}: {str(exc)[:120]}). Write the file again."
        ) from None
    array = np.ascontiguousarray(data.reshape(x, y, z).transpose(2, 1, 0))
    affine = np.asarray(image.affine, dtype=np.float64)
    spacing = tuple(float(np.linalg.norm(affine[:3, axis])) for axis in (2, 1, 0))
    return NiftiVolume(array, affine, spacing)  # type: ignore[arg-type]


def read_nifti_geometry(handle: BinaryIO, *, name: str) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The RAS affine and ``(z, y, x)`` shape of the NIfTI file open as ``handle``, from its header alone
    (no voxel is decompressed past the header). ``DecodeError`` when it is not a usable NIfTI header."""
    head = _uncompressed_head(handle)
    if not is_nifti_bytes(head):
        raise DecodeError(f"{name}: not a NIfTI file (no n+1/n+2 magic). Convert it, or move it out of the folder.")
    header, _ = _header(head, name)
    x, y, z = _check_shape(name, tuple(int(n) for n in header.get_data_shape()), None)
    return np.asarray(header.get_best_affine(), dtype=np.float64), (z, y, x)
