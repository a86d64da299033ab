"""``fit`` on feature tables: judge a planned model or ensemble honestly and store the run.

``fit_features`` is the feature-model path of ``classifiers.fitting.fit`` (``python cli.py fit MODEL``):

1. ``classifiers.planning.plan_fit`` decides dataset, target, members and feature sets, unit, folds,
   seeds and the test rule;
2. ``run_plan`` — for each seed: the held-out test subjects (``store.subjects.dataset_subject_split``,
   the rule the BoVW vocabulary uses too) or a given split, subject-grouped stratified CV on the
   training side (or, with ``--split given`` and a val side, that one validation split), hyperparameters
   searched inside training rows only, a refit on all training rows (train+val with a given split),
   predictions and metrics for every member and for the ensemble; then everything is written through
   ``store.runs.RunRecorder`` (model artifact, ``metrics``, ``predictions``, ``runs``) only once all of it
   succeeded.

``metrics.split`` says which rows were scored: ``cv`` (CV folds), ``val`` (the given val side), ``test``
(held-out subjects, final model), ``train`` (the final model on the rows it learnt from: the training
error). ``fold`` >= 0 is one fold; -1 the pooled folds (cv / val), the test set or the training rows.
The CV figure everything prints (``fit``, ``report``, ``runs``) is the mean of the per-fold values.
Besides ``classifiers.metrics``' rows: ``n_subjects`` (distinct subjects scored), ``agreement`` (share of
units where a member predicts what the ensemble predicts, fold -1 rows) and ``features_kept`` /
``features_in`` (split ``train``: columns the final model's low-variance filter kept, of those given).

Nothing here prints: the ``FitResult`` says what happened in ``summary_lines()``.
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from classifiers._registry import create_model, is_ensemble
from classifiers.design import Design, augmented_training, label_text, load_design
from classifiers.ensemble import align_proba
from classifiers.metrics import classification_metrics, multilabel_metrics
from classifiers.planning import FitPlan, build_estimator, describe_plan, plan_fit, resolve_dataset
from classifiers.profiles import TargetSpec
from classifiers.request import FitRequest
from classifiers.search import default_search_metric, describe_choices, tune
from classifiers.summary import format_summary, summarise
from features.errors import EvaluationError
from features.splits import Split, check_disjoint, cv_folds, given_split, holdout_split
from store.layout import Store
from store.runs import RunRecorder

__all__ = [
    "FittedModel",
    "FitResult",
    "SeedSplit",
    "fit_features",
    "fit_model",
    "run_plan",
]


@dataclass
class FittedModel:
    """The saved model of a run: the fitted estimator and how to rebuild its X."""

    estimator: object
    model: str
    members: list[tuple[str, str, str]]  # (member name, model, feature set)
    feature_sets: list[str]  # distinct, in X column order
    unit: str
    reference_mode: str | None
    dataset: str
    target: TargetSpec
    classes: list[str]
    multilabel: bool
    table_hashes: dict[str, str | None]
    training_subjects: tuple[str, ...]

    def probabilities(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """Probabilities (n, classes) of every member and of the model itself, in ``classes`` order."""
        names = [m[0] for m in self.members] if is_ensemble(self.model) else []
        return _probabilities(self.estimator, self.model, names, X, self.classes, self.multilabel)


@dataclass
class FitResult:
    """What a feature fit did: run ids, the plan, the member-vs-ensemble summary and notes.

    ``plan_lines`` (the synthetic-data notice and ``describe_plan``) and ``data_lines`` (the units read,
    notes from loading and fitting) come before the summary table in ``summary_lines()``.
    """

    run_ids: list[str]
    dataset: str
    target: str
    model: str
    summary: list[dict]
    notes: list[str]
    model_artifact: str
    plan: FitPlan | None = None
    plan_lines: list[str] = field(default_factory=list)
    data_lines: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)  # the run's ``runs.config``

    @property
    def run_id(self) -> str:
        """The (first) run id."""
        return self.run_ids[0]

    def summary_lines(self) -> list[str]:
        """What ``cli.py fit`` prints: the plan, the data, the member-vs-ensemble table, where the run is."""
        title = f"run {self.run_id}: {self.model} on {self.dataset}, target {self.target}"
        options = {"metrics": self.plan.profile.summary_metrics} if self.plan is not None else {}
        table = format_summary(self.summary, title=title, context=self.config, **options)
        search = describe_choices(self.config.get("search", "none"), self.config.get("search_metric") or "f1_macro",
                                  self.config.get("search_choices", {}))
        saved = (f"saved: run {self.run_id}, model artifact {self.model_artifact[:12]} "
                 f"(report: python cli.py report {self.run_id})")
        return [*self.plan_lines, *self.data_lines, *search, "", *table.split("\n"), saved]


# --- fitting -------------------------------------------------------------------------------------
def _build(plan: FitPlan, design: Design, seed: int):
    if plan.ensemble:
        members = [(m.name, build_estimator(m.model, m.params, seed), design.columns[str(m.feature_set)])
                   for m in plan.members]
        return create_model(plan.model, members=members, **plan.model_params)
    member = plan.members[0]
    return build_estimator(plan.model, {**member.params, **plan.model_params}, seed)


def _probabilities(estimator, model: str, member_names: list[str], X: np.ndarray, classes: list[str],
                   multilabel: bool) -> dict[str, np.ndarray]:
    want = np.array(classes, dtype=object)
    have = np.asarray(estimator.classes_, dtype=object)

    def aligned(proba):
        return proba if multilabel else align_proba(proba, have, want)

    out = {name: aligned(estimator.member_proba(name, X)) for name in member_names}
    out[model] = aligned(estimator.predict_proba(X))
    return out


@dataclass
class _Evaluation:
    """Probabilities of one member on one set of design rows (a CV fold, the pooled folds, the test set)."""

    member: str
    split: str  # cv | val | test | train
    seed: int
    fold: int  # -1: pooled folds (cv / val), the held-out test set, the training rows (train)
    rows: np.ndarray  # positions in the design
    proba: np.ndarray


@dataclass
class _FoldFit:
    """One fit on training rows: the fitted estimator, probabilities by member on the evaluated rows (and,
    when asked, on the training rows themselves), the search's choices."""

    estimator: object
    probas: dict[str, np.ndarray]
    chosen: dict
    train_probas: dict[str, np.ndarray] = field(default_factory=dict)


