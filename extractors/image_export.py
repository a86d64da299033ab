"""Export the images the extractors see as PNG files with a CSV index (``cli.py export images``).

Kinds (every image comes from ``extractors.images``, so a file holds exactly what a network is given):

- ``image``: one scan by the intensity policy (``ImageLoader.unit``), at its own size;
- ``padded``: the scan centred on the dataset's common canvas, filled with its minimum (``unit_canvas``);
- ``difference``: a pair's ``comparison - registered reference`` in the comparison's intensity scale
  (``ImageLoader.difference_canvas``; ``overlap_only`` zeroes where either scan is padding);
- ``multiview``: a specimen's composite (DV, LAT, edges as RGB) or one view's mean image
  (``specimen_stack``), ``size`` x ``size`` (224 unless given).

``size`` resamples image, padded and difference to ``size`` x ``size`` keeping the aspect ratio
(``ImageLoader.image`` / ``difference``: the extractors' network inputs).

Bit depth, and how a pixel maps back to a value (``value = offset + scale * pixel``, both in the index):

- ``bits=8``: the [0, 1] image x 255, rounded (offset 0, scale 1/255); a difference in [-1, 1] maps
  -1 -> 0 and 1 -> 255 (offset -1, scale 2/255);
- ``bits=16``: image and padded hold the *raw stored values* (after the DICOM modality LUT; colour
  averaged to grey), exactly: pixel = value - offset, offset 0 for values in [0, 65535] and -32768 for
  signed values in [-32768, 32767] (CT), scale 1; a scan with fractional values, or a resize, cannot
  be raw and is refused. A difference is quantised to 16 bits (offset -1, scale 2/65535: at most
  1/65535 from the float image). The multiview composite is 8-bit only.

Layout: ``<out>/<kind>/<scan_id|pair_id|specimen_id>.png`` and ``<out>/<kind>/index.csv``, the index
written last (whole or not at all). Subjects appear only as the store's pseudonyms and files are named
by their keys, never by source paths. Each PNG carries its export key (source pixel hashes, window,
canvas and settings): a rerun skips every file already exported with the same key (resume).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from features.errors import ChronofeatError, InputError, ParameterError

__all__ = ["EXPORT_KINDS", "ExportSettings", "ExportSummary", "export_images"]

EXPORT_KINDS = ("image", "padded", "difference", "multiview")
_UNIT = {"image": "scans", "padded": "scans", "difference": "pairs", "multiview": "specimens"}
_KEY = {"scans": "scan_id", "pairs": "pair_id", "specimens": "specimen_id"}
_RECIPE_VERSION = 1  # bump when an image of a kind would change for the same source and settings
_META = "chronofeat-export-meta"
_CHUNK = 32  # multiview specimens made per specimen_stack call
_COMMON = ["kind", "subject", "time_index", "view", "label", "intensity_policy", "bits", "offset", "scale",
           "height", "width", "channels", "sha256", "source_sha256"]
_EXTRA = {
    "scans": ["scan_id"],
    "pairs": ["pair_id", "reference_scan_id", "comparison_scan_id", "reference_mode", "interval_days"],
    "specimens": ["specimen_id", "scan_ids"],
}


@dataclass(frozen=True)
class ExportSettings:
    """What to export: ``kind`` (``EXPORT_KINDS``), ``bits`` (8 or 16), ``size`` (None: own size; 224 for
    multiview), ``views`` (multiview: DV, LAT or DV,LAT), ``overlap_only`` (difference), ``limit``, ``where``."""

    kind: str
    bits: int = 8
    size: int | None = None
    views: str | None = None
    overlap_only: bool = False
    limit: int | None = None
    where: str | None = None

    def check(self) -> None:
        """Raise ``ParameterError`` naming the first option that is out of range or does not fit the kind."""
        if self.kind not in EXPORT_KINDS:
            raise ParameterError(f"The 'kind' of export must be one of {', '.join(EXPORT_KINDS)}. Got {self.kind!r} "
                                 "instead.")
        if self.bits not in (8, 16):
            raise ParameterError(f"The 'bits' parameter must be 8 or 16. Got {self.bits!r} instead.")
        if self.size is not None and (not isinstance(self.size, int) or not 8 <= self.size <= 4096):
            raise ParameterError(f"The 'size' parameter must be an int in [8, 4096]. Got {self.size!r} instead.")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise ParameterError(f"The 'limit' parameter must be an int in [1, inf). Got {self.limit!r} instead.")
        if self.bits == 16 and self.kind in ("image", "padded") and self.size is not None:
            raise ParameterError("--bits 16 exports the raw stored values, which a resize would change: drop --size, "
                                 "or use --bits 8 for resized images.")
        if self.bits == 16 and self.kind == "multiview":
            raise ParameterError("The multiview composite is an 8-bit image (each view windowed to [0, 1]); "
                                 "use --bits 8.")
        if self.views is not None and self.kind != "multiview":
            raise ParameterError("--views goes with --kind multiview; for the scans of one view use "
                                 "--where \"view = 'DV'\".")
        if self.overlap_only and self.kind != "difference":
            raise ParameterError("--overlap-only goes with --kind difference.")


@dataclass
class ExportSummary:
    """What an export did: files ``written`` and ``skipped`` (already exported), ``failures``
    ``[(key, error class, message)]``, the ``index`` CSV and the wall ``seconds``."""

    kind: str
    folder: Path
    index: Path
    written: int = 0
    skipped: int = 0
    failures: list = field(default_factory=list)
    seconds: float = 0.0

    def summary_lines(self) -> list[str]:
        """Lines for a person: counts, speed, where the files and index are, and the first failures."""
        done = self.written + self.skipped
        speed = f", {self.written / self.seconds:.1f} images/s" if self.written and self.seconds > 0 else ""
        lines = [f"export {self.kind}: {done} files in {self.folder} ({self.written} written, {self.skipped} "
                 f"already exported, {len(self.failures)} failed); index {self.index}; {self.seconds:.1f}s{speed}"]
        lines += [f"  failed {key}: {cls}: {message}" for key, cls, message in self.failures[:10]]
        if len(self.failures) > 10:
            lines.append(f"  ... and {len(self.failures) - 10} more failures")
        return lines


@dataclass(frozen=True)
class _Item:
    key: str  # the unit's id (file name)
    source: str  # what the export key hashes besides the settings (pixel hashes, windows)
    meta: dict  # index columns known before the image is made
    make: Callable[[], tuple[np.ndarray, dict]]  # -> (pixels to write, index columns of the encoding)


def _unit8(unit: np.ndarray) -> np.ndarray:
    return np.round(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)


def _encode_unit(unit: np.ndarray, policy: str) -> tuple[np.ndarray, dict]:
    return _unit8(unit), {"intensity_policy": policy, "offset": 0.0, "scale": 1.0 / 255.0}


def _encode_raw(raw: np.ndarray) -> tuple[np.ndarray, dict]:
    """Raw stored values as uint16 with the offset that fits them; ``InputError`` when none does."""
    low, high = float(raw.min()), float(raw.max())
    if not np.array_equal(raw, np.round(raw)):
        raise InputError("The scan holds fractional values (a rescale slope, float pixels or averaged colour), which a "
                         "16-bit PNG cannot hold exactly; export it with --bits 8.")
    if low >= 0 and high <= 65535:
        offset = 0
    elif low >= -32768 and high <= 32767:
        offset = -32768
    else:
        raise InputError(f"The scan's values span [{low:g}, {high:g}], more than 16 bits hold; export it with "
                         "--bits 8.")
    return (raw - offset).astype(np.uint16), {"intensity_policy": "raw", "offset": float(offset), "scale": 1.0}


def _encode_difference(diff: np.ndarray, bits: int, policy: str) -> tuple[np.ndarray, dict]:
    top = 255.0 if bits == 8 else 65535.0
    pixels = np.round((np.clip(diff, -1.0, 1.0) + 1.0) * (top / 2.0)).astype(np.uint8 if bits == 8 else np.uint16)
    return pixels, {"intensity_policy": policy, "offset": -1.0, "scale": 2.0 / top}


def _has_window(center, width, *, minimum: float = 0.0) -> bool:
    return (center is not None and width is not None and bool(np.isfinite(center)) and bool(np.isfinite(width))
            and width >= minimum)


def _scan_policy(row: dict) -> str:
    return "dicom_window" if _has_window(row.get("window_center"), row.get("window_width")) else "percentile_0.5_99.5"


def _loader(store, dataset: str, settings: ExportSettings, scans):
    from extractors.images import ImageLoader, recipe_for_scans

    canvas_recipe = recipe_for_scans(scans, 1)
    size = settings.size or max(canvas_recipe.canvas)
    return ImageLoader(store, dataset, recipe_for_scans(scans, size), cache=256, overlap_only=settings.overlap_only)


def _scan_items(store, dataset: str, settings: ExportSettings, scans, keep: set | None) -> list[_Item]:
    loader = _loader(store, dataset, settings, scans)  # the canvas is the whole dataset's, whatever is kept
    kind, size = settings.kind, settings.size
    items = []
    for row in scans.to_pylist():
        if keep is not None and row["scan_id"] not in keep:
            continue
        pixel = {"path": row["path"], "frame": row["frame"], "window_center": row["window_center"],
                 "window_width": row["window_width"]}
        policy = _scan_policy(row)

        def make(pixel=pixel, policy=policy):
            if settings.bits == 16:
                raw = loader.raw(pixel)
                return _encode_raw(raw if kind == "image" else _pad(raw, loader.recipe.canvas))
            if size is not None:
                from features.canvas import resize

                unit = loader.unit(pixel) if kind == "image" else loader.unit_canvas(pixel)
                return _encode_unit(resize(unit, (size, size), keep_aspect=True), policy)
            return _encode_unit(loader.unit(pixel) if kind == "image" else loader.unit_canvas(pixel), policy)

        source = [row["source_sha256"], row["window_center"], row["window_width"]]
        if kind == "padded":
            source.append(list(loader.recipe.canvas))
        meta = {k: row.get(k) for k in ("scan_id", "subject", "time_index", "view", "label", "source_sha256")}
        items.append(_Item(row["scan_id"], json.dumps(source), meta, make))
    return items


def _pad(raw: np.ndarray, canvas) -> np.ndarray:
    from features.canvas import pad_to_canvas

    return pad_to_canvas(raw, canvas)


def _pair_items(store, dataset: str, settings: ExportSettings, scans, keep: set | None) -> list[_Item]:
    from store.unit_filter import reference_modes
    from store.units import pair_units

    loader = _loader(store, dataset, settings, scans)
    items = []
    for mode in reference_modes(store, dataset):
        for row in pair_units(store, dataset, mode).to_pylist():
            if keep is not None and row["pair_id"] not in keep:
                continue
            ref, cmp = ({name: row[f"{side}_{name}"] for name in ("path", "frame", "window_center", "window_width")}
                        for side in ("ref", "cmp"))
            first = row["reference_scan_id"] == row["comparison_scan_id"]
            scale = "dicom_window" if _has_window(cmp["window_center"], cmp["window_width"], minimum=1) else \
                "percentile_0.5_99.5"
            policy = f"difference_in_comparison_{scale}"

            def make(ref=ref, cmp=cmp, first=first, policy=policy):
                if settings.size is None:
                    diff = loader.difference_canvas(ref, cmp, is_first=first)
                else:
                    diff = loader.difference(ref, cmp, is_first=first)
                return _encode_difference(diff, settings.bits, policy)

            source = [row["source_sha256"], ref["window_center"], ref["window_width"], cmp["window_center"],
                      cmp["window_width"], list(loader.recipe.canvas), settings.overlap_only, first]
            meta = {k: row.get(k) for k in ("pair_id", "subject", "time_index", "view", "label", "reference_scan_id",
                                            "comparison_scan_id", "reference_mode", "interval_days",
                                            "source_sha256")}
            items.append(_Item(row["pair_id"], json.dumps(source), meta, make))
    return items


def _specimen_items(store, dataset: str, settings: ExportSettings, keep: set | None) -> list[_Item]:
    import pyarrow as pa

    from extractors.images import specimen_stack, specimens_with_views
    from features.multiview import parse_views, views_label
    from store.units import specimen_units

    units = specimens_with_views(specimen_units(store, dataset), settings.views)
    if keep is not None:
        units = units.filter(pa.array([k in keep for k in units.column("specimen_id").to_pylist()], pa.bool_()))
    units = units.slice(0, settings.limit) if settings.limit else units  # chunks hold only what is exported
    size = settings.size or 224
    chosen = parse_views(settings.views) or ("DV", "LAT")
    label = views_label(chosen)
    items = []
    made: dict[int, np.ndarray | str] = {}  # specimens are made _CHUNK at a time (one pixel reader per chunk)

    def make_chunk(start: int) -> None:
        made.clear()
        stack, failures = specimen_stack(store, dataset, units.slice(start, _CHUNK), views=chosen, size=size,
                                         progress=False)
        made.update({start + j: image for j, image in enumerate(stack)})
        made.update({start + j: message for j, _, message in failures})

    for i, row in enumerate(units.to_pylist()):
        def make(i=i):
            if i not in made:
                make_chunk(i)
            if isinstance(made[i], str):
                raise InputError(made[i])
            image = made[i].transpose(1, 2, 0)
            return _encode_unit(image[..., 0] if image.shape[2] == 1 else image, "robust_percentile_1_99_per_view")

        meta = {"specimen_id": row["specimen_id"], "subject": row["subject"], "time_index": row["time_index"],
                "view": label, "label": row.get("label"), "scan_ids": ";".join(row["scan_ids"]),
                "source_sha256": row["source_sha256"]}
        items.append(_Item(row["specimen_id"], json.dumps([row["source_sha256"], label]), meta, make))
    return items


def _items(store, dataset: str, settings: ExportSettings) -> list[_Item]:
    """The units to export, filtered by ``where`` and cut to ``limit``, in the extractors' order."""
    from store.unit_filter import filtered_keys
    from store.units import scan_units

    unit = _UNIT[settings.kind]
    keep = filtered_keys(store, unit, dataset, settings.where)
    if unit == "specimens":
        items = _specimen_items(store, dataset, settings, keep)
    else:
        make_items = _scan_items if unit == "scans" else _pair_items
        items = make_items(store, dataset, settings, scan_units(store, dataset), keep)
    return items[: settings.limit] if settings.limit else items


