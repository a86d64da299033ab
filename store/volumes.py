"""Volumes: 3-D images (NIfTI files, DICOM series) indexed in the ``volumes`` table and read lazily.

A volume's voxels are never copied into Parquet: the ``volumes`` table holds one row per volume
(identity, subject, time, geometry, where its voxels are) and ``load_volume`` reads the voxels from
the source file(s) when asked. Every slice of a volume is also a 2-D row of ``scans`` carrying the
volume's ``volume_id`` and its ``volume_slice`` index along the volume's k (z) axis, so every 2-D
extractor works on volume slices unchanged.

Conventions (one for every reader):
- ``Volume.array`` is indexed ``(z, y, x)`` = ``array[k, j, i]`` for voxel ``(i, j, k)``: ``i`` runs
  along a row (DICOM column index), ``j`` down the rows, ``k`` across slices (NIfTI's third axis;
  DICOM's slice order along the slice normal).
- ``Volume.affine`` maps voxel ``(i, j, k, 1)`` to **RAS+** millimetres (NIfTI's world convention;
  DICOM's LPS positions are converted by negating x and y).
- ``Volume.spacing`` is ``(z, y, x)`` in mm: the norms of the affine's k, j, i columns.

Derived 2-D images: ``mip_path(volume_id, plane)`` names a maximum-intensity projection (slice policy
``mip:PLANE``, ``features.slices``) that ``store.pixels.PixelReader`` computes from the volume when read;
``mip_unit_id`` is its stable id.

Tables:
- ``volumes`` (``VOLUMES``, written by ``store.volume_index`` at ingest): ``volume_id``, ``pixel_sha256``
  (``combine_hashes`` of its slices' pixel hashes: it changes when any slice does), ``dataset``,
  ``subject``, ``time_index``, ``days_from_baseline``, ``view``, ``source_kind`` (nifti | dicom), ``path``
  (stored path of the NIfTI file or of the series' first file), ``slice_paths``/``slice_frames`` (DICOM:
  stored path and frame of every slice in order; NIfTI: empty), ``shape`` [z, y, x], ``spacing`` [z, y,
  x], ``affine`` (16 floats, row-major, RAS), ``slice_thickness``, ``modality``, ``label``.
- ``volume_pairs`` (``VOLUME_PAIRS``): one row per (reference, comparison) volume pair, the columns of
  ``pairs`` with ``reference_volume_id``/``comparison_volume_id`` in place of the scan ids.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.errors import DatasetError, DecodeError, InputError
from features.slices import maximum_projection
from store.digest import open_regular
from store.layout import Store
from store.nifti import read_nifti
from store.paths import PathResolver
from store.provenance import combine_hashes
from store.secret import load_secret
from store.tables import read_table, table_exists

__all__ = [
    "VOLUMES_TABLE",
    "VOLUME_PAIRS_TABLE",
    "VOLUMES",
    "VOLUME_PAIRS",
    "Volume",
    "read_volumes",
    "read_volume_pairs",
    "volume_pair_label_units",
    "load_volume",
    "VolumeReader",
    "MIP_PREFIX",
    "mip_path",
    "mip_unit_id",
    "derived_frames",
]

VOLUMES_TABLE = "volumes"
VOLUME_PAIRS_TABLE = "volume_pairs"

VOLUMES = pa.schema(
    [
        # HMAC-SHA256(store secret, dataset \0 'volume:' + real source key \0 0)[:32]
        ("volume_id", pa.string()),
        # combine_hashes of its slices' scans.pixel_sha256 in k order (keyed by the store secret through them)
        ("pixel_sha256", pa.string()),
        ("dataset", pa.string()),
        ("subject", pa.string()),
        ("time_index", pa.int32()),
        ("days_from_baseline", pa.int32()),
        ("view", pa.string()),
        ("source_kind", pa.string()),  # nifti | dicom
        ("path", pa.string()),  # stored path: the NIfTI file, or the series' first slice file
        ("slice_paths", pa.list_(pa.string())),  # DICOM: every slice's stored path, in slice order
        ("slice_frames", pa.list_(pa.int32())),  # DICOM: the frame of each slice within its file
        ("shape", pa.list_(pa.int32())),  # [z, y, x]
        ("spacing", pa.list_(pa.float64())),  # [z, y, x] mm
        ("affine", pa.list_(pa.float64())),  # 4x4 row-major, voxel (i, j, k) -> RAS mm
        ("slice_thickness", pa.float64()),
        ("modality", pa.string()),
        ("label", pa.string()),
    ]
)

VOLUME_PAIRS = pa.schema(
    [
        ("pair_id", pa.string()),  # features.dataset_layouts.pair_id(reference_volume_id, comparison_volume_id, mode)
        ("dataset", pa.string()),
        ("subject", pa.string()),
        ("reference_volume_id", pa.string()),  # equals comparison_volume_id for a subject's first time point
        ("comparison_volume_id", pa.string()),
        ("reference_mode", pa.string()),  # absolute | relative
        ("interval_days", pa.int32()),
        ("time_index", pa.int32()),  # the comparison volume's time index
        ("label", pa.string()),
    ]
)


@dataclass(frozen=True)
class Volume:
    """One 3-D image as read from its source.

    ``array``: ``(z, y, x)`` voxels in the file's native dtype (NIfTI scaling and DICOM rescale
    slope/intercept applied only when they are not the identity; then float32). ``spacing``: ``(z, y, x)``
    voxel size in mm. ``affine``: 4x4 float64 mapping voxel ``(i, j, k, 1)`` (``array[k, j, i]``) to
    **RAS+** mm.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray


def _require(store: Store, table: str, dataset: str) -> None:
    if not table_exists(store, table):
        raise DatasetError(
            f"The store {store.root} has no {table!r} table: no volumetric dataset was ingested. Run 'python cli.py "
            f"ingest --dataset {dataset} --root DIR' on a folder of NIfTI files (a BIDS tree) or DICOM series."
        )


def read_volumes(store: Store, dataset: str) -> pa.Table:
    """The ``volumes`` rows of ``dataset`` (schema ``VOLUMES``), ordered by subject, time, view, volume_id.

    ``DatasetError`` when the store has no volumes for it (ingest a volumetric dataset first).
    """
    _require(store, VOLUMES_TABLE, dataset)
    table = read_table(store, VOLUMES_TABLE)
    table = table.filter(pc.equal(table.column("dataset"), dataset))
    if table.num_rows == 0:
        raise DatasetError(
            f"Dataset {dataset!r} has no volumes in {store.root}: it holds no NIfTI file or DICOM series that makes "
            "a volume (see 'python cli.py sql \"SELECT * FROM failures WHERE stage = \'ingest:volume\'\"')."
        )
    return table.sort_by([("subject", "ascending"), ("time_index", "ascending"), ("view", "ascending"),
                          ("volume_id", "ascending")])


def read_volume_pairs(store: Store, dataset: str, reference_mode: str | None = None) -> pa.Table:
    """The ``volume_pairs`` rows of ``dataset`` (of one ``reference_mode`` when given), joined to both
    volumes' ``pixel_sha256`` as ``ref_pixel_sha256``/``cmp_pixel_sha256`` and ``source_sha256``
    (``store.provenance.combine_hashes`` of the two), ordered by subject, time_index, pair_id."""
    _require(store, VOLUME_PAIRS_TABLE, dataset)
    pairs = read_table(store, VOLUME_PAIRS_TABLE)
    mask = pc.equal(pairs.column("dataset"), dataset)
    if reference_mode is not None:
        mask = pc.and_(mask, pc.equal(pairs.column("reference_mode"), reference_mode))
    pairs = pairs.filter(mask).sort_by([("subject", "ascending"), ("time_index", "ascending"),
                                        ("pair_id", "ascending")])
    if pairs.num_rows == 0:
        raise DatasetError(
            f"Dataset {dataset!r} has no {reference_mode or ''} volume pairs in {store.root}: it needs volumes of one "
            "subject at two or more time points (see 'python cli.py sql \"SELECT * FROM volume_pairs\"')."
        )
    volumes = read_volumes(store, dataset)
    hashes = dict(zip(volumes.column("volume_id").to_pylist(), volumes.column("pixel_sha256").to_pylist(),
                      strict=True))
    ref = [hashes.get(v) for v in pairs.column("reference_volume_id").to_pylist()]
    cmp = [hashes.get(v) for v in pairs.column("comparison_volume_id").to_pylist()]
    source = [combine_hashes(a, b) if a and b else None for a, b in zip(ref, cmp, strict=True)]
    for name, values in (("ref_pixel_sha256", ref), ("cmp_pixel_sha256", cmp), ("source_sha256", source)):
        pairs = pairs.append_column(name, pa.array(values, type=pa.string()))
    return pairs


def volume_pair_label_units(store: Store, dataset: str, reference_mode: str | None = None) -> pa.Table:
    """``read_volume_pairs`` rows with ``key`` (= ``pair_id``) first, as ``fit`` loads pair units; an empty
    table (no columns) when the dataset has no volume pairs. ``store.featureset`` appends them to the 2-D
    pairs, so a feature table keyed by volume ``pair_id`` (``diffstats3d``) finds its labels and subjects."""
    try:
        pairs = read_volume_pairs(store, dataset, reference_mode)
    except DatasetError:
        return pa.table({})
    return pairs.add_column(0, "key", pairs.column("pair_id"))


def load_volume(store: Store, volume_id: str) -> Volume:
    """The voxels and geometry of volume ``volume_id``, read from its source file(s) (never from Parquet).

    For many volumes use one ``VolumeReader`` (the tables are read once).
    """
    return VolumeReader(store).load(volume_id)