def _training_rows(plan: FitPlan, design: Design, train: np.ndarray, seed: int, X_swapped: np.ndarray | None,
                   notes: set) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X, y, groups) to learn from: rows ``train``, plus augmented copies with ``plan.augment``."""
    if not plan.augment:
        return design.X[train], design.y[train], design.subjects[train]
    X, y, groups, aug_notes = augmented_training(design, train, swap_labels=plan.profile.swap_labels,
                                                 noise=plan.noise, seed=seed, X_swapped=X_swapped)
    notes.update(aug_notes)
    return X, y, groups


def _fit_and_predict(plan: FitPlan, design: Design, train: np.ndarray, evaluate: np.ndarray, seed: int,
                     X_swapped: np.ndarray | None, notes: set, *, score_train: bool = False) -> _FoldFit:
    X, y, groups = _training_rows(plan, design, train, seed, X_swapped, notes)
    estimator, chosen, search_notes = tune(_build(plan, design, seed), X, y, groups, level=plan.search, seed=seed,
                                           metric=plan.search_metric)
    notes.update(search_notes)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        estimator.fit(X, y, groups)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        notes.add("some fits stopped at their iteration limit before converging (scikit-learn ConvergenceWarning); "
                  "the scores stand, but stronger regularisation (--search quick) may do better")
    names = [m.name for m in plan.members] if plan.ensemble else []
    probas = _probabilities(estimator, plan.model, names, design.X[evaluate], design.classes, design.multilabel) \
        if len(evaluate) else {}
    train_probas = _probabilities(estimator, plan.model, names, design.X[train], design.classes,
                                  design.multilabel) if score_train else {}
    return _FoldFit(estimator, probas, chosen, train_probas)


# --- splits --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeedSplit:
    """The design rows of one seed: CV folds on the training side (or the one given train/val split), the
    held-out test rows, and the rows the final model is trained on (the training side, plus a given
    validation side). ``dev`` names the folds' split: 'cv', or 'val' for a given validation side."""

    folds: list[Split]
    test: np.ndarray
    final: np.ndarray
    dev: str = "cv"


