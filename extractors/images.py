"""Scans and difference images as small training tensors (shared by Siamese, CAE, X-CNN, transfer).

One recipe for every network chronofeat trains, recorded in its artifact so extraction repeats it:

1. read the pixels (``store.pixels.PixelReader``; colour is averaged to grey);
2. intensity to [0, 1] by the chronofeat policy (``features.intensity``: the DICOM window when the
   scan has one, else the 0.5-99.5 percentiles);
3. centre on the dataset's common canvas, filled with the image's own minimum (ChronoMID, section 4),
   so every image keeps its physical scale;
4. resample to ``size`` x ``size`` keeping the aspect ratio (``features.canvas.resize``).

Difference images (ChronoMID 5.3) use the *comparison* scan's intensity mapping for both images of the
pair (so the difference is in one unit), pad both to the canvas, register the reference onto the
comparison by whole-pixel translation (as scikit-image's default in the paper) and subtract
(``features.difference``); a first time point gives the uniform image at the comparison's minimum.
Then step 4.

Specimens (IMPC): ``specimen_stack`` gives one image per specimen for a choice of views — the
multiview composite (3 channels) or one view's mean image (1 channel) — built by
``features.multiview.specimen_image`` at ``size`` x ``size`` (each view image windowed to its robust
percentiles and fitted keeping its aspect ratio, so no dataset canvas is needed).
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from features.canvas import common_canvas, pad_to_canvas, resize
from features.difference import difference_image
from features.intensity import PERCENTILES, to_grey, to_unit_range

__all__ = [
    "ImageRecipe",
    "dataset_canvas",
    "recipe_for_scans",
    "ImageLoader",
    "scan_images",
    "column_values",
    "one_blas_thread",
    "specimen_channels",
    "specimen_stack",
    "specimens_with_views",
]

_PIXEL_COLUMNS = ("path", "frame", "window_center", "window_width")


def one_blas_thread():
    """Context: NumPy/SciPy BLAS on one thread. Per-image arrays are small; BLAS worker threads
    spinning on them cost far more than they give (6x slower registration on a busy 2-core machine)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


@dataclass(frozen=True)
class ImageRecipe:
    """How a scan becomes a network input: output side ``size`` and the dataset ``canvas`` (H, W)."""

    size: int
    canvas: tuple[int, int]

    def to_dict(self) -> dict:
        """Plain JSON form, stored in a network's configuration."""
        return {"size": int(self.size), "canvas": [int(v) for v in self.canvas]}

    @classmethod
    def from_dict(cls, data: dict) -> ImageRecipe:
        """The recipe ``to_dict`` wrote."""
        return cls(size=int(data["size"]), canvas=(int(data["canvas"][0]), int(data["canvas"][1])))


def dataset_canvas(rows, cols) -> tuple[int, int]:
    """The common canvas (largest height, largest width) of scans with ``rows`` and ``cols``."""
    return common_canvas(zip(rows, cols, strict=True))


def recipe_for_scans(scans, size: int) -> ImageRecipe:
    """The recipe of side ``size`` on the common canvas of ``scans`` (an Arrow table with rows, cols)."""
    return ImageRecipe(size, dataset_canvas(scans.column("rows").to_pylist(), scans.column("cols").to_pylist()))


def column_values(table, name: str, default="") -> np.ndarray:
    """Column ``name`` of an Arrow ``table`` as an object array, ``default`` for nulls or a missing column."""
    if name not in table.column_names:
        return np.array([default] * table.num_rows, dtype=object)
    return np.array([default if v is None else v for v in table.column(name).to_pylist()], dtype=object)


def _linear_range(pixels: np.ndarray, center, width) -> tuple[float, float]:
    """(low, high) of the intensity mapping the policy would use for ``pixels``."""
    if center is not None and width is not None and np.isfinite(center) and np.isfinite(width) and width >= 1:
        low = float(center) - 0.5 - (float(width) - 1) / 2
        return low, low + float(width) - 1
    low, high = np.percentile(pixels, PERCENTILES)
    return float(low), float(high)