def _export_key(item: _Item, settings: ExportSettings) -> str:
    from store.provenance import canonical_json, params_hash

    settings_part = {"kind": settings.kind, "bits": settings.bits, "size": settings.size, "views": settings.views,
                     "overlap_only": settings.overlap_only, "version": _RECIPE_VERSION}
    return params_hash({"source": item.source, "settings": canonical_json(settings_part)}, length=32)


def _export_one(item: _Item, path: Path, key: str, bits: int) -> tuple[dict, bool]:
    """The index row of ``item`` written to ``path`` (or found there with ``key``) and whether it was written."""
    from store.image_files import EXPORT_KEY, file_sha256, png_text, write_png

    text = png_text(path) if path.exists() else {}
    if text.get(EXPORT_KEY) == key and _META in text:
        return {**json.loads(text[_META]), "sha256": file_sha256(path)}, False
    pixels, encoding = item.make()
    shape = {"height": pixels.shape[0], "width": pixels.shape[1], "channels": 1 if pixels.ndim == 2 else 3}
    meta = {**encoding, **shape, "bits": bits}
    sha = write_png(path, pixels, text={EXPORT_KEY: key, _META: json.dumps(meta)})
    return {**meta, "sha256": sha}, True


def export_images(store, dataset: str, settings: ExportSettings, out, *, progress: bool = True) -> ExportSummary:
    """Write the ``settings.kind`` images of ``dataset`` as PNGs under ``<out>/<kind>/`` and their index CSV.

    ``out`` is refused inside the store or the dataset's source folder (``UnsafeLocationError``); a bad
    option raises ``ParameterError``, a bad ``where`` ``InputError`` / ``ReadOnlyQueryError``, before any
    file is written. A unit whose image cannot be made is listed in the summary's failures and left out
    of the index. Files already exported with the same key are skipped (resume).
    """
    from tqdm.auto import tqdm

    from extractors.images import one_blas_thread
    from store.image_files import export_folder, write_index

    settings.check()
    folder = export_folder(store, dataset, out) / settings.kind
    start = time.perf_counter()
    items = _items(store, dataset, settings)
    folder.mkdir(parents=True, exist_ok=True)
    summary = ExportSummary(settings.kind, folder, folder / "index.csv")
    rows = []
    with one_blas_thread():
        bar = tqdm(items, desc=f"export {settings.kind}", unit="img", disable=not progress, file=sys.stderr)
        for item in bar:
            path = folder / f"{item.key}.png"
            try:
                encoded, written = _export_one(item, path, _export_key(item, settings), settings.bits)
            except ChronofeatError as exc:
                summary.failures.append((item.key, type(exc).__name__, str(exc)))
                continue
            summary.written += written
            summary.skipped += not written
            rows.append({"file": path.name, "kind": settings.kind, **item.meta, **encoded})
    columns = ["file", *_EXTRA[_UNIT[settings.kind]], *_COMMON]
    write_index(summary.index, columns, rows)
    summary.seconds = time.perf_counter() - start
    return summary
