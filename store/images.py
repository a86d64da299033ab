"""Reading PNG, JPEG, TIFF and NumPy ``.npy`` images as float32 frames.

The same frame convention as DICOM (``store.dicom``): a C-contiguous float32 array
``(frames, H, W)`` for greyscale or ``(frames, H, W, 3)`` for colour. Values are the stored values
(no scaling: a 16-bit PNG keeps 0..65535); an alpha channel is dropped, a palette image expanded
to RGB.

Shapes of ``.npy`` arrays: ``(H, W)`` one greyscale frame; ``(H, W, 3|4)`` one colour frame;
``(N, H, W)`` N greyscale frames; ``(N, H, W, 3|4)`` N colour frames. TIFF follows the axes
tifffile reports (samples ``S`` last, any other leading axes flattened into frames).

The size a file claims (PNG/JPEG/TIFF dimensions and frame count, the ``.npy`` header's shape) is
checked against the decoding budget (``store.limits``) before its pixels are decoded or allocated.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np

from features.errors import DecodeError, ResourceLimitError
from store.limits import check_decoded_size

__all__ = ["IMAGE_MAGIC", "IMAGE_SUFFIXES", "image_kind", "read_image", "as_frames"]

IMAGE_MAGIC = {
    "png": (b"\x89PNG\r\n\x1a\n",),
    "npy": (b"\x93NUMPY",),
    "tiff": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
    "jpeg": (b"\xff\xd8\xff",),
}
IMAGE_SUFFIXES = (".png", ".npy", ".tif", ".tiff", ".jpg", ".jpeg")


def image_kind(head: bytes) -> str | None:
    """``png``/``npy``/``tiff``/``jpeg`` from a file's first bytes (its signature), else ``None``.

    The signature decides, not the suffix: a ``.png`` that is not a PNG is reported as such.
    """
    for kind, magics in IMAGE_MAGIC.items():
        if any(head.startswith(m) for m in magics):
            return kind
    return None


def as_frames(array: np.ndarray, *, colour: bool | None = None, name: str = "array") -> np.ndarray:
    """``array`` as float32 frames ``(n, H, W)`` or ``(n, H, W, 3)``.

    ``colour`` says whether the last axis holds colour samples; ``None`` infers it from the shape
    (3-D or 4-D with a last axis of 3 or 4), the rule used for ``.npy`` files.
    """
    if array.dtype.kind not in "biuf":
        raise DecodeError(
            f"{name}: pixel type {array.dtype} is not numeric (bool, int, uint or float). Save the image "
            "as a numeric array."
        )
    if array.dtype.kind == "b":
        array = array.astype(np.uint8)
    if colour is None:
        colour = array.ndim in (3, 4) and array.shape[-1] in (3, 4)
    if colour:
        array = array[..., :3]
    base = 3 if colour else 2
    if array.ndim == base:
        array = array[np.newaxis]
    elif array.ndim != base + 1:
        raise DecodeError(
            f"{name}: an array of shape {tuple(array.shape)} is not an image; expected (H, W), (H, W, 3), "
            "(N, H, W) or (N, H, W, 3)."
        )
    if min(array.shape[1:3], default=0) < 1 or array.shape[0] < 1:
        raise DecodeError(f"{name}: the image is empty (shape {tuple(array.shape)}).")
    return np.ascontiguousarray(array, dtype=np.float32)


def _check_frames(name: str, shape: tuple[int, ...], *, colour: bool, budget: int | None) -> None:
    """``check_decoded_size`` for an array of ``shape`` read as frames (leading axes flattened)."""
    spatial = 3 if colour else 2
    if len(shape) < spatial:
        return
    lead = int(np.prod(shape[: len(shape) - spatial], dtype=np.int64)) if len(shape) > spatial else 1
    samples = min(int(shape[-1]), 3) if colour else 1
    check_decoded_size(
        name, frames=lead, rows=int(shape[len(shape) - spatial]), cols=int(shape[len(shape) - spatial + 1]),
        samples=samples, budget=budget,
    )


def _read_pil(path, name: str, budget: int | None = None) -> np.ndarray:
    import warnings

    from PIL import Image, UnidentifiedImageError

    frames = []
    try:
        with warnings.catch_warnings():  # the budget below decides; Pillow's own hard limit stays a second guard
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ResourceLimitError(
            f"{name}: Pillow refused to decode it as a possible decompression bomb ({exc}). If the image is "
            "genuine, convert it to TIFF or NPY; otherwise remove the file."
        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DecodeError(
            f"{name}: the image could not be decoded ({type(exc).__name__}: {exc}). Re-save it as PNG or TIFF."
        ) from None
    try:
        with image:
            width, height = image.size
            count = getattr(image, "n_frames", 1)
            samples = 3 if image.mode == "P" or len(image.getbands()) >= 3 else 1
            check_decoded_size(name, frames=count, rows=height, cols=width, samples=samples, budget=budget)
            for index in range(count):
                image.seek(index)
                frame = image
                if frame.mode == "P":
                    frame = frame.convert("RGBA" if "transparency" in frame.info else "RGB")
                elif frame.mode in ("LA", "La", "PA"):
                    frame = frame.getchannel(0)
                elif frame.mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBa", "RGBX"):
                    frame = frame.convert("RGB")
                elif frame.mode == "1":
                    frame = frame.convert("L")
                frames.append(np.asarray(frame))
    except ResourceLimitError:
        raise
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DecodeError(
            f"{name}: the image could not be decoded ({type(exc).__name__}: {exc}). Re-save it as PNG or TIFF."
        ) from None
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise DecodeError(f"{name}: its frames differ in size {sorted(shapes)}; split it into one file per frame.")
    return as_frames(np.stack(frames), colour=frames[0].ndim == 3, name=name)


def _read_tiff(path, name: str, budget: int | None = None) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes = series.axes
            shape = tuple(series.shape)
            if "S" in axes:  # samples last, as they are read below
                position = axes.index("S")
                shape = shape[:position] + shape[position + 1 :] + (shape[position],)
            _check_frames(name, shape, colour="S" in axes and shape[-1] > 1, budget=budget)
            array = series.asarray()
    except ResourceLimitError:
        raise
    except Exception as exc:  # tifffile raises several types for damaged or exotic files
        raise DecodeError(
            f"{name}: the TIFF could not be decoded ({type(exc).__name__}: {exc}). Re-save it as an "
            "uncompressed TIFF or PNG."
        ) from None
    if "S" in axes:
        position = axes.index("S")
        array = np.moveaxis(array, position, -1)
        axes = axes[:position] + axes[position + 1 :] + "S"
        if array.shape[-1] == 1:
            array, axes = array[..., 0], axes[:-1]
    spatial = 3 if axes.endswith("S") else 2
    lead = array.shape[: array.ndim - spatial]
    array = array.reshape((int(np.prod(lead, dtype=np.int64)),) + array.shape[array.ndim - spatial :])
    return as_frames(array, colour=axes.endswith("S"), name=name)


def _npy_not_loaded(label: str, exc: BaseException) -> DecodeError:
    return DecodeError(
        f"{label}: the .npy file could not be loaded ({type(exc).__name__}: {exc}). Save it with "
        "numpy.save (no pickled objects)."
    )


def _read_npy(path, label: str, budget: int | None) -> np.ndarray:
    """An ``.npy`` array, its header's shape checked against the budget and the file's length first."""
    from numpy.lib import format as npy

    try:
        handle = open(path, "rb") if isinstance(path, (str, Path)) else path  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise _npy_not_loaded(label, exc) from None
    try:
        start = handle.tell()
        try:
            version = npy.read_magic(handle)
            reader = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
            shape, _, dtype = reader(handle)
        except (ValueError, OSError, EOFError) as exc:
            raise _npy_not_loaded(label, exc) from None
        colour = len(shape) in (3, 4) and shape[-1] in (3, 4)
        _check_frames(label, tuple(int(n) for n in shape), colour=colour, budget=budget)
        data_start = handle.tell()
        end = handle.seek(0, 2)
        needed = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if not dtype.hasobject and end - data_start < needed:
            raise DecodeError(
                f"{label}: the .npy file is truncated ({end - data_start} of the {needed} bytes its header "
                "announces). Save it again with numpy.save."
            )
        handle.seek(start)
        try:
            array = np.load(handle, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise _npy_not_loaded(label, exc) from None
    finally:
        if handle is not path:
            handle.close()
    return as_frames(array, name=label)


def read_image(
    path: str | Path | BinaryIO, kind: str, *, name: str | None = None, max_bytes: int | None = None
) -> np.ndarray:
    """Decode the ``kind`` (``png``/``jpeg``/``tiff``/``npy``) file at ``path`` into float32 frames.

    ``path`` may also be a binary file object positioned at the start. Raises ``DecodeError``
    (message naming ``name``, the path relative to the dataset root), and ``ResourceLimitError``
    before decoding when the frames would exceed ``max_bytes`` as float32 (``None``: the budget of
    ``store.limits``).
    """
    label = name or Path(getattr(path, "name", path)).name
    if kind == "npy":
        return _read_npy(path, label, max_bytes)
    if kind == "tiff":
        return _read_tiff(path, label, max_bytes)
    if kind in ("png", "jpeg"):
        return _read_pil(path, label, max_bytes)
    raise DecodeError(f"{label}: unknown image kind {kind!r}; supported: DICOM, PNG, JPEG, TIFF, NPY.")
