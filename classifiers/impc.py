"""The IMPC protocol (seed 003): hierarchical per-class ROC AUC over seeds, and DV vs LAT vs multiview.

``fit_hierarchical(store, dataset=..., features=TABLE)`` judges the ``hierarchical`` model (levels
1-3, ``classifiers.torch_heads``) on one embedding table of the specimens: per seed, whole subjects
are held out (stratified by level 1), the model is fitted on the others and every class gets its ROC
AUC on the held-out specimens (levels 2-3 among the abnormal ones) and on the training specimens.
The figures are laid out like the paper's Table 4 (mean ± std over seeds); a class whose AUC is
undefined in some seed (its held-out specimens all positive or all negative) says over how many
seeds its figure is — never silently fewer.

``compare_views(store, dataset="impc")`` is the paper's main comparison (Tables 4-5): the same
protocol on DV-only, LAT-only and multiview inputs of every specimen, one feature table each —
``extract --input multiview --views DV|LAT|DV,LAT`` (a CNN) or a convolutional autoencoder trained on
that input (``train cae --input multiview --views ...``) — missing tables are computed first. Its
``summary_lines()`` print three rows per level (one per input) with per-class mean ± std and the
number of seeds behind each figure. On the command line:
``fit hierarchical --dataset impc --compare-views cae`` (or ``efficientnet``, ``efficientnet:random``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from classifiers._registry import create_model
from features.errors import EvaluationError, ParameterError, check_param, is_int

__all__ = [
    "LEVELS",
    "VIEW_INPUTS",
    "hierarchical_targets",
    "format_level_table",
    "HierarchicalReport",
    "fit_hierarchical",
    "default_features",
    "view_feature_tables",
    "ViewComparison",
    "compare_views",
    "parse_backbone",
]

LEVELS = ("Level_1", "Level_2", "Level_3")
# subjects a comparison's autoencoder never sees: the pool its held-out test subjects are drawn from
# (0.4 of them, so that 0.3 of all subjects per seed still differ from seed to seed)
CAE_TEST_FRACTION = 0.4
# the three inputs of the paper's comparison: (row label, views)
VIEW_INPUTS = (("DV only", ("DV",)), ("LAT only", ("LAT",)), ("multiview", ("DV", "LAT")))


# --- targets and tables ---------------------------------------------------------------------------
def hierarchical_targets(level1: Sequence, level2: Sequence, level3: Sequence, *, positive: str = "abnormal",
                         classes2: Sequence[str] | None = None, classes3: Sequence[str] | None = None):
    """0/1 indicator ``(n, 1 + k2 + k3)`` and the column names from per-unit level values.

    ``level1`` holds strings (``positive`` marks 1); ``level2``/``level3`` hold lists of class names.
    Class lists default to the sorted names present.
    """
    classes2 = sorted({c for v in level2 for c in (v or [])}) if classes2 is None else list(classes2)
    classes3 = sorted({c for v in level3 for c in (v or [])}) if classes3 is None else list(classes3)
    n = len(level1)
    Y = np.zeros((n, 1 + len(classes2) + len(classes3)), dtype=np.int8)
    Y[:, 0] = [1 if str(v) == positive else 0 for v in level1]
    for i, values in enumerate(level2):
        for c in values or []:
            Y[i, 1 + classes2.index(c)] = 1
    for i, values in enumerate(level3):
        for c in values or []:
            Y[i, 1 + len(classes2) + classes3.index(c)] = 1
    names = [("Level_1", "Binary")] + [("Level_2", c) for c in classes2] + [("Level_3", c) for c in classes3]
    return Y, names


def _level_means(aucs: np.ndarray, cols: list[int]) -> np.ndarray:
    """Per seed, the mean AUC over the classes of ``cols`` defined in that seed (seeds with none left out)."""
    return np.array([row[np.isfinite(row)].mean() for row in aucs[:, cols] if np.isfinite(row).any()])


def format_level_table(names: list[tuple[str, str]], aucs: np.ndarray, *, title: str) -> str:
    """Table-4 layout: level, class, mean AUC and std over seeds, and the seeds with a defined AUC
    (``aucs`` is (seeds, classes), NaN = undefined in that seed)."""
    lines = [title, f"{'Abnormality':<10} {'Class':<14} {'Mean AUC':>9} {'Std':>7} {'seeds':>6}"]
    previous = None
    for j, (level, cls) in enumerate(names):
        values = aucs[:, j][np.isfinite(aucs[:, j])]
        mean = f"{values.mean():.3f}" if len(values) else "n/a"
        std = f"{values.std():.3f}" if len(values) else "n/a"
        lines.append(f"{level if level != previous else '':<10} {cls:<14} {mean:>9} {std:>7} {len(values):>6}")
        previous = level
    for level in dict.fromkeys(n[0] for n in names):
        per_seed = _level_means(aucs, [j for j, n in enumerate(names) if n[0] == level])
        if len(per_seed):
            lines.append(f"{level} mean AUC over classes: {per_seed.mean():.3f} ± {per_seed.std():.3f}")
    return "\n".join(lines)


def _missing_seed_notes(names: list[tuple[str, str]], aucs: np.ndarray, *, label: str = "") -> list[str]:
    """One note per class whose AUC is undefined in some seeds: its figure is over fewer seeds, said aloud."""
    notes = []
    seeds = aucs.shape[0]
    for j, (level, cls) in enumerate(names):
        used = int(np.isfinite(aucs[:, j]).sum())
        if used < seeds:
            notes.append(
                f"note: {label}{level} {cls}: AUC over {used} of {seeds} seeds — in the other {seeds - used} its "
                "held-out specimens (abnormal ones for levels 2-3) were all positive or all negative."
            )
    return notes


# --- the specimens ------------------------------------------------------------------------------
@dataclass
class _Specimens:
    """The specimens a hierarchical fit judges: features, targets, their names and the level sizes."""

    X: np.ndarray
    Y: np.ndarray
    names: list[tuple[str, str]]
    keys: np.ndarray
    subjects: np.ndarray
    levels: tuple[int, int, int]
    notes: list[str] = field(default_factory=list)


def _specimen_targets(store, dataset: str):
    """(specimen units, level1, level2, level3) with the levels as unions over each specimen's scans."""
    from store.featureset import load_units
    from store.sql import connect

    units = load_units(store, dataset, "specimens")
    con = connect(store)
    try:
        columns = {r[0] for r in con.execute("SELECT column_name FROM (DESCRIBE scans)").fetchall()}
        missing = [c for c in ("level1", "level2", "level3") if c not in columns]
        if missing:
            raise EvaluationError(
                f"hierarchical needs scans columns level1 (normal|abnormal), level2 and level3 (lists); dataset "
                f"{dataset!r} lacks {', '.join(missing)}. "
                "Ingest a dataset with hierarchical labels (e.g. the impc demo)."
            )
        result = con.execute("""
            SELECT subject, time_index,
                   max(CASE WHEN level1 = 'abnormal' THEN 1 ELSE 0 END) AS abnormal,
                   list_sort(list_distinct(flatten(list(coalesce(level2, []))))) AS level2,
                   list_sort(list_distinct(flatten(list(coalesce(level3, []))))) AS level3
            FROM scans WHERE dataset = ? GROUP BY subject, time_index""", [dataset])
        rows = {(r[0], r[1]): r[2:] for r in result.fetchall()}
    finally:
        con.close()
    keys = list(zip(units.column("subject").to_pylist(), units.column("time_index").to_pylist(), strict=True))
    return (units, ["abnormal" if rows[k][0] else "normal" for k in keys], [rows[k][1] for k in keys],
            [rows[k][2] for k in keys])


