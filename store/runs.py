"""What ``fit`` produced: the ``runs``, ``metrics`` and ``predictions`` tables and the fitted model.

A run is written in this order: the model artifact (joblib bytes, kind ``models``), its ``metrics``
part, its ``predictions`` part, and last its ``runs`` row — so a run listed in ``runs`` is complete.
Each table is append-only (one new part per run). Every table carries the run id; ``predictions``
carries ``key`` (scan_id / pair_id / specimen_id) and ``subject`` so SQL can join it back to
``scans`` / ``pairs``.
"""

from __future__ import annotations

import io
import json
import secrets
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from features.errors import StoreError
from store.artifacts import Artifact, find_artifact, save_artifact
from store.layout import Store
from store.provenance import part_metadata
from store.sql import connect, relation_to_arrow
from store.tables import table_exists, write_part

__all__ = [
    "RUNS",
    "METRICS",
    "PREDICTIONS",
    "MODEL_KIND",
    "new_run_id",
    "RunRecorder",
    "prediction_columns",
    "write_run",
    "list_runs",
    "run_row",
    "run_metrics",
    "run_predictions",
    "load_model",
    "append_predictions",
]

MODEL_KIND = "models"
SCHEMA_VERSION = 1

RUNS = pa.schema([
    ("run_id", pa.string()),
    ("created", pa.timestamp("us", tz="UTC")),
    ("dataset", pa.string()),
    ("target", pa.string()),
    ("unit", pa.string()),  # scans | pairs | specimens
    ("model", pa.string()),
    ("members", pa.list_(pa.string())),
    ("config", pa.string()),  # canonical JSON: every choice that made the run (features, params, splits...)
    ("feature_tables", pa.list_(pa.string())),
    ("feature_hashes", pa.map_(pa.string(), pa.string())),  # table -> chronofeat.params_hash
    ("seeds", pa.list_(pa.int32())),
    ("folds", pa.int32()),
    ("n_units", pa.int32()),
    ("n_subjects", pa.int32()),
    ("classes", pa.list_(pa.string())),
    ("model_artifact", pa.string()),  # sha256 of the joblib bytes in artifacts/models
    ("timings", pa.map_(pa.string(), pa.float64())),  # seconds: load, cv, test, total
])

METRICS = pa.schema([
    ("run_id", pa.string()),
    ("model", pa.string()),
    ("member", pa.string()),  # a member's name, or the run's model name for the ensemble itself
    ("split", pa.string()),  # cv | test
    ("fold", pa.int32()),  # -1: pooled over the folds (cv) / the held-out test set
    ("seed", pa.int32()),
    ("metric", pa.string()),
    ("class", pa.string()),  # null for overall metrics
    ("value", pa.float64()),
    ("ci_low", pa.float64()),
    ("ci_high", pa.float64()),
])

PREDICTIONS = pa.schema([
    ("run_id", pa.string()),
    ("dataset", pa.string()),
    ("member", pa.string()),
    ("key", pa.string()),  # scan_id / pair_id / specimen_id (runs.unit says which)
    ("subject", pa.string()),
    ("split", pa.string()),  # cv | test | predict
    ("fold", pa.int32()),
    ("seed", pa.int32()),
    ("y_true", pa.string()),  # multi-label: labels joined with '|'
    ("y_pred", pa.string()),
    ("proba", pa.map_(pa.string(), pa.float64())),  # class (or label) -> probability
])


def _metadata(table: str) -> dict[str, str]:
    return part_metadata(producer="classifiers.fit", params={"table": table, "schema_version": SCHEMA_VERSION})


def new_run_id(now: datetime | None = None) -> str:
    """A new run id: ``r`` + UTC time to the second + 6 random hex digits (sortable, unique)."""
    now = now or datetime.now(timezone.utc)
    return f"r{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def write_run(
    store: Store,
    run: dict[str, Any],
    metrics: pa.Table,
    predictions: pa.Table,
    model: Any,
    *,
    model_meta: dict[str, Any] | None = None,
) -> Artifact:
    """Persist one run: ``model`` (joblib) as an artifact, then metrics, predictions, then the runs row.

    ``run`` holds the ``RUNS`` columns except ``model_artifact`` (filled here); ``metrics`` and
    ``predictions`` follow ``METRICS`` / ``PREDICTIONS``. Returns the model artifact.
    """
    import joblib

    buffer = io.BytesIO()
    joblib.dump(model, buffer, compress=3)
    artifact = save_artifact(store, MODEL_KIND, buffer.getvalue(), suffix=".joblib",
                             meta={"run_id": run["run_id"], "dataset": run["dataset"], "model": run["model"],
                                   **(model_meta or {})})
    row = {**run, "model_artifact": artifact.sha256}
    if metrics.num_rows:
        write_part(store, "metrics", metrics.cast(METRICS), metadata=_metadata("metrics"))
    if predictions.num_rows:
        write_part(store, "predictions", predictions.cast(PREDICTIONS), metadata=_metadata("predictions"))
    runs = pa.Table.from_pylist([row], schema=RUNS)
    write_part(store, "runs", runs, metadata=_metadata("runs"))
    return artifact


