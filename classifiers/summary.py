"""The member-vs-ensemble summary of a run: computed from its ``metrics`` rows, shown as text or HTML.

``summarise`` turns metric rows into one entry per member: the development figure (mean/std of the
per-fold values over folds and seeds: ``cv`` folds, or the one given ``val`` split), the test value
with its interval, the training figure (the final model on the rows it learnt from) and, for ensemble
members, the share of units where the member agrees with the ensemble. ``format_summary`` prints it
as an aligned text table (``cli.py fit``), ``summary_html`` as an HTML table (``cli.py report``), and
``evaluation_lines`` says under both what every column means for this run: which split, what the final
model was refitted on, the dataset's own metric notes, and a warning for intervals from too few subjects.
The development figure is defined once, here (``DEV_FIGURE``); ``report.runs_table`` computes the same.
"""

from __future__ import annotations

import html

import numpy as np
import pyarrow as pa

from classifiers.metrics import SUMMARY_METRICS

__all__ = [
    "summarise",
    "format_summary",
    "summary_html",
    "evaluation_lines",
    "aligned_lines",
    "METRIC_LABELS",
    "DEV_FIGURE",
    "MIN_INTERVAL_SUBJECTS",
]

METRIC_LABELS = {
    "accuracy": "acc",
    "balanced_accuracy": "bal.acc",
    "f1_macro": "F1",
    "error": "error",
    "auc_macro": "AUC",
}
_TEXT_METRICS = ("accuracy", "f1_macro", "auc_macro")
MIN_INTERVAL_SUBJECTS = 5  # a subject bootstrap over fewer test subjects gets a warning
# what the printed cv / val figure is (and ``cli.py runs``' dev_f1): one definition
DEV_FIGURE = "mean ± std of the per-fold values (fold >= 0 rows), over folds and seeds"


def _overall(rows: list[dict], member: str, split: str, metric: str) -> list[dict]:
    """The overall (class-less) rows of one member, split and metric; cv / val: the per-fold rows only."""
    return [r for r in rows if r["member"] == member and r["split"] == split and r["metric"] == metric
            and r["class"] is None and (split not in ("cv", "val") or r["fold"] >= 0)]


def _mean(values: list[float]) -> tuple[float, float, int]:
    return float(np.mean(values)), float(np.std(values)), len(values)


def _entry(rows: list[dict], member: str, dev: str) -> dict:
    entry = {"member": member, "dev_split": dev, "dev": {}, "test": {}, "train": {}, "agreement": None,
             "n_test_subjects": None}
    for metric in SUMMARY_METRICS:
        values = [r["value"] for r in _overall(rows, member, dev, metric)]
        if values:
            entry["dev"][metric] = _mean(values)
        train = [r["value"] for r in _overall(rows, member, "train", metric)]
        if train:
            entry["train"][metric] = _mean(train)
        test = sorted(_overall(rows, member, "test", metric), key=lambda r: r["seed"])
        if test:
            entry["test"][metric] = (*_mean([r["value"] for r in test]), test[0]["ci_low"], test[0]["ci_high"])
    subjects = sorted(_overall(rows, member, "test", "n_subjects"), key=lambda r: r["seed"])
    if subjects:
        entry["n_test_subjects"] = int(min(r["value"] for r in subjects))
    for where in ("test", dev):
        agree = [r["value"] for r in rows if r["member"] == member and r["split"] == where
                 and r["metric"] == "agreement" and r["fold"] == -1]
        if agree:
            entry["agreement"] = (*_mean(agree), where)
            break
    return entry


def summarise(metrics: pa.Table, member_order: list[str]) -> list[dict]:
    """Member-vs-ensemble summary from metric rows.

    Returns ``[{"member", "dev_split", "dev", "test", "train", "agreement", "n_test_subjects"}]``:
    ``dev_split`` is 'val' when the run was judged on a given val side, else 'cv'; ``dev`` and ``train``
    map a ``SUMMARY_METRICS`` name to (mean, std, n) — ``dev`` over the per-fold rows (``DEV_FIGURE``),
    ``train`` over seeds; ``test`` to (mean, std, n over seeds, 95% interval low, high of the first
    seed); ``agreement`` is (mean, std, n, split) of the member's agreement with the ensemble on the
    test units (else the pooled dev units), None for the ensemble itself and single models;
    ``n_test_subjects`` the fewest test subjects of any seed (None without a test set).
    """
    rows = metrics.to_pylist()
    dev = "val" if any(r["split"] == "val" for r in rows) else "cv"
    return [_entry(rows, member, dev) for member in member_order]


def _pm(value) -> str:
    if value is None:
        return "-"
    mean, std, n = value[:3]
    return f"{mean:.3f} ± {std:.3f}" if n > 1 else f"{mean:.3f}"


def _ci(value, few: bool) -> str:
    if value is None:
        return "-"
    text = _pm(value)
    _, _, n, low, high = value
    if n == 1 and low is not None:
        text += f" [{low:.2f}, {high:.2f}]" + ("*" if few else "")
    return text


def _few_subjects(summary: list[dict]) -> int | None:
    """The number of test subjects when it is below ``MIN_INTERVAL_SUBJECTS`` (else None)."""
    counts = [e["n_test_subjects"] for e in summary if e["n_test_subjects"] is not None]
    if counts and 0 < min(counts) < MIN_INTERVAL_SUBJECTS:
        return min(counts)
    return None


