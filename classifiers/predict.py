"""Score scans / pairs / specimens with the model a run saved (``python cli.py predict --run RUN``).

The saved model knows its feature sets, unit and label space; ``predict`` rebuilds X from the store
with the same code that fitted it (current pixels only) and refuses feature tables whose configuration
hash changed since the run, since the model would read features it never saw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from classifiers.design import label_text, load_design
from features.errors import ConfigMismatchError, InputError
from features.sets import parse_feature_set
from store.layout import Store
from store.runs import PREDICTIONS, append_predictions, load_model, run_row
from store.tables import PARAMS_HASH_KEY, table_kv_metadata

__all__ = ["PredictResult", "predict", "predict_command", "format_prediction_summary"]


@dataclass
class PredictResult:
    """Predictions of one run's saved model on a dataset (``PREDICTIONS`` columns + ``in_training``)."""

    run_id: str
    dataset: str
    model: str
    table: pa.Table
    n_labelled: int
    accuracy: float | None
    in_training: int
    notes: list[str]


def predict(store: Store, run_id: str, dataset: str | None = None, *, members: bool = False, write: bool = False) -> PredictResult:
    """Score every unit of ``dataset`` (default: the run's) that has the model's features.

    Returns a ``PredictResult`` whose table has the ``predictions`` columns (``split='predict'``,
    fold/seed -1) plus ``in_training`` (the unit's subject was in the saved model's training rows, so
    its score is not an honest estimate). ``members`` adds each ensemble member's rows; ``write``
    appends the rows to the ``predictions`` table.
    """
    row = run_row(store, run_id)
    fitted = load_model(store, row["run_id"])
    from classifiers.evaluate import FittedModel

    if not isinstance(fitted, FittedModel):
        raise InputError(
            f"Run {row['run_id']} ({row['model']}) was not made by 'fit MODEL', so its saved model cannot rebuild its "
            "features for scoring. Use a run of 'python cli.py fit ...'."
        )
    dataset = dataset or fitted.dataset
    for table, wanted in fitted.table_hashes.items():
        current = table_kv_metadata(store, table).get(PARAMS_HASH_KEY)
        if wanted and current and current != wanted:
            raise ConfigMismatchError(
                f"Feature table {table!r} now holds configuration {current}, but run {row['run_id']} was fitted on "
                f"{wanted}; its model cannot read these features. Fit again (python cli.py fit ...)."
            )
    design = load_design(
        store, dataset, fitted.unit, [parse_feature_set(t) for t in fitted.feature_sets], fitted.target,
        reference_mode=fitted.reference_mode, require_target=False, classes=fitted.classes, multilabel=fitted.multilabel,
    )
    expected = getattr(fitted.estimator, "n_features_in_", design.X.shape[1])
    if design.X.shape[1] != expected:
        raise InputError(
            f"The features of {dataset!r} have {design.X.shape[1]} columns but run {row['run_id']}'s model expects "
            f"{expected}; the feature tables changed shape. Fit again on the current tables."
        )
    probas = fitted.probabilities(design.X)
    names = list(probas) if members else [fitted.model]
    labels = fitted.classes
    training = set(fitted.training_subjects)
    in_training = np.array([s in training for s in design.subjects])
    if design.y is None:
        truth = [None] * len(design.keys)
    elif design.multilabel:
        truth = [label_text(v, labels) for v in design.y]
    else:
        truth = [label_text(v) for v in design.y]
    columns: dict[str, list] = {name: [] for name in PREDICTIONS.names}
    columns["in_training"] = []
    for name in names:
        proba = probas[name]
        if design.multilabel:
            predicted = [label_text(p >= 0.5, labels) for p in proba]
        else:
            predicted = [labels[i] for i in np.argmax(proba, axis=1)]
        n = len(predicted)
        columns["run_id"] += [row["run_id"]] * n
        columns["dataset"] += [dataset] * n
        columns["member"] += [name] * n
        columns["key"] += design.keys.tolist()
        columns["subject"] += design.subjects.tolist()
        columns["split"] += ["predict"] * n
        columns["fold"] += [-1] * n
        columns["seed"] += [-1] * n
        columns["y_true"] += truth
        columns["y_pred"] += predicted
        columns["proba"] += [list(zip(labels, map(float, p))) for p in proba]
        columns["in_training"] += in_training.tolist()
    schema = PREDICTIONS.append(pa.field("in_training", pa.bool_()))
    table = pa.table(columns, schema=schema)
    if write:
        append_predictions(store, table.drop_columns(["in_training"]))
    own = table.filter(pc.equal(table.column("member"), fitted.model))
    labelled = [(t, p) for t, p in zip(own.column("y_true").to_pylist(), own.column("y_pred").to_pylist()) if t is not None]
    accuracy = float(np.mean([t == p for t, p in labelled])) if labelled else None
    return PredictResult(row["run_id"], dataset, fitted.model, table, len(labelled), accuracy,
                         int(in_training.sum()), list(design.notes))


