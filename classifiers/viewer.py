"""``cli.py view --dataset D``: a static HTML browser of one dataset, its pairs and its runs' predictions.

``write_view(store, dataset)`` writes ``<store>/views/<dataset>/index.html``: one self-contained page (inline
CSS and vanilla JS, no network, no CDN: it opens from ``file://``) whose images are the store's cached
thumbnails (``extractors.thumbnails``, ``<store>/thumbnails/``), linked by relative path:

* **Subjects** as timelines: one row per subject (its pseudonym, never a raw ID), one column per time
  index, the thumbnails of that time point's scans (views / slices) in it;
* **Pairs**: reference, comparison and their difference image, the pair's label and a few feature values
  of each pair-keyed feature table of the dataset (e.g. ``diffstats_absolute``);
* **Filters**: label, split and, for a chosen run of the dataset (the latest ``runs`` runs), whether its
  prediction was right. A run's prediction of a unit is its first seed's held-out test prediction, else
  its out-of-fold CV (or val) prediction; a subject is *wrong* when any of its predicted units is.

Thumbnails are cached by pixel hash, so a second ``view`` (or a ``report``) reads them instead of drawing.
"""

from __future__ import annotations

import html
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from classifiers.viewer_page import render_page
from features.errors import ParameterError
from store.layout import Store
from store.thumbnails import write_page

__all__ = ["VIEWS_DIR", "ViewResult", "view_path", "write_view", "run_unit_predictions", "pseudonym"]

VIEWS_DIR = "views"
_DATASET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_FEATURE_VALUES = 4  # scalar feature values shown per pair-keyed table


def pseudonym(subject: str) -> str:
    """How a subject is shown: ``S-`` and the first 8 characters of its keyed hash (the ``subject`` column)."""
    return f"S-{str(subject)[:8]}"


def view_path(store: Store, dataset: str) -> Path:
    """``<store>/views/<dataset>/index.html`` (not created); ``ParameterError`` for an unsafe dataset name."""
    if not isinstance(dataset, str) or not _DATASET.match(dataset):
        raise ParameterError(f"The 'dataset' of a view must be a dataset name (letters, digits, '_', '.', '-'). "
                             f"Got {dataset!r} instead.")
    return store.root / VIEWS_DIR / dataset / "index.html"


@dataclass(frozen=True)
class ViewResult:
    """What ``write_view`` wrote: the page, subjects / scans / pairs shown, runs offered, thumbnails drawn
    now and reused from the cache, and the seconds it took."""

    path: Path
    subjects: int
    scans: int
    pairs: int
    runs: int
    written: int
    reused: int
    seconds: float

    def summary_lines(self) -> list[str]:
        """The lines ``cli.py view`` prints."""
        return [f"view written: {self.path}",
                f"{self.subjects} subjects, {self.scans} scans, {self.pairs} pairs, {self.runs} runs to filter by; "
                f"thumbnails: {self.written} drawn, {self.reused} from the cache; {self.seconds:.1f}s",
                f"open it in a browser: file://{self.path}"]


def run_unit_predictions(predictions: list[dict], member: str) -> dict[str, dict]:
    """Key -> {pred, true, split ('test' | 'train'), subject} of ``member``'s first seed: the test prediction of
    a held-out unit, else its out-of-fold CV / val prediction (rows from ``store.runs.run_predictions``)."""
    mine = [p for p in predictions if p["member"] == member and p["split"] in ("test", "cv", "val")]
    if not mine:
        return {}
    seed = min(p["seed"] for p in mine)
    out: dict[str, dict] = {}
    for p in sorted((p for p in mine if p["seed"] == seed), key=lambda p: p["split"] == "test"):
        out[p["key"]] = {"pred": p["y_pred"], "true": p["y_true"], "subject": p["subject"],
                         "split": "test" if p["split"] == "test" else "train"}
    return out


def _runs_payload(store: Store, dataset: str, limit: int) -> list[dict]:
    """The latest ``limit`` runs of ``dataset`` for the page's run filter, newest first."""
    from store.runs import list_runs, run_predictions

    runs = [r for r in list_runs(store).to_pylist() if r["dataset"] == dataset][-limit:] if limit > 0 else []
    payload = []
    for row in reversed(runs):
        units = run_unit_predictions(run_predictions(store, row["run_id"]).to_pylist(), row["model"])
        subjects: dict[str, list] = {}
        for unit in units.values():
            right = unit["true"] is not None and unit["pred"] == unit["true"]
            status, _ = subjects.get(unit["subject"], ("right", ""))
            subjects[unit["subject"]] = ["wrong" if not right else status, unit["split"]]
        payload.append({
            "id": row["run_id"], "title": f"{row['run_id']}: {row['model']} on {row['unit']}, target {row['target']}",
            "units": {k: [u["pred"], u["true"], u["split"], int(u["pred"] == u["true"])] for k, u in units.items()},
            "subjects": subjects,
        })
    return payload


