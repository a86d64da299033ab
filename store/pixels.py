"""Pixels of a stored scan, and the content ingestion hashed for them.

``decode_file`` is the one decoder every extractor uses (through ``load_pixels`` / ``PixelReader``);
``read_contents`` shares its DICOM reading and describes the same frames by what ``pixel_sha256``
hashes (``store.digest``), so the ``scans`` row's digest changes exactly when those arrays do.
The file kind is recognised from its first bytes
(DICOM ``DICM`` marker, PNG/JPEG/TIFF/NPY signatures), never trusted from its suffix. Only regular
files are read (a FIFO, socket or device is refused without blocking on it), and no file is decoded
past the decoding budget (``store.limits``).

A ``scans.path`` is a stored path (``store.paths``): components that were redacted or were not UTF-8
are markers that ``PixelReader`` resolves with the store's secret.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from features.errors import DatasetError, DecodeError, InputError
from store.dicom import DicomHeader, is_dicom_bytes, read_dicom, read_dicom_contents
from store.digest import (
    FileFrameContent,
    FrameContent,
    float_content,
    keyed_sha256,
    open_regular,
    pixel_sha256,
)
from store.images import image_kind, read_image
from store.layout import Store
from store.nifti import read_nifti, sniff_nifti
from store.paths import PathResolver, check_relative
from store.secret import load_secret
from store.volumes import MIP_PREFIX, derived_frames

__all__ = [
    "DecodedFile",
    "FileContents",
    "PixelReader",
    "decode_file",
    "read_contents",
    "frame_sha256s",
    "sniff_kind",
    "pixel_sha256",
    "load_pixels",
    "dataset_root",
    "resolve_relative",
]

_SNIFF_BYTES = 132


@dataclass(frozen=True)
class DecodedFile:
    """One decoded file: ``kind`` (dicom/png/jpeg/tiff/npy), float32 ``frames`` and the DICOM header."""

    kind: str
    frames: np.ndarray
    header: DicomHeader | None = None


@dataclass(frozen=True)
class FileContents:
    """One file as ingestion indexes it: ``kind``, frame-stack ``shape`` ``(n, H, W[, 3])``, the DICOM
    header, and each frame's hashed content (``store.digest``)."""

    kind: str
    shape: tuple[int, ...]
    contents: list[FrameContent | FileFrameContent]
    header: DicomHeader | None = None


def sniff_kind(path: str | Path) -> str:
    """``dicom``, ``png``, ``jpeg``, ``tiff``, ``npy`` or ``nifti`` from the file's first bytes, else ``unknown``."""
    with open_regular(path, label=Path(path).name) as handle:
        head = handle.read(_SNIFF_BYTES)
        if is_dicom_bytes(head):
            return "dicom"
        handle.seek(0)
        return image_kind(head) or ("nifti" if sniff_nifti(handle) else "unknown")


def _not_an_image(label: str) -> DecodeError:
    return DecodeError(
        f"{label}: not a DICOM file (no 'DICM' marker after the 128-byte preamble) and not a "
        "PNG/NPY/TIFF/NIfTI image. Convert it, or move it out of the dataset folder."
    )


@contextmanager
def _sniffed(path: str | Path, label: str):
    """``(handle, kind)`` of the image file at ``path``, opened once and rewound: ``kind`` is ``dicom`` or
    an image kind from its first bytes; ``DecodeError`` naming ``label`` when it is neither."""
    with open_regular(path, label=label) as handle:
        head = handle.read(_SNIFF_BYTES)
        handle.seek(0)
        kind = "dicom" if is_dicom_bytes(head) else image_kind(head)
        if kind is None and sniff_nifti(handle):
            kind = "nifti"
        if kind is None:
            raise _not_an_image(label)
        yield handle, kind


def decode_file(path: str | Path, *, name: str | None = None, max_bytes: int | None = None) -> DecodedFile:
    """Decode the image file at ``path`` into float32 frames (see ``store.dicom`` / ``store.images``).

    The file is opened once: its first bytes decide the kind, then the same handle is decoded.
    ``name`` is the path relative to the dataset root used in messages. Raises ``DecodeError`` for
    anything that is not a decodable image, ``ResourceLimitError`` (before decoding) for frames over
    ``max_bytes`` as float32 (``None``: the budget of ``store.limits``).
    """
    label = name or Path(path).name
    with _sniffed(path, label) as (handle, kind):
        if kind == "dicom":
            image = read_dicom(handle, name=label, max_bytes=max_bytes)
            return DecodedFile(kind=kind, frames=image.frames, header=image.header)
        if kind == "nifti":  # one frame per (z) slice of the volume
            volume = read_nifti(handle, name=label, max_bytes=max_bytes)
            return DecodedFile(kind=kind, frames=volume.array.astype(np.float32, copy=False))
        return DecodedFile(kind=kind, frames=read_image(handle, kind, name=label, max_bytes=max_bytes))


