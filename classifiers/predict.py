"""Score scans / pairs / specimens with the model a run saved (``python cli.py predict --run RUN``).

The saved model knows its feature sets, unit and label space; ``predict`` rebuilds X from the store
with the same code that fitted it (current pixels only) and refuses feature tables whose configuration
hash changed since the run, since the model would read features it never saw.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from classifiers.design import Design, label_text, load_design
from features.errors import ConfigMismatchError, InputError
from features.sets import parse_feature_set
from store.layout import Store
from store.runs import PREDICTIONS, append_predictions, load_model, prediction_columns, run_row
from store.tables import PARAMS_HASH_KEY, table_kv_metadata

__all__ = ["PredictResult", "PredictOutput", "Printed", "predict", "predict_report", "format_prediction_summary"]


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


def _saved_model(store: Store, run_id: str):
    """(runs row, ``FittedModel``) of ``run_id``; ``InputError`` when the run was not made by ``fit MODEL``."""
    from classifiers.evaluate import FittedModel

    row = run_row(store, run_id)
    fitted = load_model(store, row["run_id"])
    if not isinstance(fitted, FittedModel):
        raise InputError(
            f"Run {row['run_id']} ({row['model']}) saved a network or a table of figures, not a model fitted on "
            "feature tables, so 'predict' cannot rebuild its inputs for scoring. 'predict' scores runs of models "
            "that learn from feature tables (python cli.py fit logistic|svm_rbf|...|ensemble ...); its test "
            f"predictions are in the 'predictions' table: python cli.py sql \"SELECT * FROM predictions WHERE "
            f"run_id = '{row['run_id']}'\"."
        )
    return row, fitted


def _check_tables_unchanged(store: Store, run_id: str, table_hashes: dict[str, str | None]) -> None:
    for table, wanted in table_hashes.items():
        current = table_kv_metadata(store, table).get(PARAMS_HASH_KEY)
        if wanted and current and current != wanted:
            raise ConfigMismatchError(
                f"Feature table {table!r} now holds configuration {current}, but run {run_id} was fitted on "
                f"{wanted}; its model cannot read these features. Fit again (python cli.py fit ...)."
            )


def _design_for(store: Store, run_id: str, fitted, dataset: str) -> Design:
    """The units of ``dataset`` with X built as the run's model expects it (``InputError`` if its width differs)."""
    design = load_design(
        store,
        dataset,
        fitted.unit,
        [parse_feature_set(t) for t in fitted.feature_sets],
        fitted.target,
        reference_mode=fitted.reference_mode,
        require_target=False,
        classes=fitted.classes,
        multilabel=fitted.multilabel,
    )
    expected = getattr(fitted.estimator, "n_features_in_", design.X.shape[1])
    if design.X.shape[1] != expected:
        raise InputError(
            f"The features of {dataset!r} have {design.X.shape[1]} columns but run {run_id}'s model expects "
            f"{expected}; the feature tables changed shape. Fit again on the current tables."
        )
    return design


def _predicted(proba: np.ndarray, labels: list[str], multilabel: bool) -> list[str]:
    if multilabel:
        return [label_text(p >= 0.5, labels) for p in proba]
    return [labels[i] for i in np.argmax(proba, axis=1)]


def _truth(design: Design, labels: list[str]) -> list[str | None]:
    if design.y is None:
        return [None] * len(design.keys)
    if design.multilabel:
        return [label_text(v, labels) for v in design.y]
    return [label_text(v) for v in design.y]


def _prediction_table(run_id: str, dataset: str, design: Design, probas: dict[str, np.ndarray], labels: list[str],
                      in_training: np.ndarray) -> pa.Table:
    """``PREDICTIONS`` rows (split 'predict', fold/seed -1) of every member in ``probas``, plus ``in_training``."""
    truth = _truth(design, labels)
    columns: dict[str, list] = {name: [] for name in PREDICTIONS.names}
    columns["in_training"] = []
    for name, proba in probas.items():
        member = prediction_columns(run_id=run_id, dataset=dataset, member=name, keys=design.keys,
                                    subjects=design.subjects, y_true=truth,
                                    y_pred=_predicted(proba, labels, design.multilabel), proba=proba, classes=labels,
                                    seed=-1, split="predict", fold=-1)
        for column, values in member.items():
            columns[column] += values
        columns["in_training"] += in_training.tolist()
    return pa.table(columns, schema=PREDICTIONS.append(pa.field("in_training", pa.bool_())))