class RunRecorder:
    """One run being built: its id, the metrics and predictions gathered so far, and how to write it.

    Every ``fit`` path (feature models, X-CNN, hierarchical heads) records through this class, so a
    run row, its metrics and its predictions always have the same shape::

        run = RunRecorder(dataset="crmo", model="xcnn", target="label", unit="pairs")
        run.add_metric(metric="accuracy", value=0.87, seed=0)
        run.add_predictions(keys=k, subjects=s, y_true=t, y_pred=p, proba=[{"a": .9, "b": .1}, ...], seed=0)
        artifact = run.write(store, fitted, config={...}, seeds=[0], n_units=40, n_subjects=10, classes=["a", "b"])

    ``member`` defaults to the model's name; ``split`` to ``test`` and ``fold`` to -1 (the held-out set).
    """

    def __init__(self, *, dataset: str, model: str, target: str, unit: str, run_id: str | None = None) -> None:
        self.run_id = run_id or new_run_id()
        self.dataset, self.model, self.target, self.unit = dataset, model, target, unit
        self.started = time.perf_counter()
        self.metric_rows: list[dict[str, Any]] = []
        self.prediction_columns: dict[str, list] = {name: [] for name in PREDICTIONS.names}

    def add_metric(self, *, metric: str, value: float, seed: int, split: str = "test", fold: int = -1,
                   member: str | None = None, cls: str | None = None, ci_low: float | None = None,
                   ci_high: float | None = None) -> None:
        """One ``metrics`` row of this run (``cls`` None for an overall metric)."""
        self.metric_rows.append({
            "run_id": self.run_id, "model": self.model, "member": member or self.model, "split": split,
            "fold": int(fold), "seed": int(seed), "metric": metric, "class": cls,
            "value": None if value is None else float(value), "ci_low": ci_low, "ci_high": ci_high,
        })

    def add_predictions(self, *, keys: Sequence, subjects: Sequence, y_true: Sequence, y_pred: Sequence,
                        proba: Sequence, seed: int, split: str = "test", fold: int = -1,
                        member: str | None = None, classes: Sequence[str] | None = None) -> None:
        """``predictions`` rows, one per key: truth, prediction and class probabilities.

        ``proba`` is a mapping (class -> probability) per row, or with ``classes`` an (n, k) array whose
        columns follow ``classes``.
        """
        columns = prediction_columns(run_id=self.run_id, dataset=self.dataset, member=member or self.model, keys=keys,
                                     subjects=subjects, y_true=y_true, y_pred=y_pred, proba=proba, seed=seed,
                                     split=split, fold=fold, classes=classes)
        for name, values in columns.items():
            self.prediction_columns[name] += values

    def metrics_table(self) -> pa.Table:
        """The metrics recorded so far (``METRICS`` schema)."""
        return pa.Table.from_pylist(self.metric_rows, schema=METRICS)

    def predictions_table(self) -> pa.Table:
        """The predictions recorded so far (``PREDICTIONS`` schema)."""
        return pa.table(self.prediction_columns, schema=PREDICTIONS)

    def write(self, store: Store, model: Any, *, config: Mapping[str, Any], seeds: Sequence[int], n_units: int,
              n_subjects: int, classes: Sequence[str], members: Sequence[str] = (), folds: int = 0,
              feature_hashes: Mapping[str, str | None] | None = None, timings: Mapping[str, float] | None = None,
              model_meta: Mapping[str, Any] | None = None) -> Artifact:
        """Write the model, metrics, predictions and last the ``runs`` row (see ``write_run``).

        ``config`` is stored as canonical JSON, with the effective options of the command being run under
        ``cli`` (``store.config_files.recording_options``); ``timings`` (seconds) gains ``total`` since the recorder
        was made unless given. Returns the model artifact.
        """
        from store.command_options import recorded_options
        from store.provenance import canonical_json

        config = dict(config)
        if recorded_options() is not None:  # the command's effective options: 'cli.py config --run' writes them out
            config.setdefault("cli", recorded_options())
        hashes = dict(feature_hashes or {})
        spent = {k: float(v) for k, v in (timings or {}).items()}
        spent.setdefault("total", time.perf_counter() - self.started)
        run = {
            "run_id": self.run_id, "created": datetime.now(timezone.utc), "dataset": self.dataset,
            "target": self.target, "unit": self.unit, "model": self.model, "members": list(members),
            "config": canonical_json(dict(config)), "feature_tables": sorted(hashes),
            "feature_hashes": [(k, v or "") for k, v in sorted(hashes.items())],
            "seeds": [int(s) for s in seeds], "folds": int(folds), "n_units": int(n_units),
            "n_subjects": int(n_subjects), "classes": [str(c) for c in classes], "timings": list(spent.items()),
        }
        return write_run(store, run, self.metrics_table(), self.predictions_table(), model,
                         model_meta=dict(model_meta or {}))