def _pair_feature_text(store: Store, dataset: str, pairs: pa.Table) -> dict[str, str]:
    """pair_id -> 'table: col=value, ...' for every pair-keyed feature table of ``dataset`` (a few scalars each),
    read for the pairs' current pixels (``source_sha256``)."""
    from store.featureset import feature_tables, load_matrix

    if pairs.num_rows == 0:
        return {}
    wanted = pa.table({"k": pairs.column("pair_id"), "h": pairs.column("source_sha256")})
    text: dict[str, list[str]] = {}
    for name, info in sorted(feature_tables(store).items()):
        if info.key != "pair_id" or (info.datasets and dataset not in info.datasets):
            continue
        columns = list(info.columns[:_FEATURE_VALUES])
        keys, matrix, _ = load_matrix(store, name, "pair_id", columns, wanted)
        if matrix.shape[1] != len(columns):  # an embedding column: not a few readable values
            continue
        for key, values in zip(keys, matrix, strict=True):
            text.setdefault(key, []).append(f"{name}: " + ", ".join(f"{c}={v:.3g}" for c, v in zip(columns, values,
                                                                                                  strict=True)))
    return {k: "; ".join(v) for k, v in text.items()}


def _bar(items, *, desc: str, unit: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit=unit, disable=not progress, file=sys.stderr, leave=False)


def _value(row: dict, name: str) -> str:
    value = row.get(name)
    return "" if value is None else str(value)


def _subject_rows(scans: list[dict], thumbs: dict[str, str], pair_labels: dict[str, set]) -> tuple[list[str], int]:
    """HTML of the subjects' timelines and the number of subjects; a subject's labels are its scans' and its
    pairs' (``pair_labels``: subject -> labels)."""
    by_subject: dict[str, dict] = {}
    for row in scans:
        by_subject.setdefault(row["subject"], {}).setdefault(row.get("time_index"), []).append(row)
    parts = []
    for subject, times in by_subject.items():
        rows = [r for group in times.values() for r in group]
        labels = sorted(({_value(r, "label") for r in rows} | pair_labels.get(subject, set())) - {""})
        splits = sorted({_value(r, "split") for r in rows} - {""})
        columns = []
        for t in sorted(times, key=lambda v: (v is None, v)):
            figures = "".join(
                f'<img src="{thumbs[r["scan_id"]]}" alt="scan" title="time {html.escape(str(t))}, view '
                f'{html.escape(_value(r, "view") or "-")}, slice {html.escape(_value(r, "slice") or "-")}">'
                for r in sorted(times[t], key=lambda r: (_value(r, "view"), r.get("slice") or 0, r["scan_id"])))
            columns.append(f'<div class="tp"><div class="t">t={html.escape(str(t))}</div>{figures}</div>')
        parts.append(
            f'<div class="subject" data-subject="{html.escape(subject)}" data-labels="{html.escape("|".join(labels))}"'
            f' data-split="{html.escape(",".join(splits))}"><h3>{pseudonym(subject)} <span class="lab">'
            f'{html.escape(", ".join(labels) or "unlabelled")}</span> <span class="st"></span></h3>'
            f'<div class="timeline">{"".join(columns)}</div></div>')
    return parts, len(by_subject)


def _pair_cards(pairs: list[dict], thumbs: dict[str, str], diffs: dict[str, str], features: dict[str, str],
                labels: dict[str, str]) -> list[str]:
    """HTML of one card per pair: reference, comparison, difference, label (``labels``: pair_id -> label) and
    feature values."""
    cards = []
    for p in pairs:
        label = labels[p["pair_id"]]
        caption = (f"{pseudonym(p['subject'])} · {html.escape(p['reference_mode'])} · t={_value(p, 'ref_time_index')}"
                   f" → {_value(p, 'time_index')} · slice {html.escape(_value(p, 'slice') or '-')} · "
                   f"{html.escape(label or 'unlabelled')}")
        values = html.escape(features.get(p["pair_id"], ""))
        cards.append(
            f'<div class="pair" data-key="{html.escape(p["pair_id"])}" data-subject="{html.escape(p["subject"])}" '
            f'data-labels="{html.escape(label)}" data-split="{html.escape(_value(p, "split"))}" '
            f'data-mode="{html.escape(p["reference_mode"])}">'
            f'<img src="{thumbs[p["reference_scan_id"]]}" alt="reference" title="reference">'
            f'<img src="{thumbs[p["comparison_scan_id"]]}" alt="comparison" title="comparison">'
            f'<img src="{diffs[p["pair_id"]]}" alt="difference" title="difference (red brighter, blue darker)">'
            f'<p>{caption}</p><p class="fv">{values}</p><p class="pred"></p></div>')
    return cards