def format_prediction_summary(result: PredictResult) -> str:
    """A few lines for people: how many units were scored, accuracy where labels exist, training overlap."""
    n = len(set(zip(result.table.column("key").to_pylist())))
    lines = [f"run {result.run_id} ({result.model}) scored {n} units of {result.dataset!r}"]
    if result.accuracy is not None:
        lines.append(f"accuracy on the {result.n_labelled} labelled units: {result.accuracy:.3f}")
    if result.in_training:
        lines.append(f"{result.in_training} units belong to subjects the model was trained on: their scores are not "
                     "an honest estimate (the run's test metrics are)")
    lines += [f"NOTE: {note}" for note in result.notes]
    return "\n".join(lines)


def predict_command(store: Store, run_id: str, *, dataset: str | None = None, members: bool = False, write: bool = False,
                    fmt: str | None = None, output: str | None = None, max_rows: int = 20, out=print,
                    note=None) -> PredictResult:
    """``python cli.py predict --run RUN --dataset NAME``: score, print a summary and the predictions; return
    the ``PredictResult``.

    Output options as for ``sql`` (``store.render.emit_result``): ``output`` writes every prediction
    (all ``predictions`` columns plus ``in_training``) to a file outside the store, as ``fmt`` or as its
    suffix says; else at most ``max_rows`` rows (0 = all) are printed, as a compact table (key, subject,
    truth, prediction, its probability) or, with ``fmt`` csv/json, as full rows. ``out`` prints to
    stdout; ``note`` (default ``out``) prints what is not data, so csv/json on stdout stay machine-readable.
    """
    from store.render import check_result_options, emit_result

    note = note or out
    check_result_options(fmt=fmt, output=output, max_rows=max_rows, store=store)
    result = predict(store, run_id, dataset, members=members, write=write)
    table = result.table
    best = [max(p for _, p in proba) if proba else None for proba in table.column("proba").to_pylist()]
    shown = pa.table({
        "member": table.column("member"), "key": table.column("key"), "subject": table.column("subject"),
        "y_true": table.column("y_true"), "y_pred": table.column("y_pred"),
        "p_pred": pa.array([None if b is None else round(b, 3) for b in best], pa.float64()),
        "in_training": table.column("in_training"),
    })
    data_on_stdout = output is None and fmt not in (None, "table")
    say = note if data_on_stdout else out
    say(format_prediction_summary(result))
    rendered = emit_result(table, fmt=fmt, output=output, max_rows=max_rows, store=store, display=shown, max_width=34)
    if rendered.note:
        note(rendered.note)
    if rendered.text:
        out(rendered.text.rstrip("\n"))
    if write:
        say(f"appended {table.num_rows} rows to 'predictions' (split = 'predict', run_id {result.run_id})")
    return result
