"""The member-vs-ensemble summary of a run: computed from its ``metrics`` rows, shown as text or HTML.

``summarise`` turns metric rows into one entry per member (CV mean/std over folds and seeds, test
value with its interval); ``format_summary`` prints it as an aligned text table (``cli.py fit``) and
``summary_html`` as an HTML table (``cli.py report``).
"""

from __future__ import annotations

import html

import numpy as np
import pyarrow as pa

from classifiers.metrics import SUMMARY_METRICS

__all__ = ["summarise", "format_summary", "summary_html", "aligned_lines", "METRIC_LABELS"]

METRIC_LABELS = {
    "accuracy": "acc",
    "balanced_accuracy": "bal.acc",
    "f1_macro": "F1",
    "error": "error",
    "auc_macro": "AUC",
}
_TEXT_METRICS = ("accuracy", "f1_macro", "error", "auc_macro")


def _overall(rows: list[dict], member: str, split: str, metric: str) -> list[dict]:
    """The overall (class-less) rows of one member, split and metric; CV: the per-fold rows only."""
    return [r for r in rows if r["member"] == member and r["split"] == split and r["metric"] == metric
            and r["class"] is None and (split != "cv" or r["fold"] >= 0)]


def summarise(metrics: pa.Table, member_order: list[str]) -> list[dict]:
    """Member-vs-ensemble summary from metric rows: per member, CV mean/std over folds and seeds of
    the ``SUMMARY_METRICS`` and the test value (mean/std over seeds, 95% interval of the first seed).

    Returns ``[{"member", "cv": {metric: (mean, std, n)}, "test": {metric: (mean, std, n, low, high)}}]``.
    """
    rows = metrics.to_pylist()
    summary = []
    for member in member_order:
        entry = {"member": member, "cv": {}, "test": {}}
        for metric in SUMMARY_METRICS:
            cv = [r["value"] for r in _overall(rows, member, "cv", metric)]
            if cv:
                entry["cv"][metric] = (float(np.mean(cv)), float(np.std(cv)), len(cv))
            test = sorted(_overall(rows, member, "test", metric), key=lambda r: r["seed"])
            if test:
                values = [r["value"] for r in test]
                entry["test"][metric] = (float(np.mean(values)), float(np.std(values)), len(values),
                                         test[0]["ci_low"], test[0]["ci_high"])
        summary.append(entry)
    return summary


def _pm(value) -> str:
    if value is None:
        return "-"
    mean, std, n = value[:3]
    return f"{mean:.3f} ± {std:.3f}" if n > 1 else f"{mean:.3f}"


def _ci(value) -> str:
    if value is None:
        return "-"
    text = _pm(value)
    _, _, n, low, high = value
    if n == 1 and low is not None:
        text += f" [{low:.2f}, {high:.2f}]"
    return text


def _cells(entry: dict, metrics: tuple[str, ...]) -> list[str]:
    return [_pm(entry["cv"].get(m)) for m in metrics] + [_ci(entry["test"].get(m)) for m in metrics]


def format_summary(summary: list[dict], *, title: str = "", metrics: tuple[str, ...] = _TEXT_METRICS) -> str:
    """Aligned text: one row per member (then the ensemble), CV mean ± std over folds (and seeds), test
    value (mean ± std over seeds; with one seed its subject-bootstrap 95% interval in brackets)."""
    header = ["member"] + [f"cv {METRIC_LABELS[m]}" for m in metrics] + [f"test {METRIC_LABELS[m]}" for m in metrics]
    rows = [[entry["member"], *_cells(entry, metrics)] for entry in summary]
    lines = [title] if title else []
    lines += aligned_lines(header, rows)
    if not any(entry["test"] for entry in summary):
        lines.append("(no held-out test set: cross-validation only)")
    lines.append("error = 1 - macro F1 (CRMO poster); cv: mean ± std over folds x seeds; test: held-out subjects")
    return "\n".join(lines)


def aligned_lines(header: list[str], rows: list[list[str]]) -> list[str]:
    """A header, a rule of dashes and the rows, every column padded to its widest cell."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return lines


def summary_html(summary: list[dict]) -> str:
    """The summary as an HTML table (the report's "Member vs ensemble")."""
    head = "".join(f"<th>cv {METRIC_LABELS[m]}</th>" for m in SUMMARY_METRICS)
    head += "".join(f"<th>test {METRIC_LABELS[m]}</th>" for m in SUMMARY_METRICS)
    body = []
    for entry in summary:
        cells = "".join(f"<td>{html.escape(c)}</td>" for c in _cells(entry, SUMMARY_METRICS))
        body.append(f"<tr><th>{html.escape(entry['member'])}</th>{cells}</tr>")
    return f"<table><tr><th>member</th>{head}</tr>{''.join(body)}</table>"
