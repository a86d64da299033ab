"""People-facing output of runs: the member-vs-ensemble text table, the runs list, the HTML report.

``write_report`` reads a run back from the store (``runs``, ``metrics``, ``predictions``) and writes
``index.html`` with PNG plots (matplotlib, Agg backend): ROC curves per class for every member, the
confusion matrix of every member, per-fold scores, and the member-vs-ensemble table with 95% intervals.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from classifiers.search import describe_choices
from classifiers.summary import METRIC_LABELS, aligned_lines, evaluation_lines, format_summary, summarise, summary_html
from store.layout import Store
from store.runs import run_metrics, run_predictions, run_row

__all__ = ["format_summary", "format_runs", "runs_table", "write_report", "REPORTS_DIR"]

REPORTS_DIR = "reports"


def format_runs(runs: pa.Table) -> str:
    """Aligned text of ``store.runs.list_runs``: id, created, dataset, target, model, members, units."""
    if runs.num_rows == 0:
        return "no runs yet (python cli.py fit ensemble --dataset NAME)"
    header = ["run_id", "created", "dataset", "target", "unit", "model", "members", "units", "subjects", "seeds"]
    rows = []
    for r in runs.to_pylist():
        rows.append(
            [
                r["run_id"],
                f"{r['created']:%Y-%m-%d %H:%M}",
                r["dataset"],
                r["target"],
                r["unit"],
                r["model"],
                ",".join(r["members"] or []) or "-",
                str(r["n_units"]),
                str(r["n_subjects"]),
                str(len(r["seeds"] or [])),
            ]
        )
    return "\n".join(aligned_lines(header, rows))


def runs_table(store: Store) -> pa.Table:
    """One row per run for ``cli.py runs``: id, created, dataset, target, unit, model, members, feature
    tables, units, subjects, seeds, and the model's scores: ``dev`` ('cv' or 'val': how it was judged before
    its test), ``dev_f1`` (the printed cv / val F1: mean of the per-fold macro F1 over folds and seeds,
    ``classifiers.summary.DEV_FIGURE``), ``test_f1`` and ``test_error`` (held-out test, mean over seeds)."""
    from store.sql import query
    from store.tables import table_exists

    if not table_exists(store, "runs"):
        return pa.table({"run_id": pa.array([], pa.string())})
    scores = ""
    if table_exists(store, "metrics"):
        scores = """
        LEFT JOIN (SELECT run_id, member,
                          max(CASE WHEN split IN ('cv', 'val') THEN split END) AS dev,
                          avg(CASE WHEN split IN ('cv', 'val') AND fold >= 0 AND metric = 'f1_macro'
                                   AND "class" IS NULL THEN value END) AS dev_f1,
                          avg(CASE WHEN split = 'test' AND metric = 'f1_macro' AND "class" IS NULL
                                   THEN value END) AS test_f1,
                          avg(CASE WHEN split = 'test' AND metric = 'error' AND "class" IS NULL
                                   THEN value END) AS test_error
                   FROM metrics GROUP BY run_id, member) m ON m.run_id = r.run_id AND m.member = r.model"""
    columns = (
        "m.dev, round(m.dev_f1, 3) AS dev_f1, round(m.test_f1, 3) AS test_f1, round(m.test_error, 3) AS test_error"
        if scores
        else "NULL AS dev, NULL AS dev_f1, NULL AS test_f1, NULL AS test_error"
    )
    return query(store, f"""
        SELECT r.run_id, strftime(r.created, '%Y-%m-%d %H:%M') AS created, r.dataset, r.target, r.unit, r.model,
               array_to_string(r.members, ',') AS members, array_to_string(r.feature_tables, ',') AS feature_tables,
               r.n_units AS units, r.n_subjects AS subjects, len(r.seeds) AS seeds, {columns}
        FROM runs r {scores}
        ORDER BY r.created, r.run_id""")


def _evaluation_rows(predictions: list[dict], member: str) -> tuple[str, list[dict]]:
    """Rows to plot for ``member``: the first seed's test predictions, else its CV (or given val) predictions."""
    mine = [p for p in predictions if p["member"] == member]
    if not mine:
        return "none", []
    seed = min(p["seed"] for p in mine)
    test = [p for p in mine if p["split"] == "test" and p["seed"] == seed]
    if test:
        return f"test, seed {seed}", test
    dev = [p for p in mine if p["split"] in ("cv", "val") and p["seed"] == seed]
    where = "given val split" if any(p["split"] == "val" for p in dev) else "cross-validation (pooled folds)"
    return f"{where}, seed {seed}", dev


