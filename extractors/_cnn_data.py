"""The data side of the CNN extractor: work units -> network-ready tensors, in DataLoader workers.

Per unit (one scan, one pair or one specimen) a worker reads pixels through ``store.pixels.PixelReader``
and builds one ``(3, H, W)`` float32 image in [0, 1] at the network's input size:

* ``image``: the scan, scaled by the intensity policy (``features.intensity``: DICOM window when the
  scan has one, else the 0.5-99.5 percentiles), then fitted.
* ``difference``: ``features.difference.difference_image`` of the pair (reference registered onto the
  comparison by phase correlation and subtracted, ChronoMID style; a first time point gives the
  uniform image at the comparison's minimum), scaled by the percentile policy — a window describes
  raw intensities, not changes — then fitted. A uniform difference becomes all zeros.
* ``multiview``: ``features.multiview.multiview_composite`` of the specimen's DV and LAT images, built
  directly at the input size; the composite brings every view image to [0, 1] itself (robust
  percentiles), so no further scaling is applied. With ``views`` DV (or LAT) only, the specimen's mean
  DV (LAT) image instead, repeated over three channels (``features.multiview.specimen_image``).

"Fitted" means: resampled (timm's interpolation for the weights, anti-aliased when shrinking) so the
whole image fits the input size with its aspect ratio kept, then centred on it with the image's
minimum (0 after scaling) as border (``features.canvas.pad_to_canvas``); greyscale is repeated to 3
channels. timm's centre crop (``crop_pct``) is deliberately *not* applied: on a medical image the
border holds anatomy (a tail, a skull, the edge of a lesion) and padding to square already frames
the whole image. The network's own mean/std normalisation is applied on the device, batch-wise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.canvas import pad_to_canvas
from features.errors import ChronofeatError, InputError
from features.intensity import to_three_channels, to_unit_range
from features.multiview import DV_VIEWS, LAT_VIEWS, view_group

__all__ = [
    "Preprocess", "fit_to_input", "preprocess_image", "UnitImages", "collate_units", "make_loader", "INPUT_COLUMNS",
    "unit_path", "DV_VIEWS", "LAT_VIEWS",
]

INPUT_COLUMNS = {
    "image": ["scan_id", "source_sha256", "dataset", "path", "frame", "window_center", "window_width"],
    "difference": [
        "pair_id", "source_sha256", "dataset", "reference_scan_id", "comparison_scan_id",
        "ref_path", "ref_frame", "cmp_path", "cmp_frame",
    ],
    "multiview": ["specimen_id", "source_sha256", "dataset", "views", "paths", "frames"],
}


def unit_path(unit: dict) -> str:
    """The file(s) of one unit, for its failure record: a scan's path, 'ref -> cmp', or the views joined."""
    if "path" in unit:
        return unit["path"] or ""
    if "cmp_path" in unit:
        return f"{unit.get('ref_path')} -> {unit.get('cmp_path')}"
    return ";".join(unit.get("paths") or [])


@dataclass(frozen=True)
class Preprocess:
    """How to turn pixels into network input: target (H, W), interpolation, intensity mode, and for
    multiview units the views (None: the composite; ``("DV",)`` / ``("LAT",)``: that view's mean image) —
    so that every engine that decodes with this recipe builds the same input."""

    size: tuple[int, int]
    interpolation: str = "bicubic"
    intensity: str = "auto"
    views: tuple[str, ...] | None = None

    def describe(self) -> dict:
        """JSON-able record for provenance."""
        out = {
            "input_size": list(self.size),
            "interpolation": self.interpolation,
            "intensity": self.intensity,
            "fit": "whole image, aspect kept, padded to the input size with its minimum; no centre crop",
        }
        if self.views:
            out["views"] = list(self.views)
        return out


def _pil_filter(interpolation: str):
    from PIL import Image

    return {
        "bicubic": Image.Resampling.BICUBIC,
        "bilinear": Image.Resampling.BILINEAR,
        "nearest": Image.Resampling.NEAREST,
        "lanczos": Image.Resampling.LANCZOS,
        "box": Image.Resampling.BOX,
        "hamming": Image.Resampling.HAMMING,
    }.get(interpolation, Image.Resampling.BICUBIC)


def fit_to_input(image: np.ndarray, size: tuple[int, int], *, interpolation: str = "bicubic") -> np.ndarray:
    """A [0, 1] ``(H, W)`` / ``(H, W, C)`` image resampled to fit ``size`` (aspect kept) and padded.

    Resampling is PIL's (the library timm's own transforms use) in 32-bit float mode, per channel,
    with PIL's built-in anti-aliasing when shrinking; ringing is clipped to the image's own range. The
    border is the image's minimum (0 after the intensity policy). Returns float32, channels kept.
    """
    from PIL import Image

    height, width = size
    h, w = image.shape[:2]
    low, high = float(image.min()), float(image.max())
    scale = min(height / h, width / w)
    target = (max(1, min(height, int(round(h * scale)))), max(1, min(width, int(round(w * scale)))))
    if target != (h, w):
        resample = _pil_filter(interpolation)
        channels = [image] if image.ndim == 2 else [image[..., c] for c in range(image.shape[2])]
        resized = [
            np.asarray(
                Image.fromarray(np.ascontiguousarray(c, dtype=np.float32), mode="F").resize(target[::-1], resample)
            )
            for c in channels
        ]
        image = resized[0] if image.ndim == 2 else np.stack(resized, axis=-1)
        image = np.clip(image, low, high)  # no bicubic ringing beyond the image's own range
    return pad_to_canvas(image.astype(np.float32, copy=False), (height, width), fill=low)