def read_contents(
    path: str | Path, *, name: str | None = None, defer_pixels: bool = False, max_bytes: int | None = None
) -> FileContents:
    """The file at ``path`` as ingestion indexes it: kind, shape, header and per-frame hashed content.

    Fails with ``DecodeError`` for exactly the files ``decode_file`` rejects; greyscale DICOM is not
    converted to float32 (its stored integers are hashed instead, see ``store.digest``). With
    ``defer_pixels`` uncompressed greyscale DICOM frames are not read but located in the file
    (``store.digest.FileFrameContent``), to be read where they are hashed. ``max_bytes`` as for ``decode_file``.
    """
    label = name or Path(path).name
    with _sniffed(path, label) as (handle, kind):
        if kind == "dicom":
            found = read_dicom_contents(handle, name=label, defer_pixels=defer_pixels, max_bytes=max_bytes)
            return FileContents(kind=kind, shape=found.shape, contents=found.contents, header=found.header)
        if kind == "nifti":
            frames = read_nifti(handle, name=label, max_bytes=max_bytes).array.astype(np.float32, copy=False)
        else:
            frames = read_image(handle, kind, name=label, max_bytes=max_bytes)
        return FileContents(kind=kind, shape=tuple(frames.shape), contents=[float_content(f) for f in frames])


def frame_sha256s(path: str | Path, *, secret: bytes, name: str | None = None) -> list[str]:
    """The ``pixel_sha256`` of each frame of the file at ``path``, as ingestion records them in a store
    whose secret is ``secret`` (``store.digest.keyed_sha256`` of each frame's raw digest)."""
    return [keyed_sha256(secret, content.sha256()) for content in read_contents(path, name=name).contents]


def resolve_relative(root: Path, path: str) -> Path:
    """``root / path`` for a POSIX ``path`` relative to ``root``; ``InputError`` if it leaves ``root``.

    Literal paths only: a stored path with markers is resolved by ``store.paths.PathResolver``.
    """
    return Path(root).joinpath(*check_relative(Path(root), path))


def dataset_root(store: Store, dataset: str) -> Path:
    """The absolute root folder of ``dataset`` recorded in the ``datasets`` table by ingestion."""
    import pyarrow.compute as pc

    from store.tables import read_table, table_exists

    if table_exists(store, "datasets"):
        table = read_table(store, "datasets", columns=["dataset", "root"])
        rows = table.filter(pc.equal(table.column("dataset"), dataset)).column("root").to_pylist()
        if rows:
            return Path(rows[-1])
    raise DatasetError(
        f"Dataset {dataset!r} is not in the store {store.root}. Run 'python cli.py ingest --dataset "
        f"{dataset}' (with --root for your own folder) first."
    )


class PixelReader:
    """Reads scans' pixels of one dataset, the root looked up once; keeps the last multi-frame file.

    ``read(path, frame)`` takes a ``scans.path`` (markers resolved with the store's secret, read only
    when a path has one) and returns float32 ``(H, W)`` or ``(H, W, 3)``; the caller may modify it.
    """

    def __init__(self, store: Store, dataset: str) -> None:
        self.store = store
        self.dataset = dataset
        self.root = dataset_root(store, dataset)
        self._resolver = PathResolver(self.root, partial(load_secret, store))
        self._cached_path: str | None = None
        self._cached_frames: np.ndarray | None = None

    def locate(self, path: str) -> Path:
        """The file stored path ``path`` names under the dataset root (``InputError`` if it is gone)."""
        return self._resolver.resolve(path)

    def frames(self, path: str) -> np.ndarray:
        """Every frame of the file at stored path ``path`` (relative to the dataset root), ``(n, H, W[, 3])``."""
        if path == self._cached_path and self._cached_frames is not None:
            return self._cached_frames
        if path.startswith(MIP_PREFIX):  # a derived image (slice policy mip:PLANE): computed from its volume
            return derived_frames(self.store, path)
        decoded = decode_file(self._resolver.resolve(path), name=path)
        if decoded.frames.shape[0] > 1:
            self._cached_path, self._cached_frames = path, decoded.frames
        return decoded.frames

    def read(self, path: str, frame: int = 0) -> np.ndarray:
        """The float32 pixels of frame ``frame`` of the file at ``path`` (what its ``pixel_sha256`` identifies)."""
        frames = self.frames(path)
        if not 0 <= int(frame) < frames.shape[0]:
            raise InputError(
                f"{path}: frame {frame} does not exist (the file has {frames.shape[0]} frame(s)). The "
                "scans table may be stale: ingest the dataset again."
            )
        selected = frames[int(frame)]
        return selected.copy() if frames is self._cached_frames else selected


def load_pixels(store: Store, dataset: str, path: str, frame: int = 0) -> np.ndarray:
    """The float32 pixels (``(H, W)`` or ``(H, W, 3)``) of ``path``/``frame`` in ``dataset``.

    Modality LUT applied, MONOCHROME1 inverted; raises ``DecodeError`` when the file no longer decodes.
    For many reads use one ``PixelReader``.
    """
    return PixelReader(store, dataset).read(path, frame)
