"""The "look" sections of a run's report: embedding maps, a thumbnail gallery and the link to ``view``.

``look_sections(store, row, predictions, directory)`` is called by ``classifiers.report.write_report`` and
returns HTML with the PNGs it shows written into ``directory`` (so a report is self-contained):

* **Embedding maps**, one per feature term of the run (``diffstats_absolute``, ``inception_v3:diff``...): the
  units the run predicted, standardised and projected to 2-D by PCA (and UMAP beside it when ``umap`` is
  installed), coloured by the true label, marker by split (train: out-of-fold or validation; test: held out);
* **Gallery** of the worst and best units (``classifiers.gradcam_report.choose_units``: first seed's test
  units by the probability of their true class): a pair's reference, comparison and difference thumbnails,
  a scan's or a specimen's scans' thumbnails (``extractors.thumbnails``, cached in the store);
* a **link** to the dataset's ``view`` page (``classifiers.viewer``), relative to the report.
"""

from __future__ import annotations

import html
import os
import shutil
from pathlib import Path

import numpy as np

from classifiers.gradcam_report import ExplainedUnit, choose_units
from classifiers.viewer import pseudonym, run_unit_predictions, view_path
from features.errors import ChronofeatError
from store.layout import Store

__all__ = ["look_sections", "embedding_section", "gallery_section", "view_link", "MAX_POINTS"]

MAX_POINTS = 5000  # units drawn per embedding map (a fixed random subset beyond that)
_MARKERS = {"train": "o", "test": "^"}


def _run_terms(row: dict) -> list:
    """The distinct feature terms of the run's members, in order (the tables when no member names any)."""
    from features.sets import FeatureTerm, parse_feature_set

    terms = []
    for member in row["config"].get("members") or []:
        if member.get("features"):
            terms += [t for t in parse_feature_set(member["features"]).terms if t not in terms]
    return terms or [FeatureTerm(t) for t in row.get("feature_tables") or []]


