"""Classification metrics with subject-level bootstrap 95% intervals.

Point values come from scikit-learn. Intervals resample whole subjects with replacement (rows of one
subject are not independent), ``n_boot`` times, and take the 2.5 / 97.5 percentiles; the resampled
statistics are computed from weighted confusion matrices and weighted rank statistics, vectorised over
the resamples, so a thousand resamples cost milliseconds.

Single-label rows (``metric``, ``cls``): accuracy, balanced_accuracy, mean_class_accuracy (= mean of
per-class recall, the ChronoMID/Siamese metric), f1_macro, error (= 1 - f1_macro, the CRMO poster's
error), auc_macro (mean of the one-vs-rest AUCs), n; per class: auc, f1, class_accuracy (recall),
support; confusion cells as metric ``confusion`` with ``cls`` = ``"true->pred"``.
Multi-label rows: accuracy (exact set), f1_macro, error, auc_macro; per label: auc, f1, support.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)

__all__ = [
    "MetricValue",
    "classification_metrics",
    "multilabel_metrics",
    "bootstrap_weights",
    "weighted_confusion",
    "weighted_auc",
    "scores_from_confusion",
    "SUMMARY_METRICS",
]

SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "error", "auc_macro")
_CHUNK = 64


@dataclass(frozen=True)
class MetricValue:
    """One metric value: name, class (None for overall), value and its 95% interval (None when not computed)."""

    metric: str
    cls: str | None
    value: float
    ci_low: float | None = None
    ci_high: float | None = None


def bootstrap_weights(groups: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Row weights (n_boot, n_rows): how often each row's subject is drawn in each resample."""
    _, index = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    n_subjects = int(index.max()) + 1 if len(index) else 0
    rng = np.random.default_rng(seed)
    draws = (
        rng.multinomial(n_subjects, np.full(n_subjects, 1.0 / n_subjects), size=n_boot)
        if n_subjects
        else np.zeros((n_boot, 0))
    )
    return draws[:, index].astype(np.float64)


def weighted_confusion(true_codes: np.ndarray, pred_codes: np.ndarray, k: int, weights: np.ndarray) -> np.ndarray:
    """Weighted confusion matrices (B, k, k) for row ``weights`` (B, n); rows = true, columns = predicted."""
    cells = true_codes * k + pred_codes
    out = np.zeros((weights.shape[0], k * k))
    for cell in np.unique(cells):
        out[:, cell] = weights[:, cells == cell].sum(axis=1)
    return out.reshape(-1, k, k)