def _cv_on(train: np.ndarray, strata: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> list[Split]:
    """Subject-grouped stratified folds of rows ``train``, as design positions."""
    return [Split(train[f.train], train[f.val]) for f in cv_folds(strata[train], groups[train], folds=folds, seed=seed)]


def _given_seed_split(plan: FitPlan, design: Design, strata: np.ndarray, seed: int) -> SeedSplit:
    if design.split_values is None:
        raise EvaluationError(
            f"--split given needs a 'split' column (train / val / test) on the {design.unit} of {design.dataset!r}; "
            "there is none. Ingest a manifest with a split column, or use --split auto."
        )
    sides = given_split(design.split_values, design.subjects)
    train, val, test = sides["train"], sides["val"], sides["test"]
    if len(val):
        return SeedSplit([Split(train, val)], test, np.sort(np.concatenate([train, val])), dev="val")
    return SeedSplit(_cv_on(train, strata, design.subjects, plan.folds, seed), test, np.sort(train))


def _test_subjects(store: Store, plan: FitPlan, design: Design, seed: int) -> frozenset:
    if plan.test_rule == "none":
        return frozenset()
    if plan.test_rule == "list":
        listed = frozenset(plan.test_subject_list or ())
        if not listed & set(design.subjects.tolist()):
            raise EvaluationError(
                f"None of the {len(listed)} subjects listed in --test-subjects has {design.unit} with features in "
                f"{design.dataset!r}. List subject keys as in scans.subject (pseudonymous), one per line."
            )
        return listed
    from store.subjects import dataset_subject_split

    return frozenset(dataset_subject_split(store, design.dataset, test_fraction=plan.test_fraction, seed=seed).test)


def _seed_split(store: Store, plan: FitPlan, design: Design, seed: int) -> SeedSplit:
    """The ``SeedSplit`` of one seed (given by the data with ``--split given``, else by the test rule)."""
    strata = np.array([label_text(v, design.classes if design.multilabel else None) for v in design.y], dtype=object)
    if plan.split == "given":
        return _given_seed_split(plan, design, strata, seed)
    holdout = holdout_split(design.subjects, _test_subjects(store, plan, design, seed))
    if len(holdout.train) == 0:
        raise EvaluationError("Every subject was held out for testing; hold out fewer (--test-subjects).")
    return SeedSplit(_cv_on(holdout.train, strata, design.subjects, plan.folds, seed), holdout.test, holdout.train)


def _check_splits(design: Design, splits: dict[int, SeedSplit]) -> None:
    """No subject on two sides of any split, and every class on the training side of every seed."""
    for seed, split in splits.items():
        check_disjoint(design.subjects, split.final, split.test, what=f"test (seed {seed})")
        for fold in split.folds:
            check_disjoint(design.subjects, fold.train, fold.val, what=f"cross-validation (seed {seed})")
        if design.multilabel:
            continue
        missing = set(design.classes) - set(design.y[split.final].tolist())
        if missing:
            raise EvaluationError(
                f"Class(es) {', '.join(sorted(missing))} have no training subject for seed {seed} (all held out). "
                "Hold out fewer subjects (--test-subjects) or add data."
            )


# --- the run -------------------------------------------------------------------------------------
@dataclass
class _Fits:
    """Everything the fits of a run produced: evaluations, notes, the first seed's final model, timings."""

    evaluations: list[_Evaluation] = field(default_factory=list)
    notes: set = field(default_factory=set)
    estimator: object = None
    final_rows: np.ndarray | None = None
    chosen: dict = field(default_factory=dict)  # seed -> the search's choices for the final model
    kept: dict = field(default_factory=dict)  # seed -> {member: (features kept, features in)} of the final model
    cv_s: float = 0.0
    final_s: float = 0.0


def _fit_seeds(plan: FitPlan, design: Design, splits: dict[int, SeedSplit], *, progress: bool) -> _Fits:
    from tqdm.auto import tqdm

    fits = _Fits()
    X_swapped = design.swapped_X() if plan.augment and design.can_swap else None
    steps = sum(len(s.folds) + 1 for s in splits.values())
    with tqdm(total=steps, desc=f"fit {plan.model}", unit="fit", disable=not progress, file=sys.stderr,
              dynamic_ncols=True) as bar:
        for seed, split in splits.items():
            t0 = time.perf_counter()
            for k, fold in enumerate(split.folds):
                fit = _fit_and_predict(plan, design, fold.train, fold.val, seed, X_swapped, fits.notes)
                fits.evaluations += [_Evaluation(name, split.dev, seed, k, fold.val, p)
                                     for name, p in fit.probas.items()]
                bar.update(1)
            t1 = time.perf_counter()
            fit = _fit_and_predict(plan, design, split.final, split.test, seed, X_swapped, fits.notes, score_train=True)
            fits.evaluations += [_Evaluation(name, "test", seed, -1, split.test, p) for name, p in fit.probas.items()]
            fits.evaluations += [_Evaluation(name, "train", seed, -1, split.final, p)
                                 for name, p in fit.train_probas.items()]
            bar.update(1)
            fits.cv_s += t1 - t0
            fits.final_s += time.perf_counter() - t1
            fits.chosen[str(seed)] = fit.chosen
            fits.kept[str(seed)] = _features_kept(fit.estimator, plan)
            if fits.estimator is None:
                fits.estimator, fits.final_rows = fit.estimator, split.final
    return fits


def _features_kept(estimator, plan: FitPlan) -> dict[str, list[int]]:
    """{member (or model): [columns its low-variance filter kept, columns in]} of a fitted final model."""
    if plan.ensemble:
        kept = {m.name: estimator.member_features_kept(m.name) for m in plan.members}
    else:
        method = getattr(estimator, "features_kept", None)
        kept = {plan.model: method() if method is not None else None}
    return {name: list(value) for name, value in kept.items() if value is not None}


def _pooled(evaluations: list[_Evaluation], seeds: list[int], members: list[str]) -> list[_Evaluation]:
    """Per seed and member, the CV folds' (or the given val side's) predictions pooled into one evaluation
    (fold -1): the rows the per-class AUCs and the report's plots read."""
    pooled = []
    for seed in seeds:
        for member in members:
            for split in ("cv", "val"):
                parts = [e for e in evaluations if e.member == member and e.split == split and e.seed == seed]
                if parts:
                    pooled.append(_Evaluation(member, split, seed, -1, np.concatenate([e.rows for e in parts]),
                                              np.vstack([e.proba for e in parts])))
    return pooled


def _predicted_labels(proba: np.ndarray, design: Design) -> np.ndarray:
    """Predicted labels (n,) — or indicator rows joined as text for multi-label — of probabilities ``proba``."""
    if design.multilabel:
        return np.array([label_text(p >= 0.5, design.classes) for p in proba], dtype=object)
    return np.asarray(design.classes, dtype=object)[np.argmax(proba, axis=1)]


def _record_agreement(recorder: RunRecorder, evaluations: list[_Evaluation], design: Design, model: str) -> None:
    """Metric ``agreement`` of every member on every fold -1 evaluation: the share of units where the
    member predicts the class the ensemble (``model``) predicts."""
    ensemble = {(e.split, e.seed): e for e in evaluations if e.member == model and e.fold == -1}
    for e in evaluations:
        own = ensemble.get((e.split, e.seed))
        if e.member == model or e.fold != -1 or own is None or not len(e.rows):
            continue
        same = _predicted_labels(e.proba, design) == _predicted_labels(own.proba, design)
        recorder.add_metric(metric="agreement", value=float(np.mean(same)), seed=e.seed, split=e.split, fold=-1,
                            member=e.member)


def _record_metrics(recorder: RunRecorder, evaluation: _Evaluation, design: Design, n_boot: int) -> None:
    rows = evaluation.rows
    groups = design.subjects[rows]
    boot = n_boot if evaluation.fold < 0 and evaluation.split != "train" else 0
    if design.multilabel:
        values = multilabel_metrics(design.y[rows], evaluation.proba, design.classes, groups=groups, n_boot=boot,
                                    seed=evaluation.seed)
    else:
        classes = np.array(design.classes, dtype=object)
        predicted = classes[np.argmax(evaluation.proba, axis=1)]
        values = classification_metrics(design.y[rows], predicted, evaluation.proba, classes, groups=groups,
                                        n_boot=boot, seed=evaluation.seed)
    for v in values:
        recorder.add_metric(metric=v.metric, value=v.value, seed=evaluation.seed, split=evaluation.split,
                            fold=evaluation.fold, member=evaluation.member, cls=v.cls, ci_low=v.ci_low,
                            ci_high=v.ci_high)
    recorder.add_metric(metric="n_subjects", value=float(len(set(groups.tolist()))), seed=evaluation.seed,
                        split=evaluation.split, fold=evaluation.fold, member=evaluation.member)


def _record_predictions(recorder: RunRecorder, evaluation: _Evaluation, design: Design) -> None:
    rows = evaluation.rows
    labels = design.classes
    if design.multilabel:
        predicted = [label_text(p >= 0.5, labels) for p in evaluation.proba]
        truth = [label_text(v, labels) for v in design.y[rows]]
    else:
        predicted = [labels[i] for i in np.argmax(evaluation.proba, axis=1)]
        truth = [label_text(v) for v in design.y[rows]]
    recorder.add_predictions(keys=design.keys[rows], subjects=design.subjects[rows], y_true=truth, y_pred=predicted,
                             proba=evaluation.proba, classes=labels, seed=evaluation.seed, split=evaluation.split,
                             fold=evaluation.fold, member=evaluation.member)


def _run_config(plan: FitPlan, design: Design, fits: _Fits, splits: dict[int, SeedSplit]) -> dict:
    """The ``runs.config`` of a fit: every choice that made it."""
    return {
        "model": plan.model, "model_params": plan.model_params,
        "members": [{"name": m.name, "model": m.model, "features": str(m.feature_set), "params": m.params,
                     "source": m.source} for m in plan.members],
        "target": {"name": plan.target.name, "column": plan.target.column, "mapping": plan.target.mapping,
                   "where": [list(w) for w in plan.target.where], "positive": plan.target.positive},
        "unit": plan.unit, "reference_mode": plan.reference_mode, "folds": plan.folds, "seeds": plan.seeds,
        "split": plan.split, "test_rule": plan.test_rule, "test_fraction": plan.test_fraction,
        "test_list_source": plan.test_list_source,
        "search": plan.search, "search_choices": fits.chosen, "augment": plan.augment, "noise": plan.noise,
        "n_boot": plan.n_boot, "classes": design.classes, "multilabel": design.multilabel,
        "columns": {k: list(v) for k, v in design.columns.items()},
        "notes": plan.notes + design.notes + sorted(fits.notes),
        "feature_resolution": plan.resolutions,
        "test_subjects": {str(seed): len(set(design.subjects[s.test].tolist())) for seed, s in splits.items()},
        "dev": next(iter(splits.values())).dev if splits else "cv",
        "search_metric": plan.search_metric or default_search_metric(design.multilabel),
        "variance_threshold": plan.variance_threshold, "features_kept": fits.kept,
        "metric_notes": list(plan.profile.metric_notes), "train_metric": plan.profile.train_metric,
        "summary_metrics": list(plan.profile.summary_metrics),
        "ensemble": plan.ensemble,
    }


def _record_features_kept(recorder: RunRecorder, kept: dict) -> None:
    """Metrics ``features_kept`` and ``features_in`` (split train, fold -1) of every member's final model."""
    for seed, members in kept.items():
        for member, (n_kept, n_in) in members.items():
            recorder.add_metric(metric="features_kept", value=float(n_kept), seed=int(seed), split="train",
                                member=member)
            recorder.add_metric(metric="features_in", value=float(n_in), seed=int(seed), split="train", member=member)


def _kept_lines(plan: FitPlan, kept: dict) -> list[str]:
    """'low-variance filter kept ...' for the first seed's final model, when any column was dropped or asked."""
    first = next(iter(kept.values()), {})
    if not first or (plan.variance_threshold is None and all(k == n for k, n in first.values())):
        return []
    threshold = plan.variance_threshold or 0.0
    parts = ", ".join(f"{name} kept {k} of {n}" for name, (k, n) in first.items())
    return [f"low-variance filter (variance <= {threshold:g} dropped, fitted on the final model's training rows): "
            f"{parts} features"]


def _design_lines(plan: FitPlan, design: Design) -> list[str]:
    """What was read: units, subjects, classes, X's blocks, and the notes of loading."""
    n_subjects = len(set(design.subjects.tolist()))
    shape = ", ".join(f"{name} [{b - a}]" for name, (a, b) in design.columns.items())
    lines = [f"units: {len(design.rows)} {plan.unit} of {n_subjects} subjects; classes: {', '.join(design.classes)}; "
             f"X: {shape}"]
    lines += [f"NOTE: {note}" for note in design.notes]
    if plan.split == "auto" and design.split_values is not None:
        lines.append("NOTE: the data has a 'split' column; --split given would honour it")
    return lines


def run_plan(store: Store, plan: FitPlan, *, progress: bool = True) -> FitResult:
    """Fit and judge ``plan`` (see module docstring), write the run, return its ``FitResult``.

    Every split is computed and checked before any fitting, so a bad split fails fast and writes nothing.
    """
    started = time.perf_counter()
    design = load_design(
        store, plan.dataset, plan.unit, plan.feature_sets, plan.target, reference_mode=plan.reference_mode
    )
    timings = {"load": time.perf_counter() - started}
    splits = {seed: _seed_split(store, plan, design, seed) for seed in plan.seeds}
    _check_splits(design, splits)
    recorder = RunRecorder(dataset=plan.dataset, model=plan.model, target=plan.target.name, unit=plan.unit)
    fits = _fit_seeds(plan, design, splits, progress=progress)
    scored = fits.evaluations + _pooled(fits.evaluations, plan.seeds, plan.member_names)
    for evaluation in scored:
        if len(evaluation.rows):
            _record_metrics(recorder, evaluation, design, plan.n_boot)
    if plan.ensemble:
        _record_agreement(recorder, scored, design, plan.model)
    _record_features_kept(recorder, fits.kept)
    for evaluation in fits.evaluations:
        if evaluation.split != "train":  # predictions hold what was judged; training rows only as metrics
            _record_predictions(recorder, evaluation, design)
    fitted = FittedModel(
        estimator=fits.estimator,
        model=plan.model,
        members=[(m.name, m.model, str(m.feature_set)) for m in plan.members],
        feature_sets=[str(fs) for fs in plan.feature_sets],
        unit=plan.unit,
        reference_mode=plan.reference_mode,
        dataset=plan.dataset,
        target=plan.target,
        classes=list(design.classes),
        multilabel=design.multilabel,
        table_hashes=design.table_hashes,
        training_subjects=tuple(sorted(set(design.subjects[fits.final_rows].tolist()))),
    )
    timings.update(cv=fits.cv_s, final=fits.final_s, total=time.perf_counter() - started)
    config = _run_config(plan, design, fits, splits)
    artifact = recorder.write(
        store, fitted, config=config, seeds=plan.seeds, n_units=len(design.rows),
        n_subjects=len(set(design.subjects.tolist())), classes=design.classes,
        members=[m.name for m in plan.members] if plan.ensemble else [], folds=plan.folds,
        feature_hashes=design.table_hashes, timings=timings,
        model_meta={"unit": plan.unit, "target": plan.target.name, "feature_sets": fitted.feature_sets},
    )
    notes = sorted(fits.notes)
    data_lines = _design_lines(plan, design) + _kept_lines(plan, fits.kept) + [f"NOTE: {n}" for n in notes]
    return FitResult([recorder.run_id], plan.dataset, plan.target.name, plan.model,
                     summarise(recorder.metrics_table(), plan.member_names), plan.notes + design.notes + notes,
                     artifact.sha256, plan, data_lines=data_lines, config=config)


def fit_features(store: Store, request: FitRequest) -> FitResult:
    """``fit MODEL`` for a model that learns from feature tables: plan (``plan_fit``), fit, judge, store.

    Nothing is written unless everything succeeds. Returns the ``FitResult`` (run ids, summary, and in
    ``summary_lines()`` what ``cli.py fit`` prints).
    """
    from store.datasets import synthetic_notice

    _, reason = resolve_dataset(store, request.dataset)
    plan = plan_fit(store, request)
    notice = synthetic_notice(store, plan.dataset)
    result = run_plan(store, plan, progress=request.progress)
    result.plan_lines = ([notice] if notice else []) + describe_plan(plan, reason, dev=result.config.get("dev"))
    return result


def fit_model(store: Store, model: str, **options) -> FitResult:
    """``fit_features(store, FitRequest(model=model, **options))``: the keyword form for scripts and tests.

    ``options`` are the fields of ``classifiers.request.FitRequest`` (dataset, target, features, members,
    folds, test_subjects, seeds, split, search, augment, device, model_params, n_boot, progress).
    """
    return fit_features(store, FitRequest(model=model, **options))