def _dataset_roots(store: Store) -> dict[str, Path]:
    if not table_exists(store, "datasets"):
        return {}
    table = read_table(store, "datasets", columns=["dataset", "root"])
    return {d: Path(r) for d, r in zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True)}


def _native_frames(file: Path, label: str) -> np.ndarray:
    """Every frame ``(n, H, W)`` of a DICOM file's stored values, rescaled (float32) only when its
    slope/intercept are not the identity."""
    import pydicom

    try:
        ds = pydicom.dcmread(file)
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for damaged or undecodable files
        raise DecodeError(f"{label}: the DICOM slice cannot be decoded ({type(exc).__name__}). Ingest again.") \
            from None
    if int(getattr(ds, "NumberOfFrames", 1) or 1) == 1:
        pixels = pixels[None]
    slope, intercept = float(getattr(ds, "RescaleSlope", 1) or 1), float(getattr(ds, "RescaleIntercept", 0) or 0)
    if slope != 1.0 or intercept != 0.0:
        return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    return pixels


class VolumeReader:
    """Loads volumes of a store by id, reading the ``volumes`` table once; keeps no voxels in memory."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._rows: dict[str, dict] | None = None
        self._roots: dict[str, Path] = {}
        self._resolvers: dict[str, PathResolver] = {}

    def row(self, volume_id: str) -> dict:
        """The ``volumes`` row of ``volume_id`` (``InputError`` when no volume has that id)."""
        if self._rows is None:
            table = read_table(self.store, VOLUMES_TABLE) if table_exists(self.store, VOLUMES_TABLE) else None
            self._rows = {r["volume_id"]: r for r in table.to_pylist()} if table is not None else {}
            self._roots = _dataset_roots(self.store)
        row = self._rows.get(volume_id)
        if row is None:
            raise InputError(
                f"No volume {volume_id!r} in {self.store.root}. List them with 'python cli.py sql \"SELECT volume_id, "
                "dataset FROM volumes\"'; ingest the dataset again if it should be there."
            )
        return row

    def _locate(self, dataset: str, path: str) -> Path:
        resolver = self._resolvers.get(dataset)
        if resolver is None:
            if dataset not in self._roots:
                raise DatasetError(f"Dataset {dataset!r} is not in the store {self.store.root}. Ingest it first.")
            resolver = self._resolvers[dataset] = PathResolver(self._roots[dataset], partial(load_secret, self.store))
        return resolver.resolve(path)

    def load(self, volume_id: str) -> Volume:
        """The ``Volume`` with id ``volume_id`` (``InputError`` if unknown or its source is gone,
        ``DecodeError`` if it no longer decodes or no longer has the shape ingestion recorded)."""
        row = self.row(volume_id)
        affine = np.asarray(row["affine"], dtype=np.float64).reshape(4, 4)
        if row["source_kind"] == "nifti":
            with open_regular(self._locate(row["dataset"], row["path"]), label=row["path"]) as handle:
                array = read_nifti(handle, name=row["path"]).array
        else:
            files: dict[str, np.ndarray] = {}  # each file decoded once (a multi-frame file holds many slices)
            for path in dict.fromkeys(row["slice_paths"]):
                files[path] = _native_frames(self._locate(row["dataset"], path), path)
            array = np.stack([files[p][int(f)] for p, f in zip(row["slice_paths"], row["slice_frames"], strict=True)])
        if list(array.shape) != list(row["shape"]):
            raise DecodeError(
                f"{row['path']}: the volume now has shape {array.shape}, not the {tuple(row['shape'])} ingestion "
                "recorded. Ingest the dataset again."
            )
        spacing = tuple(float(v) for v in row["spacing"])
        return Volume(array, spacing, affine)  # type: ignore[arg-type]


# ------------------------------------------------------------------ derived 2-D images (slice policies)

MIP_PREFIX = "::volume-mip::"


def mip_path(volume_id: str, plane: str) -> str:
    """The ``path`` of a maximum-intensity projection unit (what ``PixelReader`` reads it by)."""
    return f"{MIP_PREFIX}{volume_id}::{plane}"


def mip_unit_id(volume_id: str, plane: str) -> str:
    """The stable id (``scan_id`` column) of volume ``volume_id``'s MIP in ``plane``: 32 hex characters."""
    return hashlib.sha256(f"mip\0{volume_id}\0{plane}".encode()).hexdigest()[:32]


def derived_frames(store: Store, path: str) -> np.ndarray:
    """The frames ``(1, H, W)`` float32 of a derived image path (``mip_path``), computed from its volume."""
    volume_id, _, plane = path[len(MIP_PREFIX):].partition("::")
    volume = VolumeReader(store).load(volume_id)
    return maximum_projection(volume.array, volume.affine, plane)[None]