def _plot_roc(path: Path, member: str, where: str, rows: list[dict], classes: list[str], multilabel: bool) -> bool:
    import matplotlib.pyplot as plt
    from sklearn.metrics import auc, roc_curve

    fig, ax = plt.subplots(figsize=(5, 4.5))
    drawn = 0
    for cls in classes:
        scores = np.array([dict(r["proba"]).get(cls, 0.0) for r in rows])
        if multilabel:
            truth = np.array([cls in (r["y_true"] or "").split("|") for r in rows])
        else:
            truth = np.array([r["y_true"] == cls for r in rows])
        if truth.all() or not truth.any():
            continue
        fpr, tpr, _ = roc_curve(truth, scores)
        ax.plot(fpr, tpr, label=f"{cls} (AUC {auc(fpr, tpr):.2f})")
        drawn += 1
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{member}: ROC one-vs-rest\n{where}",
           xlim=(0, 1), ylim=(0, 1.02))
    if drawn:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _plot_confusion(path: Path, member: str, where: str, rows: list[dict], classes: list[str]) -> bool:
    import matplotlib.pyplot as plt

    index = {c: i for i, c in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), dtype=int)
    for r in rows:
        if r["y_true"] in index and r["y_pred"] in index:
            matrix[index[r["y_true"]], index[r["y_pred"]]] += 1
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2.5, 1.1 * len(classes) + 2))
    ax.imshow(matrix, cmap="Blues")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title=f"{member}: confusion\n{where}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _plot_folds(path: Path, metrics: list[dict], members: list[str], metric: str) -> bool:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.3 * len(members) + 2.5, 4))
    for i, member in enumerate(members):
        values = [m["value"] for m in metrics if m["member"] == member and m["split"] in ("cv", "val")
                  and m["fold"] >= 0 and m["metric"] == metric and m["class"] is None]
        tests = [m["value"] for m in metrics if m["member"] == member and m["split"] == "test"
                 and m["metric"] == metric and m["class"] is None]
        jitter = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else np.zeros(len(values))
        ax.scatter(i + jitter, values, color="tab:blue", alpha=0.7, label="fold" if i == 0 else None)
        if values:
            ax.hlines(np.mean(values), i - 0.25, i + 0.25, color="tab:blue")
        if tests:
            ax.scatter([i] * len(tests), tests, marker="D", color="tab:red", label="test" if i == 0 else None)
    ax.set_xticks(range(len(members)), members, rotation=20, ha="right")
    dev = "val" if any(m["split"] == "val" for m in metrics) else "CV"
    ax.set(ylabel=METRIC_LABELS.get(metric, metric), title=f"per-fold {metric} (line: {dev} mean)", ylim=(-0.02, 1.02))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


@dataclass
class _RunView:
    """One stored run read back for its report: the runs row, its metrics and predictions as dicts."""

    row: dict
    metrics_table: pa.Table
    metrics: list[dict]
    predictions: list[dict]
    members: list[str]  # member names, then the run's model
    classes: list[str]
    multilabel: bool

    @classmethod
    def read(cls, store: Store, run_id: str) -> _RunView:
        row = run_row(store, run_id)
        metrics_table = run_metrics(store, row["run_id"])
        return cls(row=row, metrics_table=metrics_table, metrics=metrics_table.to_pylist(),
                   predictions=run_predictions(store, row["run_id"]).to_pylist(),
                   members=list(dict.fromkeys(list(row["members"] or []) + [row["model"]])),
                   classes=list(row["classes"] or []), multilabel=bool(row["config"].get("multilabel")))


def _draw_plots(directory: Path, run: _RunView) -> list[tuple[str, str]]:
    """Write the PNG plots of ``run`` into ``directory``; return (file name, caption) of each."""
    images = []
    for metric in ("f1_macro", "auc_macro"):
        name = f"folds_{metric}.png"
        if any(m["metric"] == metric for m in run.metrics) and _plot_folds(
            directory / name, run.metrics, run.members, metric
        ):
            images.append((name, f"per-fold {metric}"))
    for member in run.members:
        where, rows = _evaluation_rows(run.predictions, member)
        if not rows:
            continue
        name = f"roc_{member}.png"
        _plot_roc(directory / name, member, where, rows, run.classes, run.multilabel)
        images.append((name, f"{member}: ROC ({where})"))
        if not run.multilabel:
            name = f"confusion_{member}.png"
            _plot_confusion(directory / name, member, where, rows, run.classes)
            images.append((name, f"{member}: confusion ({where})"))
    if run.row["model"] == "xcnn":
        from classifiers.xcnn_table import curve_image

        images += curve_image(directory, run.row["config"])
    return images


