"""Slice policies for every 2-D extractor (``extract --slices``): which slices of each volume are units.

``with_slices(extractor, "every:4")`` wraps any scan- or pair-keyed extractor: its units are cut to the
volume slices the policy keeps (``features.slices``), or, for ``mip:PLANE``, replaced by one derived 2-D
image per volume (its maximum-intensity projection; ``scan_id`` = ``store.volumes.mip_unit_id``, pixels
computed from the volume when read, ``source_sha256`` from the volume's pixel hash and the plane). The
policy joins the extractor's configuration (``config()['slices']``, recorded in every part's provenance)
and its table name (``<table>_every4``, ``<table>_central5``, ``<table>_mip_axial``, ``<table>_kth``), so
each policy has its own table. ``all`` returns the extractor unchanged.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from extractors.base import Extractor
from features.errors import ParameterError
from features.slices import SlicePolicy, parse_slice_policy
from store.layout import TABLE_NAME_PATTERN, Store
from store.provenance import combine_hashes, params_hash
from store.tables import read_table
from store.volumes import mip_path, mip_unit_id, read_volumes

__all__ = ["SlicedExtractor", "with_slices"]


def with_slices(extractor: Extractor, slices: str | None) -> Extractor:
    """``extractor`` working on the slices ``slices`` selects (``None``/``all``: ``extractor`` itself)."""
    policy = parse_slice_policy(slices)
    if policy.kind == "all":
        return extractor
    if extractor.key_column() not in ("scan_id", "pair_id"):
        raise ParameterError(
            f"--slices {policy.spec} applies to extractors of scans or pairs; {extractor.name} works on "
            f"{extractor.key_column()} units. Drop --slices."
        )
    if policy.kind == "mip" and extractor.key_column() != "scan_id":
        raise ParameterError(
            f"--slices {policy.spec} makes one projection image per volume, for extractors of single images; "
            f"{extractor.name} works on pairs. Use every:K, central:N or kth with pair extractors."
        )
    return SlicedExtractor(extractor, policy)


def _slice_info(store: Store, dataset: str) -> tuple[dict[str, tuple], dict[str, int]]:
    """``scan_id -> (volume_id, volume_slice)`` of the dataset's volume slices and ``volume_id -> depth``."""
    volumes = read_volumes(store, dataset)
    depth = {v: int(s[0]) for v, s in zip(volumes.column("volume_id").to_pylist(),
                                          volumes.column("shape").to_pylist(), strict=True)}
    scans = read_table(store, "scans", columns=["scan_id", "dataset", "volume_id", "volume_slice"])
    scans = scans.filter(pc.and_(pc.equal(scans.column("dataset"), dataset), pc.is_valid(scans.column("volume_id"))))
    members = dict(zip(scans.column("scan_id").to_pylist(),
                       zip(scans.column("volume_id").to_pylist(), scans.column("volume_slice").to_pylist(),
                           strict=True), strict=True))
    return members, depth


class SlicedExtractor:
    """An extractor restricted to (or, for ``mip``, projected from) the volume slices of a ``SlicePolicy``.

    Everything but ``units``, ``config``, ``config_hash``, ``table_name``, ``provenance`` and
    ``for_dataset`` is the wrapped extractor's (``inner``).
    """

    def __init__(self, inner: Extractor, policy: SlicePolicy) -> None:
        self.inner = inner
        self.policy = policy

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def config(self) -> dict:
        """The wrapped configuration plus ``slices`` (the policy as written)."""
        return {**self.inner.config(), "slices": self.policy.spec}

    def config_hash(self) -> str:
        return params_hash(self.config())

    def table_name(self) -> str:
        """``<wrapped table>_<policy tag>`` (hashed when that is not a valid table name)."""
        name = f"{self.inner.table_name()}_{self.policy.tag}"
        return name if TABLE_NAME_PATTERN.match(name) else f"{name[:50].rstrip('_')}_{self.config_hash()[:8]}"

    def provenance(self) -> dict:
        return {**self.inner.provenance(), "slices": self.policy.spec}

    def for_dataset(self, store: Store, dataset: str):
        """``self``: a slice policy keeps the wrapped extractor on 2-D slices (and slice pairs) even where, on
        its own, it would switch to whole volumes (``diffstats`` -> ``diffstats3d`` on volume pairs)."""
        return self

    def units(self, store: Store, dataset: str) -> pa.Table:
        """The wrapped extractor's units the policy keeps (``mip``: one projection unit per volume)."""
        units = self.inner.units(store, dataset)
        members, depth = _slice_info(store, dataset)
        if self.policy.kind == "mip":
            return self._mip_units(store, dataset, units, members)
        key = "scan_id" if self.inner.key_column() == "scan_id" else "comparison_scan_id"
        keep = []
        for scan in units.column(key).to_pylist():
            volume_id, index = members.get(scan, (None, None))
            keep.append(volume_id is not None and self.policy.keeps(index, depth.get(volume_id)))
        if self.inner.key_column() == "pair_id":  # both sides must be slices of volumes
            keep = [k and r in members for k, r in zip(keep, units.column("reference_scan_id").to_pylist(),
                                                       strict=True)]
        return units.filter(pa.array(keep, type=pa.bool_()))

    def _mip_units(self, store: Store, dataset: str, units: pa.Table, members: dict) -> pa.Table:
        """One unit per volume: the row of its first slice, made the projection image."""
        volumes = {v["volume_id"]: v for v in read_volumes(store, dataset).to_pylist()}
        plane = str(self.policy.value)
        rows, seen = [], set()
        for row in units.to_pylist():
            volume_id = members.get(row["scan_id"], (None, None))[0]
            if volume_id is None or volume_id in seen or volume_id not in volumes:
                continue
            seen.add(volume_id)
            volume = volumes[volume_id]
            kept = _projected_shape(volume, plane)
            row.update({
                "scan_id": mip_unit_id(volume_id, plane), "path": mip_path(volume_id, plane), "frame": 0,
                "slice": None, "volume_slice": None, "rows": kept[0], "cols": kept[1],
                "pixel_sha256": combine_hashes(volume["pixel_sha256"], f"mip:{plane}"),
            })
            row["source_sha256"] = row["pixel_sha256"]
            rows.append(row)
        return pa.Table.from_pylist(rows, schema=units.schema)


def _projected_shape(volume: dict, plane: str) -> tuple[int, int]:
    import numpy as np

    from features.slices import projection_axis

    axis = projection_axis(np.asarray(volume["affine"]).reshape(4, 4), plane)
    shape = [int(n) for n in volume["shape"]]
    del shape[axis]
    return shape[0], shape[1]