def _projections(x: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(name, (n, 2) coordinates): PCA of the standardised features, and UMAP when ``umap`` imports."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    z = StandardScaler().fit_transform(np.asarray(x, dtype=np.float64))
    pca = PCA(n_components=2, random_state=0).fit(z)
    shown = [(f"PCA ({100 * pca.explained_variance_ratio_.sum():.0f}% of variance)", pca.transform(z))]
    try:
        import umap  # optional: not a dependency
    except ImportError:
        return shown
    neighbours = max(2, min(15, len(z) - 1))
    shown.append(("UMAP", umap.UMAP(n_neighbors=neighbours, random_state=0).fit_transform(z)))
    return shown


def _plot_map(path: Path, title: str, labels: list[str], splits: list[str], maps) -> None:
    import matplotlib.pyplot as plt

    classes = sorted(set(labels))
    colours = {c: plt.get_cmap("tab10")(i % 10) for i, c in enumerate(classes)}
    fig, axes = plt.subplots(1, len(maps), figsize=(5.2 * len(maps), 4.6), squeeze=False)
    labels_a, splits_a = np.array(labels, dtype=object), np.array(splits, dtype=object)
    for ax, (name, xy) in zip(axes[0], maps, strict=True):
        for cls in classes:
            for split, marker in _MARKERS.items():
                chosen = (labels_a == cls) & (splits_a == split)
                if chosen.any():
                    ax.scatter(xy[chosen, 0], xy[chosen, 1], s=18 if split == "train" else 34, marker=marker,
                               color=colours[cls], alpha=0.75, edgecolors="black" if split == "test" else "none",
                               linewidths=0.6, label=f"{cls} ({split})")
        ax.set(title=f"{title}\n{name}", xticks=[], yticks=[])
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _term_points(store: Store, row: dict, term, units, predicted: dict) -> tuple[np.ndarray, list[str], list[str]]:
    """(features, labels, splits) of the run's predicted units that have the term's features."""
    from features.sets import FeatureSet, assemble
    from store.featureset import load_feature_set

    loaded = load_feature_set(store, FeatureSet((term,)), units, row["unit"])
    x = assemble(loaded.blocks)[loaded.present]
    keys = np.asarray(units.column("key").to_pylist(), dtype=object)[loaded.present]
    if len(keys) > MAX_POINTS:
        keep = np.sort(np.random.default_rng(0).choice(len(keys), MAX_POINTS, replace=False))
        x, keys = x[keep], keys[keep]
    return x, [str(predicted[k]["true"]) for k in keys], [predicted[k]["split"] for k in keys]


def embedding_section(store: Store, row: dict, predictions: list[dict], directory: Path) -> str:
    """HTML of the embedding maps (``embedding_<i>.png`` written into ``directory``), one per feature term."""
    import pyarrow as pa

    from store.featureset import load_units

    title = "<h2>Embedding maps</h2>"
    predicted = {k: u for k, u in run_unit_predictions(predictions, row["model"]).items() if u["true"] is not None}
    # name the out-of-sample predictions the circles are as the run made them (a given split has no CV)
    held = "validation" if any(p["split"] == "val" for p in predictions) else "out-of-fold"
    if row["unit"] not in ("scans", "pairs", "specimens") or not predicted:
        return f"{title}<p>No labelled predictions to place on a map.</p>"
    try:
        units = load_units(store, row["dataset"], row["unit"])
        keys = units.column("key").to_pylist()
        units = units.take(pa.array([i for i, k in enumerate(keys) if k in predicted], pa.int64()))
        figures = []
        for i, term in enumerate(_run_terms(row)):
            x, labels, splits = _term_points(store, row, term, units, predicted)
            if len(x) < 3:
                figures.append(f"<p>{html.escape(str(term))}: fewer than 3 units with features, no map.</p>")
                continue
            name = f"embedding_{i}.png"
            _plot_map(directory / name, f"{term} ({len(x)} {row['unit']})", labels, splits, _projections(x))
            caption = (f"{term}: {len(x)} {row['unit']} coloured by true label, circles training subjects "
                       f"({held} predictions), triangles test")
            figures.append(f'<figure><img src="{name}" alt="{html.escape(caption)}">'
                           f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    except (ChronofeatError, ValueError) as exc:
        return f"{title}<p>Embedding maps not drawn: {html.escape(str(exc))}</p>"
    note = "" if any("UMAP" in f for f in figures) else " (UMAP is drawn too when the umap-learn package is installed)"
    return f"{title}<p>Standardised features of the run's units projected to 2-D{note}.</p>" + "".join(figures)


def _unit_images(store: Store, row: dict, units: list[ExplainedUnit]) -> dict[str, list[tuple[str, Path]]]:
    """Key -> [(caption, thumbnail path)] of the gallery's units."""
    from extractors.thumbnails import Thumbnailer
    from store.units import pair_units, scan_units, specimen_units

    dataset, wanted = row["dataset"], {u.key for u in units}
    scans = scan_units(store, dataset)
    thumbnailer = Thumbnailer(store, dataset, scans=scans)
    by_scan = {r["scan_id"]: r for r in scans.to_pylist()}
    out: dict[str, list[tuple[str, Path]]] = {}
    if row["unit"] == "scans":
        out = {k: [("scan", thumbnailer.scan(by_scan[k]))] for k in wanted if k in by_scan}
    elif row["unit"] == "specimens":
        for spec in specimen_units(store, dataset).to_pylist():
            if spec["specimen_id"] in wanted:
                out[spec["specimen_id"]] = [(v or "view", thumbnailer.scan(by_scan[s]))
                                            for v, s in zip(spec["views"], spec["scan_ids"], strict=True)]
    else:
        modes = [row["config"]["reference_mode"]] if row["config"].get("reference_mode") else None
        for mode in modes or _pair_modes(store, dataset):
            for pair in pair_units(store, dataset, mode).to_pylist():
                if pair["pair_id"] in wanted:
                    out[pair["pair_id"]] = [("reference", thumbnailer.scan(by_scan[pair["reference_scan_id"]])),
                                            ("comparison", thumbnailer.scan(by_scan[pair["comparison_scan_id"]])),
                                            ("difference", thumbnailer.difference(pair))]
    return out


def _pair_modes(store: Store, dataset: str) -> list[str]:
    from store.sql import connect

    con = connect(store)
    try:
        return [r[0] for r in con.execute("SELECT DISTINCT reference_mode FROM pairs WHERE dataset = ? ORDER BY 1",
                                          [dataset]).fetchall()]
    finally:
        con.close()


def gallery_section(store: Store, row: dict, predictions: list[dict], directory: Path, *, n: int = 3) -> str:
    """HTML of the worst / best units' thumbnails (copied into ``directory`` as ``gallery_<group>_<rank>_<i>.png``)."""
    title = "<h2>Worst and best units</h2>"
    where, units = choose_units(predictions, row["model"], n=n)
    if not units:
        return f"{title}<p>No labelled predictions to show.</p>"
    try:
        images = _unit_images(store, row, units)
    except (ChronofeatError, OSError, KeyError) as exc:
        return f"{title}<p>Thumbnails not drawn: {html.escape(str(exc))}</p>"
    parts = []
    for unit in units:
        shown = images.get(unit.key, [])
        pictures = []
        for i, (caption, source) in enumerate(shown):
            name = f"gallery_{unit.group}_{unit.rank}_{i}.png"
            shutil.copyfile(source, directory / name)
            pictures.append(f'<img src="{name}" alt="{html.escape(caption)}" title="{html.escape(caption)}" '
                            'width="128" height="128" style="border:1px solid #ccc">')
        text = (f"{unit.group} {unit.rank}: {pseudonym(unit.subject)}, true {unit.y_true}, predicted {unit.y_pred}, "
                f"p(true) {unit.p_true:.2f}" + ("" if shown else " (no pixels found for this unit)"))
        parts.append(f'<figure class="unit">{"".join(pictures)}<figcaption>{html.escape(text)}</figcaption></figure>')
    legend = ("reference, comparison and difference (red: brighter in the comparison, blue: darker)"
              if row["unit"] == "pairs" else "the unit's scans")
    return (f"{title}<p>The {len(units) // 2 or 1} worst and best {html.escape(where)} by the probability of their "
            f"true class; each shows {legend}.</p>" + "".join(parts))


def view_link(store: Store, dataset: str, directory: Path) -> str:
    """HTML linking the dataset's ``view`` page, relative to the report ``directory`` (with how to build it)."""
    page = view_path(store, dataset)
    href = Path(os.path.relpath(page, directory)).as_posix()
    built = "" if page.is_file() else (f" (not built yet: run <code>python cli.py view --dataset "
                                       f"{html.escape(dataset)}</code>)")
    return (f'<h2>Browse the data</h2><p><a id="view-link" href="{html.escape(href)}">Subjects, pairs and predictions '
            f"of {html.escape(dataset)}</a>{built}.</p>")


def look_sections(store: Store, row: dict, predictions: list[dict], directory: Path) -> str:
    """The embedding maps, the gallery and the view link of run ``row`` as one HTML fragment."""
    return (embedding_section(store, row, predictions, directory) + gallery_section(store, row, predictions, directory)
            + view_link(store, row["dataset"], directory))