class ImageLoader:
    """Reads scans of one dataset through ``store.pixels`` and returns ``recipe``-shaped float32 arrays.

    Rows are dicts (or Arrow rows as dicts) with ``path``, ``frame``, ``window_center``,
    ``window_width``. Decoded pixels are cached (``cache`` entries) because a scan is both a training
    image and the reference of several difference images. ``upsample`` is the registration's sub-pixel
    factor (1: whole pixels).
    """

    def __init__(self, store, dataset: str, recipe: ImageRecipe, *, cache: int = 4096, upsample: int = 1,
                 overlap_only: bool = False):
        from store.pixels import PixelReader

        self.reader = PixelReader(store, dataset)
        self.recipe = recipe
        self.upsample = upsample
        self.overlap_only = overlap_only  # differences: 0 where either scan is padding (see _overlap_difference)
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = cache

    def _raw(self, row: dict) -> np.ndarray:
        """The scan's pixels as greyscale float32 (the last ``cache`` scans are kept in memory)."""
        key = (row["path"], int(row.get("frame") or 0))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        pixels = to_grey(self.reader.read(row["path"], key[1]))
        if self._cache_size:
            self._cache[key] = pixels
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return pixels

    def raw(self, row: dict) -> np.ndarray:
        """The scan's stored pixel values, greyscale float32 (a copy the caller may change)."""
        return self._raw(row).copy()

    def unit(self, row: dict) -> np.ndarray:
        """The scan in [0, 1] by the intensity policy, at its own size."""
        center, width = row.get("window_center"), row.get("window_width")
        return to_unit_range(self._raw(row), window_center=center, window_width=width)

    def unit_canvas(self, row: dict) -> np.ndarray:
        """The scan in [0, 1], centred on the canvas."""
        return pad_to_canvas(self.unit(row), self.recipe.canvas)

    def image(self, row: dict) -> np.ndarray:
        """The scan as a ``(size, size)`` float32 network input."""
        size = self.recipe.size
        return resize(self.unit_canvas(row), (size, size), keep_aspect=True)

    def difference(self, reference: dict, comparison: dict, *, is_first: bool) -> np.ndarray:
        """``comparison - registered reference`` in the comparison's unit scale, ``(size, size)``."""
        size = self.recipe.size
        return resize(self.difference_canvas(reference, comparison, is_first=is_first), (size, size), keep_aspect=True)

    def difference_canvas(self, reference: dict, comparison: dict, *, is_first: bool) -> np.ndarray:
        """``comparison - registered reference`` in the comparison's unit scale, on the canvas (before resizing)."""
        cmp_raw = self._raw(comparison)
        low, high = _linear_range(cmp_raw, comparison.get("window_center"), comparison.get("window_width"))
        scale = 1.0 / (high - low) if high > low else 1.0
        cmp_unit = pad_to_canvas(np.clip((cmp_raw - low) * scale, 0.0, 1.0).astype(np.float32), self.recipe.canvas)
        if is_first:
            diff, _ = difference_image(None, cmp_unit, is_first=True)
        elif self.overlap_only:
            diff = self._overlap_difference(self._raw(reference), cmp_raw, low, scale)
        else:
            ref_raw = self._raw(reference)
            ref_unit = pad_to_canvas(np.clip((ref_raw - low) * scale, 0.0, 1.0).astype(np.float32), self.recipe.canvas)
            diff, _ = difference_image(ref_unit, cmp_unit, upsample=self.upsample)
        return diff

    def _overlap_difference(self, ref_raw: np.ndarray, cmp_raw: np.ndarray, low: float, scale: float) -> np.ndarray:
        """The difference on the canvas where both scans hold data, 0 elsewhere: the scans are registered
        before padding (``features.difference.align_pair``, padding masked out of the registration), so a
        crop that changed size between the weeks is not read as change."""
        from features.difference import align_pair

        ref_unit, cmp_unit = (np.clip((raw - low) * scale, 0.0, 1.0).astype(np.float32) for raw in (ref_raw, cmp_raw))
        aligned = align_pair(ref_unit, cmp_unit, upsample=self.upsample)
        diff = np.where(aligned.mask, aligned.comparison - aligned.reference, 0.0).astype(np.float32)
        return pad_to_canvas(diff, self.recipe.canvas, fill=0.0)

    def stack(self, rows: list[dict], *, progress: bool = True, desc: str = "images") -> np.ndarray:
        """``(N, 1, size, size)`` float32 inputs for ``rows`` (a tqdm bar on stderr when ``progress``)."""
        return self._stacked(rows, self.image, progress=progress, desc=desc, unit="img")

    def pair_differences(self, pairs, *, progress: bool = True, desc: str = "differences") -> np.ndarray:
        """``(N, 1, size, size)`` difference images of ``pairs`` (the table ``store.units.pair_units`` gives).

        A pair whose reference is its comparison (a first time point) gives the uniform image.
        """
        columns = pairs.to_pydict()
        items = []
        for i, (ref, cmp) in enumerate(zip(columns["reference_scan_id"], columns["comparison_scan_id"], strict=True)):
            sides = [{name: columns[f"{side}_{name}"][i] for name in _PIXEL_COLUMNS} for side in ("ref", "cmp")]
            items.append((sides[0], sides[1], ref == cmp))
        return self._stacked(items, lambda item: self.difference(item[0], item[1], is_first=item[2]),
                             progress=progress, desc=desc, unit="pair")

    def _stacked(self, items: list, make, *, progress: bool, desc: str, unit: str) -> np.ndarray:
        from tqdm.auto import tqdm

        out = np.empty((len(items), 1, self.recipe.size, self.recipe.size), np.float32)
        with one_blas_thread():
            bar = tqdm(items, desc=desc, unit=unit, disable=not progress, file=sys.stderr, leave=False)
            for i, item in enumerate(bar):
                out[i, 0] = make(item)
        return out