def prediction_columns(*, run_id: str, dataset: str, member: str, keys: Sequence, subjects: Sequence,
                       y_true: Sequence, y_pred: Sequence, proba: Sequence, seed: int, split: str, fold: int,
                       classes: Sequence[str] | None = None) -> dict[str, list]:
    """The ``PREDICTIONS`` columns (name -> list, one entry per key) of one member's predictions.

    ``y_true`` entries may be None (unlabelled units); ``proba`` is a mapping (class -> probability) per
    row, or with ``classes`` an (n, k) array whose columns follow ``classes``. Raises ``ValueError`` when
    the sequences do not have one entry per key.
    """
    n = len(keys)
    if not (len(subjects) == len(y_true) == len(y_pred) == len(proba) == n):
        raise ValueError("keys, subjects, y_true, y_pred and proba must have one entry per predicted unit")
    if classes is not None:
        names = [str(c) for c in classes]
        pairs = [list(zip(names, map(float, row), strict=True)) for row in proba]
    else:
        pairs = [[(str(c), float(v)) for c, v in row.items()] for row in proba]
    return {
        "run_id": [run_id] * n, "dataset": [dataset] * n, "member": [member] * n,
        "key": [str(k) for k in keys], "subject": [str(s) for s in subjects],
        "split": [split] * n, "fold": [int(fold)] * n, "seed": [int(seed)] * n,
        "y_true": [None if t is None else str(t) for t in y_true],
        "y_pred": [None if p is None else str(p) for p in y_pred],
        "proba": pairs,
    }


def append_predictions(store: Store, predictions: pa.Table) -> None:
    """Append rows (``PREDICTIONS`` schema; e.g. ``split='predict'`` from ``predict``) as one new part."""
    if predictions.num_rows:
        write_part(store, "predictions", predictions.cast(PREDICTIONS), metadata=_metadata("predictions"))


def _query(store: Store, sql: str, params: list) -> pa.Table:
    con = connect(store)
    try:
        return relation_to_arrow(con.sql(sql, params=params or None))
    finally:
        con.close()


def list_runs(store: Store) -> pa.Table:
    """Every run, oldest first: run_id, created, dataset, target, unit, model, members, feature tables,
    seeds, folds, units, subjects (an empty table before the first fit)."""
    if not table_exists(store, "runs"):
        return pa.Table.from_pylist([], schema=RUNS)
    return _query(store, "SELECT * FROM runs ORDER BY created, run_id", [])


def run_row(store: Store, run_id: str) -> dict:
    """The ``runs`` row of ``run_id`` (a unique prefix is enough); ``StoreError`` naming known runs otherwise."""
    runs = list_runs(store)
    ids = runs.column("run_id").to_pylist()
    matches = [i for i in ids if i == run_id] or [
        i for i in ids if isinstance(run_id, str) and run_id and i.startswith(run_id)
    ]
    if len(matches) != 1:
        known = ", ".join(ids[-8:]) or "none yet"
        what = "matches several runs" if matches else "is not a run"
        raise StoreError(
            f"{run_id!r} {what} in {store.root} (latest runs: {known}). List them with 'python cli.py runs'."
        )
    row = runs.filter(pc.equal(runs.column("run_id"), matches[0])).to_pylist()[0]
    for name in ("feature_hashes", "timings"):
        if isinstance(row.get(name), list):
            row[name] = dict(row[name])
    row["config"] = json.loads(row["config"])
    return row


def run_metrics(store: Store, run_id: str) -> pa.Table:
    """Every ``metrics`` row of one run."""
    if not table_exists(store, "metrics"):
        return pa.Table.from_pylist([], schema=METRICS)
    return _query(
        store, 'SELECT * FROM metrics WHERE run_id = ? ORDER BY member, split, seed, fold, metric, "class"', [run_id]
    )


def run_predictions(store: Store, run_id: str, *, split: str | None = None) -> pa.Table:
    """The ``predictions`` rows of one run (of one ``split`` when given)."""
    if not table_exists(store, "predictions"):
        return pa.Table.from_pylist([], schema=PREDICTIONS)
    sql = "SELECT * FROM predictions WHERE run_id = ?" + (" AND split = ?" if split else "")
    return _query(store, sql + " ORDER BY member, split, seed, fold, key", [run_id] + ([split] if split else []))


def load_model(store: Store, run_id: str) -> Any:
    """The fitted model saved by run ``run_id`` (unpickled with joblib: only load stores you trust)."""
    import joblib

    row = run_row(store, run_id)
    artifact = find_artifact(store, MODEL_KIND, row["model_artifact"])
    with open(artifact.path, "rb") as handle:
        return joblib.load(handle)
