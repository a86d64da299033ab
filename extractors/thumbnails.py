"""Thumbnails of scans and pair difference images, drawn the way the features saw them, cached by pixel hash.

``Thumbnailer(store, dataset)`` reads pixels through ``extractors.images.ImageLoader`` (the chronofeat
intensity policy, the dataset's common canvas, the aspect kept) so a thumbnail shows what an extractor
got: ``scan(row)`` the scan in [0, 1] as grey; ``difference(pair)`` ``comparison - registered reference``
in the comparison's intensity unit, on the overlap of both scans (as ``diffstats`` computes it), drawn
red where the comparison is brighter and blue where darker, white for no change, scaled per image by
its 99th percentile of ``|difference|``. Files live in ``store.thumbnails`` (``<pixel_sha256>_<kind>.png``)
and are reused; ``written`` / ``reused`` count what this thumbnailer did.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from extractors.images import ImageLoader, recipe_for_scans
from store.layout import Store
from store.provenance import combine_hashes
from store.thumbnails import cached_thumbnail

__all__ = ["THUMBNAIL_SIZE", "Thumbnailer", "grey_to_uint8", "difference_to_rgb"]

THUMBNAIL_SIZE = 96


def grey_to_uint8(image: np.ndarray) -> np.ndarray:
    """A float image in [0, 1] as uint8 grey (values outside clipped)."""
    return np.round(255 * np.clip(np.nan_to_num(image), 0.0, 1.0)).astype(np.uint8)


def difference_to_rgb(diff: np.ndarray) -> np.ndarray:
    """A signed difference image as uint8 RGB: white 0, red positive, blue negative, full colour at the 99th
    percentile of ``|diff|`` (an all-zero image stays white)."""
    values = np.nan_to_num(np.asarray(diff, dtype=np.float64))
    scale = float(np.percentile(np.abs(values), 99)) if values.size else 0.0
    scaled = np.clip(values / scale, -1.0, 1.0) if scale > 0 else np.zeros_like(values)
    rgb = np.ones(values.shape + (3,))
    positive, negative = np.clip(scaled, 0, 1), np.clip(-scaled, 0, 1)
    rgb[..., 1] -= positive + negative  # green falls with any change
    rgb[..., 2] -= positive  # red stays
    rgb[..., 0] -= negative  # blue stays
    return np.round(255 * np.clip(rgb, 0, 1)).astype(np.uint8)


class Thumbnailer:
    """Thumbnails of one dataset's scans and pairs at ``size`` px (see module docstring).

    ``scans`` is the dataset's ``store.units.scan_units`` table (read when not given): its sizes make the
    common canvas, exactly as the extractors' ``recipe_for_scans``.
    """

    def __init__(self, store: Store, dataset: str, *, size: int = THUMBNAIL_SIZE, scans=None) -> None:
        from store.units import scan_units

        self.store = store
        scans = scan_units(store, dataset) if scans is None else scans
        self.recipe = recipe_for_scans(scans, size)
        self.loader = ImageLoader(store, dataset, self.recipe, cache=64, overlap_only=True)
        canvas = f"{self.recipe.canvas[0]}x{self.recipe.canvas[1]}"
        self.scan_kind, self.diff_kind = f"s{size}c{canvas}", f"d{size}c{canvas}"
        self.written = self.reused = 0

    def _cached(self, key: str, kind: str, make) -> Path:
        path, written = cached_thumbnail(self.store, key, kind, make)
        self.written += written
        self.reused += not written
        return path

    def scan(self, row: dict) -> Path:
        """The thumbnail of a scan (a dict with ``pixel_sha256``, ``path``, ``frame``, ``window_center``,
        ``window_width``); returns its path in the store."""
        return self._cached(row["pixel_sha256"], self.scan_kind, lambda: grey_to_uint8(self.loader.image(row)))

    def difference(self, pair: dict) -> Path:
        """The difference thumbnail of a pair (a ``store.units.pair_units`` row: ``reference_scan_id``,
        ``comparison_scan_id`` and the ``ref_*`` / ``cmp_*`` pixel columns); returns its path."""
        sides = [{name: pair.get(f"{side}_{name}") for name in ("path", "frame", "window_center", "window_width")}
                 for side in ("ref", "cmp")]
        first = pair["reference_scan_id"] == pair["comparison_scan_id"]
        key = combine_hashes(pair["ref_pixel_sha256"], pair["cmp_pixel_sha256"])
        return self._cached(key, self.diff_kind,
                            lambda: difference_to_rgb(self.loader.difference(sides[0], sides[1], is_first=first)))