def _table_info(store, table: str):
    from store.featureset import feature_tables

    tables = feature_tables(store)
    info = tables.get(table)
    if info is None:
        from features.errors import TableNotFoundError

        raise TableNotFoundError(
            f"Feature table {table!r} does not exist in {store.root} "
            f"(feature tables: {', '.join(sorted(tables)) or 'none'}). Extract it first, e.g. 'python cli.py "
            "extract --extractor efficientnet --input multiview --dataset impc' (add --weights random offline)."
        )
    if info.key not in ("scan_id", "specimen_id"):
        raise EvaluationError(
            f"Feature table {table!r} is keyed by {info.key}; hierarchical needs scan_id or specimen_id rows."
        )
    return info, tables


def _scan_table_features(store, dataset: str, table: str, info, units) -> tuple[np.ndarray, np.ndarray]:
    """A per-scan table as specimen features: the mean embedding of each view the table has rows of, views
    side by side (a view a specimen lacks is zeros). Returns (X, present)."""
    import pyarrow as pa

    from store.featureset import load_matrix
    from store.sql import connect

    con = connect(store)
    try:
        scans = con.execute(
            "SELECT scan_id, pixel_sha256, subject, time_index, view FROM scans WHERE dataset = ?", [dataset]
        ).fetchall()
    finally:
        con.close()
    wanted = pa.table({"k": [r[0] for r in scans], "h": [r[1] for r in scans]})
    keys, matrix, _ = load_matrix(store, table, "scan_id", list(info.columns), wanted)
    position = {k: i for i, k in enumerate(keys)}
    views = sorted({r[4] or "" for r in scans if r[0] in position})
    unit_keys = zip(units.column("subject").to_pylist(), units.column("time_index").to_pylist(), strict=True)
    specimen = {(s, t): i for i, (s, t) in enumerate(unit_keys)}
    sums = np.zeros((units.num_rows, max(1, len(views)), matrix.shape[1]), np.float64)
    counts = np.zeros((units.num_rows, max(1, len(views))))
    for scan_id, _, subject, time_index, view in scans:
        if scan_id in position:
            i, v = specimen[(subject, time_index)], views.index(view or "")
            sums[i, v] += matrix[position[scan_id]]
            counts[i, v] += 1
    means = sums / np.maximum(counts, 1)[:, :, None]
    return means.reshape(units.num_rows, -1).astype(np.float32), counts.sum(axis=1) > 0