def preprocess_image(
    image: np.ndarray,
    pre: Preprocess,
    *,
    window_center: float | None = None,
    window_width: float | None = None,
    mode: str | None = None,
    per_channel: bool = False,
) -> np.ndarray:
    """One image in its own units -> ``(3, H, W)`` float32 in [0, 1], as the network will see it.

    Intensity policy (``features.intensity.to_unit_range``, mode ``pre.intensity`` unless ``mode``),
    fit to ``pre.size`` (aspect kept, padded, no crop), greyscale repeated to 3 channels.
    """
    unit = to_unit_range(
        image, window_center=window_center, window_width=window_width,
        mode=mode or pre.intensity, per_channel=per_channel,
    )
    fitted = fit_to_input(unit, pre.size, interpolation=pre.interpolation)
    return np.ascontiguousarray(to_three_channels(fitted).transpose(2, 0, 1), dtype=np.float32)


def _finite_or_none(value):
    return None if value is None or not np.isfinite(value) else float(value)


class UnitImages:
    """Map-style dataset over work units: item ``i`` -> ``(i, tensor | None, failure | None)``.

    ``units`` are plain dicts (the ``INPUT_COLUMNS`` of one input kind). Pixel readers are opened
    lazily in each worker process. A unit whose pixels cannot be read or used (any ``ChronofeatError``)
    comes back as ``(i, None, (error_class, message))``; other exceptions are bugs and propagate.
    ``views`` (multiview units only): None or ``("DV", "LAT")`` for the composite, ``("DV",)`` or
    ``("LAT",)`` for that view's mean image (``features.multiview.specimen_image``); None takes
    ``pre.views``.
    """

    def __init__(self, store, units: list[dict], kind: str, pre: Preprocess, *, views=None):
        self.store = store
        self.units = units
        self.kind = kind
        self.pre = pre
        self.views = views if views is not None else pre.views
        self._readers: dict = {}

    def __len__(self) -> int:
        return len(self.units)

    def _read(self, dataset: str, path: str, frame) -> np.ndarray:
        reader = self._readers.get(dataset)
        if reader is None:
            from store.pixels import PixelReader

            reader = self._readers[dataset] = PixelReader(self.store, dataset)
        return reader.read(path, int(frame or 0))

    def image(self, unit: dict) -> np.ndarray:
        """The ``(3, H, W)`` network input of one unit (raises ``ChronofeatError`` when impossible)."""
        ds = unit["dataset"]
        if self.kind == "image":
            pixels = self._read(ds, unit["path"], unit["frame"])
            return preprocess_image(
                pixels, self.pre,
                window_center=_finite_or_none(unit.get("window_center")),
                window_width=_finite_or_none(unit.get("window_width")),
            )
        if self.kind == "difference":
            from features.difference import difference_image

            comparison = self._read(ds, unit["cmp_path"], unit["cmp_frame"])
            first = unit["reference_scan_id"] == unit["comparison_scan_id"]
            reference = None if first else self._read(ds, unit["ref_path"], unit["ref_frame"])
            diff, _ = difference_image(reference, comparison, register=True, is_first=first)
            return preprocess_image(diff, self.pre, mode="percentile")
        if self.kind == "multiview":
            from features.multiview import specimen_image

            composite = specimen_image(*self.view_images(unit), views=self.views, size=self.pre.size)
            return np.ascontiguousarray(composite.transpose(2, 0, 1), dtype=np.float32)
        raise InputError(f"Unknown input kind {self.kind!r}.")

    def view_images(self, unit: dict) -> tuple[list, list]:
        """A multiview unit's (DV images, LAT images) as read (only the chosen ``views``' images are read)."""
        wanted = set(self.views or ("DV", "LAT"))
        images: dict[str, list] = {"DV": [], "LAT": []}
        for view, path, frame in zip(unit["views"], unit["paths"], unit["frames"], strict=True):
            group = view_group(view)
            if group in wanted:
                images[group].append(self._read(unit["dataset"], path, frame))
        if not images["DV"] and not images["LAT"]:
            raise InputError(
                f"Specimen has no {' or '.join(sorted(wanted))} image (views: {sorted(set(unit['views']))}); its "
                "input needs at least one of them."
            )
        return images["DV"], images["LAT"]

    def __getitem__(self, index: int):
        import torch

        try:
            return index, torch.from_numpy(self.image(self.units[index])), None
        except ChronofeatError as exc:
            return index, None, (type(exc).__name__, str(exc))


def collate_units(items):
    """Stack the good items of a batch: ``(indices, tensor | None, [(index, class, message), ...])``."""
    import torch

    good = [(i, x) for i, x, err in items if err is None]
    failed = [(i, *err) for i, x, err in items if err is not None]
    indices = [i for i, _ in good]
    batch = torch.stack([x for _, x in good]) if good else None
    return indices, batch, failed


def _worker_init(_worker_id: int) -> None:
    """One decoding process = one core; the network keeps the others.

    Workers are forked (torch's default on Linux: no re-import of the user's main script, instant
    start). They must not touch thread pools the parent may hold mid-flight at fork time — OpenCV's
    in particular (``cv2.setNumThreads`` deadlocks in a forked child) — and the decoding path uses
    none: pydicom / PIL / numpy / scipy / scikit-image only.
    """
    import torch

    torch.set_num_threads(1)


def make_loader(dataset: UnitImages, *, batch_size: int, workers: int, pin_memory: bool):
    """A ``torch.utils.data.DataLoader`` over ``dataset`` in order (no shuffling), ``workers`` processes."""
    from torch.utils.data import DataLoader

    options = {}
    if workers > 0:
        options = {"worker_init_fn": _worker_init, "prefetch_factor": 2, "persistent_workers": False}
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_units,
        pin_memory=pin_memory, drop_last=False, **options,
    )
