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
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from features.canvas import common_canvas, pad_to_canvas, resize
from features.difference import difference_image
from features.intensity import PERCENTILES, to_unit_range

__all__ = ["ImageRecipe", "dataset_canvas", "ImageLoader", "one_blas_thread"]


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
    return common_canvas(zip(rows, cols))


def _grey(pixels: np.ndarray) -> np.ndarray:
    pixels = np.asarray(pixels, dtype=np.float32)
    return pixels.mean(axis=2) if pixels.ndim == 3 else pixels


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

    def __init__(self, store, dataset: str, recipe: ImageRecipe, *, cache: int = 4096, upsample: int = 1):
        from store.pixels import PixelReader

        self.reader = PixelReader(store, dataset)
        self.recipe = recipe
        self.upsample = upsample
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = cache

    def _raw(self, row: dict) -> np.ndarray:
        """The scan's pixels as greyscale float32 (the last ``cache`` scans are kept in memory)."""
        key = (row["path"], int(row.get("frame") or 0))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        pixels = _grey(self.reader.read(row["path"], key[1]))
        if self._cache_size:
            self._cache[key] = pixels
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return pixels

    def unit_canvas(self, row: dict) -> np.ndarray:
        """The scan in [0, 1], centred on the canvas."""
        unit = to_unit_range(self._raw(row), window_center=row.get("window_center"), window_width=row.get("window_width"))
        return pad_to_canvas(unit, self.recipe.canvas)

    def image(self, row: dict) -> np.ndarray:
        """The scan as a ``(size, size)`` float32 network input."""
        size = self.recipe.size
        return resize(self.unit_canvas(row), (size, size), keep_aspect=True)

    def difference(self, reference: dict, comparison: dict, *, is_first: bool) -> np.ndarray:
        """``comparison - registered reference`` in the comparison's unit scale, ``(size, size)``."""
        cmp_raw = self._raw(comparison)
        low, high = _linear_range(cmp_raw, comparison.get("window_center"), comparison.get("window_width"))
        scale = 1.0 / (high - low) if high > low else 1.0
        cmp_unit = pad_to_canvas(np.clip((cmp_raw - low) * scale, 0.0, 1.0).astype(np.float32), self.recipe.canvas)
        if is_first:
            diff, _ = difference_image(None, cmp_unit, is_first=True)
        else:
            ref_raw = self._raw(reference)
            ref_unit = pad_to_canvas(np.clip((ref_raw - low) * scale, 0.0, 1.0).astype(np.float32), self.recipe.canvas)
            diff, _ = difference_image(ref_unit, cmp_unit, upsample=self.upsample)
        size = self.recipe.size
        return resize(diff, (size, size), keep_aspect=True)

    def stack(self, rows: list[dict], *, progress: bool = True, desc: str = "images") -> np.ndarray:
        """``(N, 1, size, size)`` float32 inputs for ``rows`` (a tqdm bar on stderr when ``progress``)."""
        from tqdm.auto import tqdm

        out = np.empty((len(rows), 1, self.recipe.size, self.recipe.size), np.float32)
        with one_blas_thread():
            for i, row in enumerate(tqdm(rows, desc=desc, unit="img", disable=not progress, file=sys.stderr, leave=False)):
                out[i, 0] = self.image(row)
        return out