def predict(
    store: Store, run_id: str, dataset: str | None = None, *, members: bool = False, write: bool = False
) -> PredictResult:
    """Score every unit of ``dataset`` (default: the run's) that has the model's features.

    Returns a ``PredictResult`` whose table has the ``predictions`` columns (``split='predict'``,
    fold/seed -1) plus ``in_training`` (the unit's subject was in the saved model's training rows, so
    its score is not an honest estimate). ``members`` adds each ensemble member's rows; ``write``
    appends the rows to the ``predictions`` table.
    """
    row, fitted = _saved_model(store, run_id)
    dataset = dataset or fitted.dataset
    _check_tables_unchanged(store, row["run_id"], fitted.table_hashes)
    design = _design_for(store, row["run_id"], fitted, dataset)
    probas = fitted.probabilities(design.X)
    if not members:
        probas = {fitted.model: probas[fitted.model]}
    training = set(fitted.training_subjects)
    in_training = np.array([s in training for s in design.subjects], dtype=bool)
    table = _prediction_table(row["run_id"], dataset, design, probas, fitted.classes, in_training)
    if write:
        append_predictions(store, table.drop_columns(["in_training"]))
    own = table.filter(pc.equal(table.column("member"), fitted.model))
    pairs = zip(own.column("y_true").to_pylist(), own.column("y_pred").to_pylist(), strict=True)
    labelled = [(t, p) for t, p in pairs if t is not None]
    accuracy = float(np.mean([t == p for t, p in labelled])) if labelled else None
    return PredictResult(row["run_id"], dataset, fitted.model, table, len(labelled), accuracy,
                         int(in_training.sum()), list(design.notes))


def format_prediction_summary(result: PredictResult) -> str:
    """A few lines for people: how many units were scored, accuracy where labels exist, training overlap."""
    n = len(set(result.table.column("key").to_pylist()))
    lines = [f"run {result.run_id} ({result.model}) scored {n} units of {result.dataset!r}"]
    if result.accuracy is not None:
        lines.append(f"accuracy on the {result.n_labelled} labelled units: {result.accuracy:.3f}")
    if result.in_training:
        lines.append(f"{result.in_training} units belong to subjects the model was trained on: their scores are not "
                     "an honest estimate (the run's test metrics are)")
    lines += [f"NOTE: {note}" for note in result.notes]
    return "\n".join(lines)


@dataclass(frozen=True)
class Printed:
    """One piece of text for the command line: data or a summary (stdout), or a note (stderr)."""

    text: str
    note: bool = False


@dataclass
class PredictOutput:
    """``predict_report``'s result and, in order, what the command line prints (``lines``)."""

    result: PredictResult
    lines: list[Printed] = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        """The text meant for stdout, in order."""
        return [p.text for p in self.lines if not p.note]

    def note_lines(self) -> list[str]:
        """The text meant for stderr (what is not data), in order."""
        return [p.text for p in self.lines if p.note]


def _shown(table: pa.Table) -> pa.Table:
    """The compact terminal view of predictions: key, subject, truth, prediction and its probability."""
    best = [max(p for _, p in proba) if proba else None for proba in table.column("proba").to_pylist()]
    return pa.table({
        "member": table.column("member"), "key": table.column("key"), "subject": table.column("subject"),
        "y_true": table.column("y_true"), "y_pred": table.column("y_pred"),
        "p_pred": pa.array([None if b is None else round(b, 3) for b in best], pa.float64()),
        "in_training": table.column("in_training"),
    })


def predict_report(store: Store, run_id: str, *, dataset: str | None = None, members: bool = False, write: bool = False,
                    fmt: str | None = None, output: str | None = None, max_rows: int = 20) -> PredictOutput:
    """``python cli.py predict --run RUN --dataset NAME``: score, and say so with the predictions.

    Output options as for ``sql`` (``store.render.emit_result``): ``output`` writes every prediction
    (all ``predictions`` columns plus ``in_training``) to a file outside the store, as ``fmt`` or as its
    suffix says; else at most ``max_rows`` rows (0 = all) are shown, as a compact table (key, subject,
    truth, prediction, its probability) or, with ``fmt`` csv/json, as full rows. The returned
    ``PredictOutput`` holds the lines to print; when csv/json data go to stdout, everything that is not
    data is a note (stderr), so stdout stays machine-readable.
    """
    from store.render import check_result_options, emit_result

    check_result_options(fmt=fmt, output=output, max_rows=max_rows, store=store)
    result = predict(store, run_id, dataset, members=members, write=write)
    table = result.table
    data_on_stdout = output is None and fmt not in (None, "table")
    printed = PredictOutput(result)
    printed.lines.append(Printed(format_prediction_summary(result), note=data_on_stdout))
    rendered = emit_result(table, fmt=fmt, output=output, max_rows=max_rows, store=store, display=_shown(table),
                           max_width=34)
    if rendered.note:
        printed.lines.append(Printed(rendered.note, note=True))
    if rendered.text:
        printed.lines.append(Printed(rendered.text.rstrip("\n")))
    if write:
        printed.lines.append(Printed(f"appended {table.num_rows} rows to 'predictions' (split = 'predict', run_id "
                                     f"{result.run_id})", note=data_on_stdout))
    return printed