def _columns(summary: list[dict], metrics: tuple[str, ...], train_metric: str | None) -> list[tuple[str, object]]:
    """(header, cell function) of every column the summary has something for."""
    dev = summary[0]["dev_split"] if summary else "cv"
    few = _few_subjects(summary) is not None
    columns = [(f"{dev} {METRIC_LABELS[m]}", lambda e, m=m: _pm(e["dev"].get(m))) for m in metrics]
    if any(e["test"] for e in summary):
        columns += [(f"test {METRIC_LABELS[m]}", lambda e, m=m: _ci(e["test"].get(m), few)) for m in metrics]
    if train_metric and any(e["train"] for e in summary):
        columns.append((f"train {METRIC_LABELS[train_metric]}", lambda e: _pm(e["train"].get(train_metric))))
    if any(e["agreement"] for e in summary):
        columns.append(("agree", lambda e: _pm(e["agreement"])))
    return columns


def _rule_text(config: dict) -> str:
    rule = config.get("test_rule")
    if rule == "per_class":
        return "one subject per class"
    if rule == "list":
        return config.get("test_list_source") or "listed in --test-subjects"
    return f"{config.get('test_fraction', 0.3):g} of each label stratum"


def _dev_line(config: dict, dev: str) -> str:
    if dev == "val":
        return ("val: the given val subjects (the data's 'split' column): one validation split (no folds); "
                "the val columns are its values")
    seeds = config.get("seeds") or [0]
    side = "given train" if config.get("split") == "given" else "training"
    folds = config.get("folds")
    what = f"{folds}-fold" if folds else "k-fold"
    return (f"cv: {what} subject-grouped stratified CV on the {side} subjects, {len(seeds)} seed(s); "
            f"{DEV_FIGURE}")


def _test_line(config: dict, summary: list[dict], dev: str) -> str:
    if not any(e["test"] for e in summary):
        return "test: no held-out test set (cross-validation only)"
    counts = sorted({int(v) for v in (config.get("test_subjects") or {}).values()})
    n = "/".join(map(str, counts)) if counts else "the"
    if config.get("split") == "given":
        refit = "train+val" if dev == "val" else "the given train subjects"
        return f"test: the given test subjects ({n}); the final model is refitted on {refit} before it is judged"
    if not config:
        return "test: held-out subjects; the final model is refitted on all training subjects"
    return (f"test: {n} held-out subjects ({_rule_text(config)}); the final model is refitted on all training "
            "subjects before it is judged")


def evaluation_lines(summary: list[dict], config: dict | None = None) -> list[str]:
    """What the columns of ``summary`` mean for this run (``config``: its ``runs.config``; {} when unknown).

    The split that was used (CV or the given val side) and what the final model was refitted on, how test
    values are given, the training and agreement columns, the dataset profile's metric notes
    (``config['metric_notes']``: the CRMO error definition only for CRMO), and a warning when test
    intervals come from fewer than ``MIN_INTERVAL_SUBJECTS`` subjects.
    """
    config = config or {}
    dev = summary[0]["dev_split"] if summary else config.get("dev", "cv")
    lines = [_dev_line(config, dev), _test_line(config, summary, dev)]
    if any(e["test"] for e in summary):
        lines.append("test values: mean ± std over seeds; with one seed, [ ] is a 95% interval from a bootstrap that "
                     "resamples whole test subjects")
    if any(e["train"] for e in summary):
        lines.append("train: the final model scored on the rows it was fitted on (its training error)")
    agreement = next((e["agreement"] for e in summary if e["agreement"]), None)
    if agreement:
        lines.append(f"agree: share of {agreement[3]} units where the member predicts what the ensemble predicts")
    lines += list(config.get("metric_notes") or [])
    few = _few_subjects(summary)
    if few is not None:
        lines.append(f"WARNING: * intervals rest on {few} test subject(s), fewer than {MIN_INTERVAL_SUBJECTS}: a "
                     "bootstrap can only redraw those few subjects, so [ ] is not a trustworthy 95% interval. Hold "
                     "out more subjects (--test-subjects) or repeat over seeds (--seeds).")
    return lines


def format_summary(summary: list[dict], *, title: str = "", metrics: tuple[str, ...] = _TEXT_METRICS,
                   context: dict | None = None) -> str:
    """Aligned text: one row per member (then the ensemble) — dev (cv / val), test, train, agreement
    columns — and ``evaluation_lines`` under it. ``context`` is the run's ``runs.config`` (its
    ``train_metric`` picks the train column; default F1)."""
    context = context or {}
    columns = _columns(summary, metrics, context.get("train_metric", "f1_macro"))
    header = ["member"] + [h for h, _ in columns]
    rows = [[entry["member"], *(cell(entry) for _, cell in columns)] for entry in summary]
    lines = [title] if title else []
    lines += aligned_lines(header, rows)
    lines += evaluation_lines(summary, context)
    return "\n".join(lines)


def aligned_lines(header: list[str], rows: list[list[str]]) -> list[str]:
    """A header, a rule of dashes and the rows, every column padded to its widest cell."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return lines


def summary_html(summary: list[dict], config: dict | None = None, *,
                 metrics: tuple[str, ...] = SUMMARY_METRICS) -> str:
    """The summary as an HTML table (the report's "Member vs ensemble") of ``metrics``, with the columns
    ``format_summary`` shows (``config``: the run's ``runs.config``)."""
    config = config or {}
    columns = _columns(summary, metrics, config.get("train_metric", "f1_macro"))
    head = "".join(f"<th>{html.escape(h)}</th>" for h, _ in columns)
    body = []
    for entry in summary:
        cells = "".join(f"<td>{html.escape(cell(entry))}</td>" for _, cell in columns)
        body.append(f"<tr><th>{html.escape(entry['member'])}</th>{cells}</tr>")
    return f"<table><tr><th>member</th>{head}</tr>{''.join(body)}</table>"