@dataclass
class _Units:
    """What the page shows: scan rows, pair rows (with ``source_sha256``) and the pair-feature text."""

    scans: list[dict]
    pairs: pa.Table


def _read_units(store: Store, dataset: str, subjects: int | None, reference: str | None) -> _Units:
    from store.sql import connect
    from store.tables import table_exists
    from store.units import pair_units, scan_units

    scans = scan_units(store, dataset)
    chosen = sorted(set(scans.column("subject").to_pylist()))
    if subjects is not None:
        if not isinstance(subjects, int) or subjects < 1:
            raise ParameterError(f"The 'subjects' parameter of view must be an int in [1, inf). Got {subjects!r}.")
        chosen = chosen[:subjects]
    keep = set(chosen)
    scan_rows = [r for r in scans.to_pylist() if r["subject"] in keep]
    tables = []
    if table_exists(store, "pairs"):
        con = connect(store)
        try:
            modes = [r[0] for r in con.execute("SELECT DISTINCT reference_mode FROM pairs WHERE dataset = ? ORDER BY 1",
                                               [dataset]).fetchall()]
        finally:
            con.close()
        if reference is not None and reference not in modes:
            raise ParameterError(f"The 'reference' of view must be one of the dataset's pair modes "
                                 f"({', '.join(modes) or 'none'}). Got {reference!r} instead.")
        for mode in [reference] if reference else modes:
            table = pair_units(store, dataset, mode)
            tables.append(table.filter(pa.array([s in keep for s in table.column("subject").to_pylist()])))
    empty = pa.table({"pair_id": pa.array([], pa.string())})
    return _Units(scan_rows, pa.concat_tables(tables, promote_options="default") if tables else empty)


def write_view(store: Store, dataset: str, *, subjects: int | None = None, reference: str | None = None,
               runs: int = 10, progress: bool = True) -> ViewResult:
    """Write the dataset's browser page (see module docstring) and return a ``ViewResult``.

    ``subjects`` keeps the first N subjects (by pseudonym; all when None); ``reference`` keeps one pair mode
    (all when None); ``runs`` is how many of the dataset's latest runs the prediction filter offers.
    """
    from extractors.thumbnails import Thumbnailer

    started = time.perf_counter()
    path = view_path(store, dataset)
    units = _read_units(store, dataset, subjects, reference)
    page_dir = path.parent
    page_dir.mkdir(parents=True, exist_ok=True)
    thumbnailer = Thumbnailer(store, dataset)

    def rel(target: Path) -> str:
        return html.escape(Path(os.path.relpath(target, page_dir)).as_posix())

    thumbs = {r["scan_id"]: rel(thumbnailer.scan(r))
              for r in _bar(units.scans, desc=f"{dataset} scan thumbnails", unit="img", progress=progress)}
    pair_rows = units.pairs.to_pylist()
    diffs = {p["pair_id"]: rel(thumbnailer.difference(p))
             for p in _bar(pair_rows, desc=f"{dataset} difference thumbnails", unit="pair", progress=progress)}
    scan_labels = {r["scan_id"]: _value(r, "label") for r in units.scans}
    pair_labels = {p["pair_id"]: _value(p, "label") or scan_labels.get(p["comparison_scan_id"], "") for p in pair_rows}
    by_subject: dict[str, set] = {}
    for p in pair_rows:
        by_subject.setdefault(p["subject"], set()).add(pair_labels[p["pair_id"]])
    subject_html, n_subjects = _subject_rows(units.scans, thumbs, by_subject)
    cards = _pair_cards(pair_rows, thumbs, diffs, _pair_feature_text(store, dataset, units.pairs), pair_labels)
    payload = _runs_payload(store, dataset, runs)
    labels = sorted((set(scan_labels.values()) | set(pair_labels.values())) - {""})
    write_page(path, render_page(dataset=dataset, subjects=subject_html, pairs=cards, runs=payload, labels=labels))
    return ViewResult(path, n_subjects, len(units.scans), len(pair_rows), len(payload), thumbnailer.written,
                      thumbnailer.reused, time.perf_counter() - started)