def scores_from_confusion(conf: np.ndarray) -> dict[str, np.ndarray]:
    """accuracy, balanced_accuracy, f1_macro (B,) and per-class recall/f1 (B, k) from confusions (B, k, k).

    Conventions match scikit-learn's defaults: macro F1 over classes present in truth or prediction,
    balanced accuracy over classes present in truth.
    """
    diag = np.einsum("bii->bi", conf)
    true_n = conf.sum(axis=2)
    pred_n = conf.sum(axis=1)
    total = true_n.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        accuracy = diag.sum(axis=1) / total
        recall = np.where(true_n > 0, diag / true_n, 0.0)
        precision = np.where(pred_n > 0, diag / pred_n, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        present = (true_n + pred_n) > 0
        f1_macro = (f1 * present).sum(axis=1) / present.sum(axis=1)
        in_truth = true_n > 0
        balanced = (recall * in_truth).sum(axis=1) / in_truth.sum(axis=1)
    return {"accuracy": accuracy, "balanced_accuracy": balanced, "f1_macro": f1_macro, "recall": recall, "f1": f1}


def weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC (B,) of ``scores`` for the 0/1 ``positive`` rows under row ``weights`` (B, n); NaN where
    a resample lacks positives or negatives. Ties count one half (Mann-Whitney)."""
    order = np.argsort(scores, kind="stable")
    s, pos = scores[order], positive[order].astype(bool)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    result = np.empty(weights.shape[0])
    for begin in range(0, weights.shape[0], _CHUNK):
        w = weights[begin:begin + _CHUNK][:, order]
        w_pos = np.add.reduceat(w * pos, starts, axis=1)
        w_neg = np.add.reduceat(w * ~pos, starts, axis=1)
        below = np.cumsum(w_neg, axis=1) - w_neg
        numer = (w_pos * (below + 0.5 * w_neg)).sum(axis=1)
        denom = w_pos.sum(axis=1) * w_neg.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            result[begin:begin + _CHUNK] = np.where(denom > 0, numer / denom, np.nan)
    return result


def _interval(values: np.ndarray) -> tuple[float | None, float | None]:
    values = values[np.isfinite(values)]
    if len(values) < 10:
        return None, None
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def _auc(y01: np.ndarray, score: np.ndarray) -> float | None:
    if y01.min() == y01.max():
        return None
    return float(roc_auc_score(y01, score))


class _Intervals(dict):
    """Bootstrap 95% intervals by key (a metric name, or ``auc:<j>`` for class j's AUC)."""

    def row(self, metric: str, value: float, cls: str | None = None, key: str | None = None) -> MetricValue:
        """A ``MetricValue`` carrying the interval of ``key`` (default: the metric's own)."""
        low, high = self.get(key or metric, (None, None))
        return MetricValue(metric, cls, float(value), low, high)

    def add_f1(self, f1_macro: np.ndarray) -> None:
        """Intervals of macro F1 and of the error (1 - macro F1) from resampled macro F1 values."""
        self["f1_macro"] = _interval(f1_macro)
        low, high = self["f1_macro"]
        self["error"] = (None if high is None else 1 - high, None if low is None else 1 - low)

    def add_auc(self, boot_auc: dict[int, np.ndarray]) -> None:
        """Intervals of the macro AUC and of each class's AUC from resampled per-class AUCs."""
        if not boot_auc:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN resamples
            self["auc_macro"] = _interval(np.nanmean(np.vstack(list(boot_auc.values())), axis=0))
        for j, values in boot_auc.items():
            self[f"auc:{j}"] = _interval(values)


def _single_label_intervals(t: np.ndarray, p: np.ndarray, proba: np.ndarray, k: int, aucs: dict,
                            groups: np.ndarray, n_boot: int, seed: int) -> _Intervals:
    weights = bootstrap_weights(groups, n_boot, seed)
    boot = scores_from_confusion(weighted_confusion(t, p, k, weights))
    ci = _Intervals()
    ci["accuracy"] = _interval(boot["accuracy"])
    ci["balanced_accuracy"] = ci["mean_class_accuracy"] = _interval(boot["balanced_accuracy"])
    ci.add_f1(boot["f1_macro"])
    ci.add_auc({j: weighted_auc(proba[:, j], (t == j).astype(int), weights) for j, v in aucs.items() if v is not None})
    return ci


def _per_class_rows(classes: np.ndarray, aucs: dict, per_class_f1: np.ndarray, conf: np.ndarray,
                    recall: np.ndarray, ci: _Intervals) -> list[MetricValue]:
    rows = []
    for j, c in enumerate(classes):
        name = str(c)
        if aucs[j] is not None:
            rows.append(ci.row("auc", aucs[j], name, key=f"auc:{j}"))
        rows.append(MetricValue("f1", name, float(per_class_f1[j])))
        if conf[j].sum() > 0:
            rows.append(MetricValue("class_accuracy", name, float(recall[j])))
        rows.append(MetricValue("support", name, float(conf[j].sum())))
        for i, other in enumerate(classes):
            rows.append(MetricValue("confusion", f"{name}->{other}", float(conf[j, i])))
    return rows


def classification_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    proba: np.ndarray,
    classes: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    n_boot: int = 0,
    seed: int = 0,
) -> list[MetricValue]:
    """Every single-label metric for one set of predictions.

    ``y_true``/``y_pred`` (n,) labels, ``proba`` (n, k) in ``classes`` order. With ``n_boot`` > 0 and
    ``groups`` (subjects), overall metrics and per-class AUCs get subject-bootstrap 95% intervals.
    """
    y_true, y_pred, classes = np.asarray(y_true), np.asarray(y_pred), np.asarray(classes)
    k = len(classes)
    code = {c: i for i, c in enumerate(classes)}
    t = np.array([code[v] for v in y_true])
    p = np.array([code[v] for v in y_pred])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        accuracy = float(accuracy_score(t, p))
        balanced = float(balanced_accuracy_score(t, p))
        f1_macro = float(f1_score(t, p, average="macro"))
        per_class_f1 = f1_score(t, p, labels=np.arange(k), average=None, zero_division=0.0)
    conf = confusion_matrix(t, p, labels=np.arange(k))
    recall = np.divide(np.diag(conf), conf.sum(axis=1), out=np.zeros(k), where=conf.sum(axis=1) > 0)
    aucs = {j: _auc((t == j).astype(int), proba[:, j]) for j in range(k)}
    defined = [v for v in aucs.values() if v is not None]

    ci = _Intervals()
    if n_boot and groups is not None and len(t):
        ci = _single_label_intervals(t, p, proba, k, aucs, groups, n_boot, seed)
    rows = [
        ci.row("accuracy", accuracy),
        ci.row("balanced_accuracy", balanced),
        ci.row("mean_class_accuracy", balanced),
        ci.row("f1_macro", f1_macro),
        ci.row("error", 1.0 - f1_macro),
        MetricValue("n", None, float(len(t))),
    ]
    if defined:
        rows.append(ci.row("auc_macro", float(np.mean(defined))))
    return rows + _per_class_rows(classes, aucs, per_class_f1, conf, recall, ci)


def _multilabel_intervals(y_true: np.ndarray, pred: np.ndarray, proba: np.ndarray, aucs: dict,
                          groups: np.ndarray, n_boot: int, seed: int) -> _Intervals:
    weights = bootstrap_weights(groups, n_boot, seed)
    boot_f1 = np.column_stack([
        scores_from_confusion(weighted_confusion(y_true[:, j], pred[:, j], 2, weights))["f1"][:, 1]
        for j in range(y_true.shape[1])
    ])
    ci = _Intervals()
    ci.add_f1(boot_f1.mean(axis=1))
    exact = (pred == y_true).all(axis=1).astype(float)
    ci["accuracy"] = _interval((weights * exact).sum(axis=1) / weights.sum(axis=1))
    ci.add_auc({j: weighted_auc(proba[:, j], y_true[:, j], weights) for j, v in aucs.items() if v is not None})
    return ci


def multilabel_metrics(
    y_true: np.ndarray,
    proba: np.ndarray,
    labels: list[str],
    *,
    groups: np.ndarray | None = None,
    n_boot: int = 0,
    seed: int = 0,
    threshold: float = 0.5,
) -> list[MetricValue]:
    """Multi-label metrics: per-label AUC and F1 (at ``threshold``) and their means, exact-set accuracy.

    ``y_true`` (n, L) 0/1, ``proba`` (n, L) P(label). Intervals as in ``classification_metrics``.
    """
    y_true = np.asarray(y_true).astype(int)
    pred = (np.asarray(proba) >= threshold).astype(int)
    aucs = {j: _auc(y_true[:, j], proba[:, j]) for j in range(len(labels))}
    f1s = f1_score(y_true, pred, average=None, zero_division=0.0)
    defined = [v for v in aucs.values() if v is not None]
    ci = _Intervals()
    if n_boot and groups is not None and len(y_true):
        ci = _multilabel_intervals(y_true, pred, proba, aucs, groups, n_boot, seed)
    f1_macro = float(np.mean(f1s)) if len(f1s) else 0.0
    rows = [
        ci.row("accuracy", float((pred == y_true).all(axis=1).mean())),
        ci.row("f1_macro", f1_macro),
        ci.row("error", 1.0 - f1_macro),
        MetricValue("n", None, float(len(y_true))),
    ]
    if defined:
        rows.append(ci.row("auc_macro", float(np.mean(defined))))
    for j, name in enumerate(labels):
        if aucs[j] is not None:
            rows.append(ci.row("auc", aucs[j], str(name), key=f"auc:{j}"))
        rows.append(MetricValue("f1", str(name), float(f1s[j])))
        rows.append(MetricValue("support", str(name), float(y_true[:, j].sum())))
    return rows