def _specimen_features(store, dataset: str, table: str, units) -> tuple[np.ndarray, np.ndarray]:
    """(X, present): a specimen-keyed table as stored; a per-scan table through ``_scan_table_features``."""
    from features.sets import parse_feature_set
    from store.featureset import load_feature_set

    info, tables = _table_info(store, table)
    if info.key == "specimen_id":
        loaded = load_feature_set(store, parse_feature_set(table), units, "specimens", tables=tables)
        block = loaded.blocks[0]
        return block.matrix[block.index].astype(np.float32), loaded.present
    return _scan_table_features(store, dataset, table, info, units)


def _specimens(store, dataset: str, features: str) -> _Specimens:
    units, level1, level2, level3 = _specimen_targets(store, dataset)
    Y, names = hierarchical_targets(level1, level2, level3)
    X, present = _specimen_features(store, dataset, features, units)
    notes = [] if present.all() else [
        f"note: {int((~present).sum())} of {len(present)} specimens have no row in {features!r} and are left out."]
    keep = np.flatnonzero(present)
    levels = (1, sum(1 for n in names if n[0] == "Level_2"), sum(1 for n in names if n[0] == "Level_3"))
    return _Specimens(X[keep], Y[keep], names, np.asarray(units.column("key").to_pylist(), dtype=object)[keep],
                      np.asarray(units.column("subject").to_pylist(), dtype=object)[keep], levels, notes)


# --- one table ------------------------------------------------------------------------------------
@dataclass
class HierarchicalReport:
    """What ``fit_hierarchical`` did: the run, the class names and per-seed ROC AUCs ``(seeds, classes)``
    on the held-out specimens (``aucs``) and on the training specimens (``train_aucs``)."""

    run_id: str
    names: list[tuple[str, str]]
    aucs: np.ndarray
    title: str
    notes: list[str] = field(default_factory=list)
    train_aucs: np.ndarray | None = None
    features: str = ""

    def seeds_used(self) -> np.ndarray:
        """Per class, the number of seeds whose held-out AUC is defined."""
        return np.isfinite(self.aucs).sum(axis=0)

    def summary_lines(self) -> list[str]:
        """The notes, the Table-4-style table (mean ± std over seeds) and the notes on seeds left out."""
        lines = [*self.notes, *format_level_table(self.names, self.aucs, title=self.title).splitlines()]
        lines += _missing_seed_notes(self.names, self.aucs)
        if self.train_aucs is not None:
            means = [f"{level} {_level_means(self.train_aucs, cols).mean():.3f}"
                     for level in LEVELS if (cols := [j for j, n in enumerate(self.names) if n[0] == level])
                     and len(_level_means(self.train_aucs, cols))]
            lines.append("training specimens (split 'train' in metrics), mean AUC over classes: " + ", ".join(means))
        return lines