def scan_images(store, dataset: str, scans, recipe: ImageRecipe, *, progress: bool = True) -> np.ndarray:
    """``(N, 1, size, size)`` float32 inputs of every scan in ``scans`` (the table ``store.units.scan_units``
    gives), in its row order."""
    rows = scans.select([c for c in _PIXEL_COLUMNS if c in scans.column_names]).to_pylist()
    return ImageLoader(store, dataset, recipe).stack(rows, progress=progress, desc=f"{dataset} images")


def specimen_channels(views) -> int:
    """Channels of a specimen input for ``views`` (``features.multiview.parse_views``): 3 for both views (the
    composite), 1 for one view (its mean image)."""
    from features.multiview import parse_views

    chosen = parse_views(views)
    return 3 if chosen is None or len(chosen) == 2 else 1


def specimen_stack(store, dataset: str, units, *, views=None, size: int, progress: bool = True):
    """``(N, C, size, size)`` float32 inputs of the specimens in ``units`` (``store.units.specimen_units`` rows:
    ``views``, ``paths``, ``frames``), in row order, and the failures ``[(row, error_class, message)]``.

    ``views`` None / DV,LAT: the composite (C = 3); DV or LAT: that view's mean image (C = 1). A specimen
    without an image of the chosen views (or whose pixels cannot be read) keeps a zero image and is
    listed in the failures; the caller drops or records it.
    """
    from tqdm.auto import tqdm

    from features.errors import ChronofeatError, InputError
    from features.multiview import parse_views, specimen_image, view_group
    from store.pixels import PixelReader

    chosen = parse_views(views) or ("DV", "LAT")
    channels = specimen_channels(chosen)
    reader = PixelReader(store, dataset)
    rows = units.select(["views", "paths", "frames"]).to_pylist()
    out = np.zeros((len(rows), channels, size, size), np.float32)
    failures = []
    with one_blas_thread():
        bar = tqdm(rows, desc=f"{dataset} specimens", unit="specimen", disable=not progress, file=sys.stderr,
                   leave=False)
        for i, row in enumerate(bar):
            by_view: dict[str, list] = {"DV": [], "LAT": []}
            try:
                for view, path, frame in zip(row["views"], row["paths"], row["frames"], strict=True):
                    group = view_group(view)
                    if group in chosen:
                        by_view[group].append(reader.read(path, int(frame or 0)))
                if not by_view["DV"] and not by_view["LAT"]:
                    raise InputError(f"The specimen has no {' or '.join(chosen)} image (views {sorted(row['views'])}).")
                image = specimen_image(by_view["DV"], by_view["LAT"], views=chosen, size=(size, size))
            except ChronofeatError as exc:
                failures.append((i, type(exc).__name__, str(exc)))
                continue
            out[i] = image.transpose(2, 0, 1)[:channels]
    return out, failures


def specimens_with_views(units, views):
    """The rows of specimen ``units`` (a ``views`` list column) with at least one image of the chosen ``views``
    (``features.multiview.parse_views``; None keeps every row)."""
    import pyarrow as pa

    from features.multiview import parse_views, view_group

    chosen = parse_views(views)
    if chosen is None:
        return units
    keep = [any(view_group(v) in chosen for v in row) for row in units.column("views").to_pylist()]
    return units.filter(pa.array(keep, type=pa.bool_()))