def _page(run: _RunView, images: list[tuple[str, str]]) -> str:
    """The report's HTML text."""
    row, config = run.row, run.row["config"]
    run_id = row["run_id"]
    summary = summarise(run.metrics_table, run.members)
    per_class = [m for m in run.metrics if m["metric"] == "auc" and m["fold"] == -1 and m["split"] != "train"]
    auc_rows = "".join(
        f"<tr><td>{html.escape(m['member'])}</td><td>{m['split']}</td><td>{m['seed']}</td>"
        f"<td>{html.escape(str(m['class']))}</td><td>{m['value']:.3f}</td><td>{_interval_text(m)}</td></tr>"
        for m in per_class
    )
    member_rows = "".join(
        f"<tr><td>{html.escape(m['name'])}</td><td>{html.escape(m['model'])}</td><td><code>{html.escape(m['features'])}</code></td>"
        f"<td>{html.escape(m['source'])}</td></tr>"
        for m in config.get("members", [])
    )
    hashes = ", ".join(f"{html.escape(k)} ({html.escape(v or '?')})" for k, v in (row["feature_hashes"] or {}).items())
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in config.get("notes", []))
    explained = "".join(f"<li>{html.escape(line)}</li>" for line in evaluation_lines(summary, config))
    chosen = describe_choices(str(config.get("search", "none")), str(config.get("search_metric") or "f1_macro"),
                              config.get("search_choices") or {})
    chosen_html = f"<pre>{html.escape(chr(10).join(chosen))}</pre>" if chosen else ""
    metrics = _report_metrics(config)
    figures = "".join(
        f'<figure><img src="{name}" alt="{html.escape(caption)}">'
        f'<figcaption>{html.escape(caption)}</figcaption></figure>'
        for name, caption in images
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>chronofeat run {html.escape(run_id)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}figure{{display:inline-block;margin:0.5em}}
img{{max-width:520px}}code{{background:#f4f4f4}}</style></head><body>
<h1>Run {html.escape(run_id)}</h1>
<p>{html.escape(row["model"])} on <b>{html.escape(row["dataset"])}</b>, target <b>{html.escape(row["target"])}</b>
({html.escape(", ".join(run.classes))}), {row["n_units"]} {html.escape(row["unit"])} of {row["n_subjects"]} subjects;
seeds {html.escape(", ".join(map(str, row["seeds"] or [])))}; {html.escape(_split_sentence(config, row["folds"]))};
search {html.escape(str(config.get("search")))}; created {row["created"]:%Y-%m-%d %H:%M} UTC.</p>
<h2>Members</h2><table><tr><th>member</th><th>model</th><th>feature set</th><th>from</th></tr>{member_rows}</table>
<p>Feature tables (config hash): {hashes}</p>
<h2>Member vs ensemble</h2>{summary_html(summary, config, metrics=metrics)}
<ul>{explained}</ul>{chosen_html}
<h2>Plots</h2>{figures}
<h2>Per-class AUC</h2><table><tr><th>member</th><th>split</th><th>seed</th><th>class</th>\
<th>AUC</th><th>95% CI</th></tr>{auc_rows}</table>
<h2>Notes</h2><ul>{notes}</ul>
</body></html>
"""


def write_report(store: Store, run_id: str, out_dir: str | Path | None = None) -> Path:
    """Write the HTML report of run ``run_id`` (prefix allowed) with its PNG plots; return the HTML path.

    ``out_dir`` defaults to ``<store>/reports/<run_id>/``. Files: ``index.html``, ``roc_<member>.png``,
    ``confusion_<member>.png`` (single-label), ``folds_<metric>.png``.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    run = _RunView.read(store, run_id)
    directory = Path(out_dir) if out_dir is not None else store.root / REPORTS_DIR / run.row["run_id"]
    directory.mkdir(parents=True, exist_ok=True)
    images = _draw_plots(directory, run)
    from classifiers.gradcam_report import gradcam_section  # Grad-CAM maps of worst/best units ('' if none)

    extra = gradcam_section(store, run.row, run.predictions, directory)
    from classifiers.report_look import look_sections  # embedding maps, worst/best thumbnails, link to 'view'

    extra += look_sections(store, run.row, run.predictions, directory)
    path = directory / "index.html"
    path.write_text(_page(run, images).replace("</body>", f"{extra}</body>"), encoding="utf-8")
    return path


def _split_sentence(config: dict, folds: int) -> str:
    """How the run was split, in words (``--split given``: never called cross-validation when it was not)."""
    if config.get("split") == "given":
        if config.get("dev") == "val":
            return ("split given by the data's 'split' column: validated on the given val subjects (one split, "
                    "no folds), final model refitted on train+val, judged on the given test subjects")
        return (f"split given by the data's 'split' column (no val side): {folds}-fold subject-grouped CV on the "
                "given train subjects, final model refitted on train, judged on the given test subjects")
    held = "no held-out test set" if config.get("test_rule") == "none" else "held-out test subjects"
    return (f"{folds}-fold subject-grouped stratified CV on the training subjects, {held}; final model refitted on "
            "all training subjects")


def _report_metrics(config: dict) -> tuple[str, ...]:
    """The summary metrics of the report: every one, but 'error' (1 - macro F1) only where the profile shows it."""
    from classifiers.metrics import SUMMARY_METRICS

    shown = config.get("summary_metrics")
    return tuple(m for m in SUMMARY_METRICS if m != "error" or (shown is None or "error" in shown))


def _interval_text(metric: dict) -> str:
    if metric["ci_low"] is None:
        return ""
    return f"{metric['ci_low']:.2f} - {metric['ci_high']:.2f}"