def _class_aucs(model, truth: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Per-class ROC AUC (NaN where undefined); levels >= 2 among the level-1 positives when conditional."""
    from sklearn.metrics import roc_auc_score

    aucs = np.full(truth.shape[1], np.nan)
    for j in range(truth.shape[1]):
        rows = np.ones(len(truth), bool) if (j == 0 or not model.conditional) else truth[:, 0] == 1
        column = truth[rows, j]
        if 0 < column.sum() < len(column):
            aucs[j] = roc_auc_score(column, proba[rows, j])
    return aucs


def _record_aucs(run, names, aucs: np.ndarray, *, seed: int, split: str) -> None:
    for j, (level, cls) in enumerate(names):
        if np.isfinite(aucs[j]):
            run.add_metric(metric="auc", value=float(aucs[j]), seed=seed, split=split, cls=f"{level}:{cls}")
    for level in LEVELS:
        values = aucs[[j for j, n in enumerate(names) if n[0] == level]]
        values = values[np.isfinite(values)]
        if len(values):
            run.add_metric(metric="auc_mean", value=float(values.mean()), seed=seed, split=split, cls=level)


def _unseen_pool(store, data: _Specimens, features: str) -> tuple[np.ndarray, str]:
    """Rows whose subjects no network behind ``features`` trained on (all rows for a pretrained CNN), and a
    note when that is fewer than all (``classifiers.leakage``: never judge on subjects a network saw)."""
    from classifiers.leakage import network_sources

    seen = frozenset().union(*(source.seen for source in network_sources(store, [features])))
    pool = ~np.isin(data.subjects.astype(str), [str(s) for s in seen])
    if pool.all():
        return pool, ""
    if not pool.any():
        raise EvaluationError(
            f"Every subject of the dataset was seen by the network behind {features!r}: none can be held out for "
            "testing. Train the network with held-out subjects (train cae --dataset ... keeps 20 % by default)."
        )
    return pool, (f"note: the network behind {features!r} trained on {len(set(data.subjects[~pool]))} subjects; "
                  f"held-out subjects are drawn only from the {len(set(data.subjects[pool]))} it never saw.")


def _test_subjects(data: _Specimens, pool: np.ndarray, seed: int, test_fraction: float) -> frozenset:
    """Seed ``seed``'s held-out subjects: ``test_fraction`` of all subjects, stratified by level 1, drawn from
    the ``pool`` rows (all of the pool when it is smaller)."""
    from features.splits import held_out_subjects

    wanted = test_fraction * len(set(data.subjects))
    available = len(set(data.subjects[pool]))
    if wanted >= available:
        return frozenset(data.subjects[pool])
    return held_out_subjects(data.subjects[pool], data.Y[pool, 0], rule="fraction", seed=seed,
                             test_fraction=wanted / available)


def _judge_seed(data: _Specimens, seed: int, *, test_fraction: float, model_params: dict, run, pool=None):
    """Fit on all but seed ``seed``'s held-out subjects (drawn from the ``pool`` rows); record per-class AUCs
    (test and train) and the held-out predictions in ``run``. Returns (model, test AUCs, train AUCs)."""
    from features.splits import holdout_split

    pool = np.ones(len(data.Y), bool) if pool is None else pool
    split = holdout_split(data.subjects, _test_subjects(data, pool, seed, test_fraction))
    model = create_model("hierarchical", levels=data.levels, random_state=seed, **model_params)
    model.fit(data.X[split.train], data.Y[split.train], groups=data.subjects[split.train])
    proba, truth = model.predict_proba(data.X[split.test]), data.Y[split.test]
    aucs = _class_aucs(model, truth, proba)
    train_aucs = _class_aucs(model, data.Y[split.train], model.predict_proba(data.X[split.train]))
    _record_aucs(run, data.names, aucs, seed=seed, split="test")
    _record_aucs(run, data.names, train_aucs, seed=seed, split="train")
    labels = [f"{a}:{b}" for a, b in data.names]
    predicted = model.predict(data.X[split.test])
    run.add_predictions(
        keys=data.keys[split.test], subjects=data.subjects[split.test], seed=seed,
        y_true=["|".join(n for n, t in zip(labels, row, strict=True) if t) for row in truth],
        y_pred=["|".join(n for n, t in zip(labels, row, strict=True) if t) for row in predicted],
        proba=[dict(zip(labels, map(float, row), strict=True)) for row in proba],
    )
    return model, aucs, train_aucs


def fit_hierarchical(store, *, dataset: str, features: str, seeds: int = 5, test_fraction: float = 0.3,
                     views: str | None = None, **model_params) -> HierarchicalReport:
    """The IMPC hierarchical protocol on feature table ``features`` of ``dataset``, over ``seeds`` seeds.

    Per seed: held-out subjects (``features.splits.held_out_subjects``, rule ``fraction``, stratified
    by level 1; for features of a network trained here, drawn only from subjects it never saw) — the
    model (``hierarchical``, ``model_params``) is fitted on the others; per-class ROC
    AUC on the held-out specimens (levels 2-3 among the abnormal ones when ``conditional``) and on the
    training specimens. Writes one run (``runs``; ``metrics`` with split 'test' and 'train';
    held-out ``predictions``) and returns a ``HierarchicalReport`` (``aucs`` of shape (seeds, classes))
    whose ``summary_lines()`` are the Table-4-style summary. ``views`` only labels the run's config.
    """
    from store.runs import RunRecorder
    from store.tables import table_kv_metadata

    check_param("fit_hierarchical", "seeds", seeds, kind="an int in [1, inf)", ok=is_int(seeds, 1))
    check_param("fit_hierarchical", "test_fraction", test_fraction, kind="a float in (0, 1)",
                ok=isinstance(test_fraction, (int, float)) and 0 < test_fraction < 1)
    data = _specimens(store, dataset, features)
    pool, note = _unseen_pool(store, data, features)
    if note:
        data.notes.append(note)
    run = RunRecorder(dataset=dataset, model="hierarchical", target="level1+level2+level3", unit="specimens")
    fits = [_judge_seed(data, seed, test_fraction=test_fraction, model_params=model_params, run=run, pool=pool)
            for seed in range(seeds)]
    aucs, train_aucs = np.array([f[1] for f in fits]), np.array([f[2] for f in fits])
    model = fits[-1][0]
    columns = [f"{a}:{b}" for a, b in data.names]
    config = {"command": "fit hierarchical", "features": features, "test_fraction": test_fraction,
              "levels": data.levels, "columns": columns, "model_params": model_params,
              "conditional_levels": bool(model.conditional), "views": views}
    run.write(store, model, config=config, seeds=list(range(seeds)), n_units=len(data.Y),
              n_subjects=len(set(data.subjects)), classes=columns, members=["hierarchical"],
              feature_hashes={features: table_kv_metadata(store, features).get("chronofeat.params_hash")},
              model_meta={"kind": "hierarchical", "features": features})
    scope = "levels 2-3 among held-out abnormal specimens" if model.conditional else "all held-out specimens"
    title = (f"run {run.run_id}: hierarchical on {features!r}, dataset {dataset!r} — per-class ROC AUC on held-out "
             f"subjects (mean ± std over {seeds} seeds; {scope})")
    return HierarchicalReport(run.run_id, data.names, aucs, title, data.notes, train_aucs, features)


def default_features(store, dataset: str) -> tuple[str, str]:
    """The feature table ``fit hierarchical`` uses without ``--features``, and a note saying so.

    The dataset's specimen tables of the multiview composite first, then any specimen embedding table,
    then any per-scan embedding table (``classifiers.profiles`` order of backbones), by logical feature
    name (``store.feature_catalog``: never a random-weights table). ``ParameterError`` naming the commands
    that make one when the dataset has none.
    """
    from classifiers.profiles import choose_default
    from store.feature_catalog import FeatureCatalog

    catalog = FeatureCatalog(store, dataset)
    for candidates, unit in ((("*multiview*", "{embedding}"), "specimens"), (("{embedding}",), "scans")):
        found, _, resolutions = choose_default(candidates, catalog, unit)
        if found is not None:
            name = found.tables[0]
            return name, (f"note: no --features given: using {name!r} (the {unit[:-1]} embedding table of "
                          f"{dataset!r}: {resolutions[0][0].sentence()}; pass --features TABLE to choose another).")
    raise ParameterError(
        f"fit hierarchical needs --features TABLE, and dataset {dataset!r} has no embedding table to default to "
        "(random-weights tables are used only when named with --features). "
        f"Make one, e.g. 'python cli.py extract --extractor efficientnet --input multiview --dataset {dataset}' "
        "(weights imported with 'cli.py weights import'), or 'python cli.py train cae --input multiview --dataset "
        f"{dataset}' then 'extract --extractor cae --input multiview --artifact ID'; or run the whole "
        f"comparison: 'fit hierarchical --dataset {dataset} --compare-views cae'."
    )


# --- DV vs LAT vs multiview --------------------------------------------------------------------------
def parse_backbone(spec: str) -> tuple[str, str]:
    """``--compare-views SPEC`` -> (backbone, weights): ``cae`` -> ('cae', ''); ``efficientnet`` ->
    ('efficientnet', 'hub'); ``efficientnet:random`` / ``convnext:random`` / ``TIMM_NAME[:random]``."""
    if not isinstance(spec, str) or not spec.strip():
        raise ParameterError(f"The 'compare_views' parameter must be 'cae' or a CNN such as 'efficientnet' or "
                             f"'efficientnet:random'. Got {spec!r} instead.")
    backbone, _, weights = spec.strip().partition(":")
    if backbone == "cae":
        if weights:
            raise ParameterError(f"--compare-views cae takes no ':{weights}': the autoencoder is trained here.")
        return "cae", ""
    if weights not in ("", "hub", "random"):
        raise ParameterError(f"--compare-views {spec}: the weights after ':' must be 'hub' or 'random'.")
    return backbone, weights or "hub"


def _cae_table(store, dataset: str, views: tuple[str, ...], *, device: str, progress: bool, cae_params: dict) -> str:
    from extractors.cae import CAEFeatures, train_cae
    from extractors.runner import run_extraction

    net = train_cae(store, dataset, input="multiview", views=",".join(views), device=device, progress=progress,
                    **cae_params)
    extractor = CAEFeatures(artifact=net.artifact.short, input="multiview", device=device)
    return run_extraction(extractor, store, dataset=dataset, progress=progress).table


def view_feature_tables(store, dataset: str, *, backbone: str = "cae", weights: str = "hub", device: str = "auto",
                        progress: bool = True, cae_params: dict | None = None) -> dict[str, str]:
    """One specimen feature table per input of ``VIEW_INPUTS`` (label -> table), made when missing.

    ``backbone`` ``cae``: an autoencoder trained on each input (``train_cae(input='multiview', views=...)``,
    ``CAE_TEST_FRACTION`` of the subjects kept unseen unless ``cae_params`` says otherwise; a finished
    training is loaded from its checkpoint) and its encoder features. Otherwise a CNN
    (``extract --extractor BACKBONE --input multiview --views ...`` with ``weights`` hub | random); rows
    already stored are not recomputed.
    """
    from extractors import build_from_options
    from extractors.runner import run_extraction

    out = {}
    for label, views in VIEW_INPUTS:
        if backbone == "cae":
            out[label] = _cae_table(store, dataset, views, device=device, progress=progress,
                                    cae_params={"test_fraction": CAE_TEST_FRACTION, **(cae_params or {})})
            continue
        options = {"input": "multiview", "views": ",".join(views), "weights": weights, "device": device}
        alias = backbone if backbone in ("inception", "efficientnet", "convnext") else "cnn"
        if alias == "cnn":
            options["model"] = backbone
        out[label] = run_extraction(build_from_options(alias, options), store, dataset=dataset,
                                    progress=progress).table
    return out


@dataclass
class ViewComparison:
    """DV-only vs LAT-only vs multiview: one ``HierarchicalReport`` per input (same seeds and splits).

    ``rows()``: one dict per (level, input, class) with ``mean``, ``std``, ``seeds`` (seeds with a defined
    AUC) and ``aucs`` (per seed, NaN = undefined); class ``mean`` is the per-seed mean over the level's
    classes. ``summary_lines()``: three rows per level, one per input.
    """

    dataset: str
    backbone: str
    reports: dict  # label -> HierarchicalReport
    seconds: float
    notes: list[str] = field(default_factory=list)

    def rows(self) -> list[dict]:
        """Every figure of the comparison as plain values (see the class docstring)."""
        out = []
        for level in LEVELS:
            for label, report in self.reports.items():
                cols = [j for j, n in enumerate(report.names) if n[0] == level]
                for j in cols:
                    values = report.aucs[:, j]
                    ok = values[np.isfinite(values)]
                    out.append({"level": level, "input": label, "class": report.names[j][1], "aucs": values.tolist(),
                                "mean": float(ok.mean()) if len(ok) else None,
                                "std": float(ok.std()) if len(ok) else None, "seeds": int(len(ok)),
                                "run_id": report.run_id, "table": report.features})
                per_seed = _level_means(report.aucs, cols)
                out.append({"level": level, "input": label, "class": "mean", "aucs": per_seed.tolist(),
                            "mean": float(per_seed.mean()) if len(per_seed) else None,
                            "std": float(per_seed.std()) if len(per_seed) else None, "seeds": int(len(per_seed)),
                            "run_id": report.run_id, "table": report.features})
        return out

    def summary_lines(self) -> list[str]:
        """The comparison table: per level, a header of its classes and one row per input; cells are
        ``mean±std [seeds]``; then the runs, the tables and the notes."""
        first = next(iter(self.reports.values()))
        seeds = first.aucs.shape[0]
        lines = [*self.notes,
                 f"IMPC views on {self.dataset!r} ({self.backbone}): per-class ROC AUC on held-out subjects, "
                 f"mean±std over {seeds} seeds [seeds with a defined AUC]; levels 2-3 among abnormal specimens"]
        rows = self.rows()
        for level in LEVELS:
            classes = [n[1] for n in first.names if n[0] == level]
            classes += ["mean"] if len(classes) > 1 else []
            lines.append(f"{level:<10} " + " ".join(f"{c[:15]:>15}" for c in classes))
            for label in self.reports:
                cells = {r["class"]: r for r in rows if r["level"] == level and r["input"] == label}
                lines.append(f"{label:<10} " + " ".join(_cell(cells.get(c)) for c in classes))
        for label, report in self.reports.items():
            lines.append(f"{label}: table {report.features!r}, run {report.run_id}")
            lines += [f"{label} {note}" for note in report.notes]
            lines += _missing_seed_notes(report.names, report.aucs, label=f"{label} ")
        lines.append(f"wall time {self.seconds:.1f} s")
        return lines


def _cell(row: dict | None) -> str:
    if row is None or row["mean"] is None:
        return f"{'n/a [0]':>15}"
    return f"{row['mean']:.3f}±{row['std']:.3f} [{row['seeds']}]".rjust(15)


def compare_views(store, *, dataset: str = "impc", backbone: str = "cae", weights: str = "hub", seeds: int = 5,
                  test_fraction: float = 0.3, device: str = "auto", progress: bool = True,
                  cae_params: dict | None = None, tables: dict | None = None, **model_params) -> ViewComparison:
    """The paper's comparison on ``dataset``: ``fit_hierarchical`` over ``seeds`` seeds on a DV-only, a
    LAT-only and a multiview feature table of the same ``backbone`` (computed when missing, see
    ``view_feature_tables``; ``tables`` label -> table gives them instead). The three inputs share
    seeds, held-out subjects and model settings. Returns a ``ViewComparison`` (three runs written).
    """
    started = time.perf_counter()
    notes = []
    if tables is None:
        if backbone != "cae" and weights == "random":
            notes.append(f"note: {backbone} with RANDOM weights (untrained): a smoke test of the protocol, not the "
                         "paper's figures; import pretrained weights ('weights import') for those.")
        if backbone == "cae":
            notes.append("note: CAE features — an autoencoder trained here on each input (DV, LAT, composite), "
                         "its encoder's latent map as features (paper section 4.2).")
        tables = view_feature_tables(store, dataset, backbone=backbone, weights=weights, device=device,
                                     progress=progress, cae_params=cae_params)
    missing = [label for label, _ in VIEW_INPUTS if label not in tables]
    if missing:
        raise ParameterError(f"compare_views: tables must name a table for {', '.join(missing)}.")
    params = {"device": device, **model_params} if device != "auto" else dict(model_params)
    reports = {label: fit_hierarchical(store, dataset=dataset, features=tables[label], seeds=seeds,
                                       test_fraction=test_fraction, views="+".join(views), **params)
               for label, views in VIEW_INPUTS}
    name = backbone if backbone == "cae" else f"{backbone}, {weights} weights"
    return ViewComparison(dataset, name, reports, time.perf_counter() - started, notes)
