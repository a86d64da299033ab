"""Speed of ``cli.py export images`` per kind, against making the same images in memory only.

    python bench/image_export.py [--limit N] [--store DIR]

ours: ``extractors.image_export.export_images`` end to end (rows, pixels, PNG encoding, atomic writes,
index), then a second run of the same export (resume: every file skipped). baseline: the same
``ImageLoader`` / ``specimen_stack`` calls on the same units, arrays kept in memory, nothing written.
Data: the chronomid demo (CT-like 96-128 px slices) and the impc demo (multiview), in a temporary store.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from bench._common import format_table  # noqa: E402


def _baseline(store, dataset: str, kind: str, limit: int) -> float:
    """Seconds to make ``limit`` images of ``kind`` with the loader alone."""
    from extractors.images import ImageLoader, one_blas_thread, recipe_for_scans, specimen_stack
    from store.units import pair_units, scan_units, specimen_units

    start = time.perf_counter()
    if kind == "multiview":
        specimen_stack(store, dataset, specimen_units(store, dataset).slice(0, limit), size=224, progress=False)
        return time.perf_counter() - start
    scans = scan_units(store, dataset)
    loader = ImageLoader(store, dataset, recipe_for_scans(scans, 1), cache=256)
    with one_blas_thread():
        if kind == "difference":
            for pair in pair_units(store, dataset, "absolute").slice(0, limit).to_pylist():
                ref, cmp = ({k: pair[f"{s}_{k}"] for k in ("path", "frame", "window_center", "window_width")}
                            for s in ("ref", "cmp"))
                loader.difference_canvas(ref, cmp, is_first=pair["reference_scan_id"] == pair["comparison_scan_id"])
        else:
            for row in scans.slice(0, limit).to_pylist():
                loader.unit(row) if kind == "image" else loader.unit_canvas(row)
    return time.perf_counter() - start


def main() -> None:
    """Run the benchmark and print one row per kind."""
    from extractors.image_export import ExportSettings, export_images
    from store.ingest import ingest_dataset
    from store.layout import open_store

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=300)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp) / "store")
        for name in ("chronomid", "impc"):
            ingest_dataset(store, name, progress=False)
        cases = [("chronomid", "image", 8, "1=1"), ("chronomid", "padded", 16, "1=1"),
                 ("chronomid", "difference", 8, "reference_mode = 'absolute'"), ("impc", "multiview", 8, "1=1")]
        for dataset, kind, bits, where in cases:
            settings = ExportSettings(kind=kind, bits=bits, limit=args.limit, where=where)
            out = Path(tmp) / "out"
            first = export_images(store, dataset, settings, out, progress=False)
            again = export_images(store, dataset, settings, out, progress=False)
            base = _baseline(store, dataset, kind, args.limit)
            n = first.written
            rows.append({"kind": f"{kind} ({bits}-bit)", "images": n, "export": n / first.seconds,
                         "resume": again.skipped / again.seconds, "loader": n / base, "ratio": base / first.seconds})
    print(format_table(rows, [("kind", "kind", ""), ("images", "images", "d"), ("export", "export img/s", ".0f"),
                              ("resume", "resume img/s", ".0f"), ("loader", "loader only img/s", ".0f"),
                              ("ratio", "ratio", ".2f")]))


if __name__ == "__main__":
    main()
