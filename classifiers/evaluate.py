"""``fit``: plan a model or ensemble from the dataset profile, judge it honestly, store the run.

``fit_command`` is the library entry point of ``python cli.py fit MODEL``:

1. ``plan_fit`` — dataset (the only one with features, when not given), target, feature set per member
   (profile defaults, leaving out a member whose feature table is missing and saying why; explicit
   ``--features`` / ``--members`` must exist), unit (scans, pairs, specimens), folds, seeds, test rule;
2. ``run_plan`` — for each seed: the held-out test subjects (``store.vocabulary.dataset_subject_split``,
   the rule the BoVW vocabulary uses too) or a given split, subject-grouped stratified CV on the
   training side, hyperparameters searched inside training rows only, a refit on all training rows,
   predictions and metrics for every member and for the ensemble; then everything is written
   (model artifact, ``metrics``, ``predictions``, ``runs``) only once all of it succeeded.

Printing goes through the ``out`` callable; computing never prints.
"""

from __future__ import annotations

import re
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
from sklearn.exceptions import ConvergenceWarning

from classifiers._registry import create_model, is_ensemble, list_models, model_class
from classifiers.design import Design, augmented_training, label_text, load_design
from classifiers.ensemble import align_proba
from classifiers.metrics import (
    SUMMARY_METRICS,
    classification_metrics,
    multilabel_metrics,
)
from classifiers.profiles import (
    Profile,
    TargetSpec,
    profile_for,
    resolve_candidate,
    resolve_target,
)
from classifiers.search import SEARCH_LEVELS, tune
from features.errors import (
    DatasetError,
    EvaluationError,
    ParameterError,
    TableNotFoundError,
)
from features.sets import FeatureSet, extend_feature_set, parse_feature_set
from features.splits import (
    PER_CLASS_FRACTION,
    Split,
    check_disjoint,
    cv_folds,
    given_split,
    holdout_split,
)
from store.featureset import datasets_with_features, feature_tables
from store.layout import Store
from store.provenance import canonical_json
from store.runs import METRICS, PREDICTIONS, new_run_id, write_run

__all__ = [
    "MemberPlan",
    "FitPlan",
    "FittedModel",
    "FitResult",
    "fit_command",
    "plan_fit",
    "run_plan",
    "resolve_dataset",
    "parse_members",
    "parse_test_subjects",
    "describe_plan",
    "summarise",
]

AUGMENT_NOISE = 0.05  # noise standard deviation, as a fraction of each feature's training std


@dataclass(frozen=True)
class MemberPlan:
    """One model to fit: member name, registered model, its feature set, parameters, where it came from."""

    name: str
    model: str
    feature_set: FeatureSet
    params: dict
    source: str  # "profile default" | "--features" | "--members"


@dataclass
class FitPlan:
    """Everything ``run_plan`` needs; printed by ``describe_plan`` before fitting."""

    dataset: str
    profile: Profile
    model: str
    target: TargetSpec
    unit: str
    reference_mode: str | None
    members: list[MemberPlan]
    folds: int
    seeds: list[int]
    test_rule: str  # per_class | fraction | none | list (ignored with split='given')
    test_fraction: float
    split: str  # auto | given
    search: str
    augment: bool
    model_params: dict = field(default_factory=dict)
    noise: float = AUGMENT_NOISE
    notes: list[str] = field(default_factory=list)
    n_boot: int = 1000
    test_subject_list: tuple[str, ...] | None = None

    @property
    def ensemble(self) -> bool:
        """True when the model combines members (ensemble, stacking)."""
        return is_ensemble(self.model)

    @property
    def feature_sets(self) -> list[FeatureSet]:
        """The distinct feature sets of the members, in member order (the column order of X)."""
        return list(dict.fromkeys(m.feature_set for m in self.members))


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
    """What ``fit_command`` did: run ids, the plan, the member-vs-ensemble summary and notes."""

    run_ids: list[str]
    dataset: str
    target: str
    model: str
    summary: list[dict]
    notes: list[str]
    model_artifact: str
    plan: FitPlan | None = None

    @property
    def run_id(self) -> str:
        """The (first) run id."""
        return self.run_ids[0]


# --- planning ------------------------------------------------------------------------------------
def resolve_dataset(store: Store, dataset: str | None) -> tuple[str, str | None]:
    """The dataset to fit on and a line saying why it was picked (None when it was named).

    With no name: the only dataset of the store with feature tables; several or none raise
    ``DatasetError`` listing them / saying what to run first.
    """
    with_features = datasets_with_features(store)
    if dataset is not None:
        if not isinstance(dataset, str) or not dataset:
            raise ParameterError(f"The 'dataset' parameter of fit must be a dataset name. Got {dataset!r} instead.")
        known = _datasets_in_scans(store)
        if dataset not in known:
            raise DatasetError(
                f"Dataset {dataset!r} is not in {store.root} (datasets: {', '.join(known) or 'none yet'}). Ingest it "
                f"first ('python cli.py ingest --dataset {dataset}') or check the name."
            )
        return dataset, None
    if len(with_features) == 1:
        name = next(iter(with_features))
        return name, f"dataset {name!r}: the only dataset with feature tables in the store ({', '.join(with_features[name])})"
    if not with_features:
        raise DatasetError(
            f"No dataset in {store.root} has feature tables yet. Run 'python cli.py ingest --dataset NAME' and "
            "'python cli.py extract --extractor ... --dataset NAME' first, then fit with --dataset NAME."
        )
    listing = "; ".join(f"{d} ({', '.join(t)})" for d, t in sorted(with_features.items()))
    raise DatasetError(f"Several datasets have feature tables: {listing}. Say which one with --dataset NAME.")


def _datasets_in_scans(store: Store) -> list[str]:
    from store.sql import connect
    from store.tables import table_exists

    if not table_exists(store, "scans"):
        return []
    con = connect(store)
    try:
        return [r[0] for r in con.execute("SELECT DISTINCT dataset FROM scans ORDER BY 1").fetchall()]
    finally:
        con.close()


def parse_members(text) -> list[tuple[str, str | None]]:
    """``'logistic=inception_v3:diff;svm_rbf=sift_bovw500:concat;naive_bayes'`` -> [(model, feature set or None)].

    Members are separated by ``;`` or ``,``; a member's feature set is written with ``+`` between terms.
    """
    items = text if isinstance(text, (list, tuple)) else re.split(r"[;,]", str(text))
    parsed = []
    known = list_models()
    for item in items:
        item = str(item).strip()
        if not item:
            continue
        model, sep, features = item.partition("=")
        model = model.strip()
        if model not in known or is_ensemble(model):
            singles = [m for m in known if not is_ensemble(m)]
            raise ParameterError(
                f"Member {item!r}: {model!r} is not a single model. Members are MODEL or MODEL=FEATURES with MODEL one "
                f"of {', '.join(singles)}."
            )
        parsed.append((model, features.strip() if sep else None))
    if not parsed:
        raise ParameterError(f"The 'members' parameter of fit names no member. Got {text!r} instead.")
    return parsed


def parse_test_subjects(value, profile: Profile) -> tuple[str, float, tuple[str, ...] | None]:
    """(rule, fraction, listed subjects) for ``--test-subjects``: None -> the profile's rule;
    'per-class' / 'one-per-class' -> one subject per class; a fraction in (0, 1) of each label stratum;
    0 / 'none' -> no held-out test set; the path of a text file -> exactly the subject keys it lists."""
    import os

    if value is None:
        return profile.test_rule, profile.test_fraction, None
    text = str(value).strip()
    key = text.lower().replace("-", "_")
    if key in ("per_class", "one_per_class", "perclass"):
        return "per_class", PER_CLASS_FRACTION, None
    if key in ("0", "none", "0.0"):
        return "none", 0.0, None
    if os.path.isfile(text):
        from store.subjects import read_subject_list

        return "list", 0.0, read_subject_list(text)
    try:
        fraction = float(text)
    except ValueError:
        fraction = None
    if fraction is None or not 0.0 < fraction < 1.0:
        raise ParameterError(
            f"The 'test_subjects' parameter of fit must be 'per-class', a fraction of subjects in (0, 1), 0 for none, "
            f"or a file of subject keys. Got {value!r} instead."
        )
    return "fraction", fraction, None


def _unit_of(feature_set: FeatureSet, tables: dict) -> str:
    units = set()
    for term in feature_set.terms:
        if term.mode is not None:
            units.add("pairs")
        elif term.table in tables:
            units.add(tables[term.table].unit)
    if len(units) > 1:
        raise EvaluationError(
            f"Feature set {feature_set} mixes units ({', '.join(sorted(units))}); every term must describe the same "
            "rows (pair modes and pair-keyed tables together, or scan tables alone)."
        )
    return units.pop() if units else "scans"


def _check_exists(feature_set: FeatureSet, tables: dict, where: str) -> None:
    for table in feature_set.tables:
        if table not in tables:
            known = ", ".join(sorted(tables)) or "none yet"
            raise TableNotFoundError(
                f"{where} names feature table {table!r}, which does not exist (feature tables: {known}). Run "
                f"'python cli.py extract --extractor ... --dataset ...' to compute it, or name an existing table."
            )


def _pair_modes_present(store: Store, dataset: str) -> list[str]:
    from store.sql import connect
    from store.tables import table_exists

    if not table_exists(store, "pairs"):
        return []
    con = connect(store)
    try:
        return [r[0] for r in con.execute("SELECT DISTINCT reference_mode FROM pairs WHERE dataset = ? ORDER BY 1", [dataset]).fetchall()]
    finally:
        con.close()


def plan_fit(
    store: Store,
    model: str,
    *,
    dataset: str | None = None,
    target: str | None = None,
    features: str | None = None,
    members=None,
    folds: int | None = None,
    test_subjects=None,
    seeds: int | None = None,
    split: str = "auto",
    search: str = "none",
    augment: bool = False,
    model_params: dict | None = None,
    n_boot: int = 1000,
    device: str | None = None,
) -> FitPlan:
    """Decide everything a fit will do (no fitting, no writing). See ``fit_command`` for the arguments."""
    known = list_models()
    if model not in known:
        raise ParameterError(f"Unknown model {model!r}. Known models: {', '.join(known)}.")
    if search not in SEARCH_LEVELS:
        raise ParameterError(f"The 'search' parameter of fit must be one of {', '.join(SEARCH_LEVELS)}. Got {search!r} instead.")
    if split not in ("auto", "given"):
        raise ParameterError(f"The 'split' parameter of fit must be 'auto' or 'given'. Got {split!r} instead.")
    if members is not None and not is_ensemble(model):
        raise ParameterError(f"--members is for 'ensemble' and 'stacking'; {model!r} is a single model (use --features).")
    for name, value, low in (("folds", folds, 2), ("seeds", seeds, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low):
            raise ParameterError(f"The {name!r} parameter of fit must be an int in [{low}, inf). Got {value!r} instead.")

    dataset, _ = resolve_dataset(store, dataset)
    profile = profile_for(dataset)
    target_spec = resolve_target(profile, target)
    tables = feature_tables(store)
    ours = {n: i for n, i in tables.items() if not i.datasets or dataset in i.datasets}  # defaults: this dataset's tables
    notes: list[str] = []

    specs = parse_members(members) if members is not None else (
        [(m.model, None) for m in profile.members] if is_ensemble(model) else [(model, None)]
    )
    if is_ensemble(model) and not specs:
        raise EvaluationError(f"The profile of {dataset!r} has no default members; name them with --members.")
    explicit_features = features is not None and not str(features).strip().startswith("+")
    unit_hint = profile.unit
    if explicit_features:
        unit_hint = _unit_of(parse_feature_set(features), tables)

    planned: list[MemberPlan] = []
    counts: dict[str, int] = {}
    for model_name, member_features in specs:
        counts[model_name] = counts.get(model_name, 0) + 1
        name = model_name if counts[model_name] == 1 else f"{model_name}_{counts[model_name]}"
        params = profile.params_for(model_name)
        if member_features is not None:
            fs = parse_feature_set(member_features)
            _check_exists(fs, tables, f"--members {model_name}={member_features}")
            planned.append(MemberPlan(name, model_name, fs, params, "--members"))
            continue
        if explicit_features:
            fs = parse_feature_set(features)
            _check_exists(fs, tables, f"--features {features}")
            planned.append(MemberPlan(name, model_name, fs, params, "--features"))
            continue
        candidates = profile.features_for(model_name)
        fs, why = resolve_candidate(candidates, ours, unit_hint)
        if fs is None:
            notes.append(f"left out member {name}: {why}; compute that table (python cli.py extract ... --dataset "
                         f"{dataset}) to include it")
            continue
        if features is not None:  # '+time' style: extends the default
            fs = extend_feature_set(fs, features)
            _check_exists(fs, tables, f"--features {features}")
        planned.append(MemberPlan(name, model_name, fs, params, "profile default" + (f" {features}" if features else "")))
    if not planned:
        raise TableNotFoundError(
            f"No member of the {dataset!r} default can be fitted: " + "; ".join(notes)
            + f". Run the extraction first (python cli.py extract --extractor ... --dataset {dataset}), or name "
            "existing tables with --features / --members."
        )
    if device is not None:
        planned = _with_device(planned, device)
    units = {m.name: _unit_of(m.feature_set, tables) for m in planned}
    if len(set(units.values())) > 1:
        raise EvaluationError(
            "Members must predict the same units; these do not: "
            + ", ".join(f"{n}: {u}" for n, u in units.items()) + ". Give every member feature sets of one unit."
        )
    unit = next(iter(units.values()))
    reference_mode = None
    if unit == "pairs":
        pair_keyed = any(tables[t.table].key == "pair_id" for m in planned for t in m.feature_set.terms if t.table in tables)
        if not pair_keyed:  # per-image tables in pair modes: choose which pairs
            modes = _pair_modes_present(store, dataset)
            if profile.reference_mode in modes:
                reference_mode = profile.reference_mode
            elif "given" in modes:
                reference_mode = "given"
            elif "absolute" in modes:
                reference_mode = "absolute"
    test_rule, test_fraction, listed = parse_test_subjects(test_subjects, profile)
    seeds_n = seeds if seeds is not None else profile.seeds
    plan = FitPlan(
        dataset=dataset, profile=profile, model=model, target=target_spec, unit=unit, reference_mode=reference_mode,
        members=planned, folds=int(folds if folds is not None else profile.folds), seeds=list(range(int(seeds_n))),
        test_rule=test_rule, test_fraction=test_fraction, split=split, search=search, augment=bool(augment),
        model_params=dict(model_params or {}), notes=notes, n_boot=int(n_boot), test_subject_list=listed,
    )
    for member in planned:  # fail before loading anything when a backend is missing
        _build_single(member.model, member.params, 0).check_available()
    return plan


def _with_device(planned: list[MemberPlan], device: str) -> list[MemberPlan]:
    """Members with ``device`` set where the model has a ``device`` parameter (xgboost, mlp)."""
    if device not in ("cpu", "cuda"):
        raise ParameterError(f"The 'device' parameter of fit must be 'cpu' or 'cuda'. Got {device!r} instead.")
    out, touched = [], False
    for member in planned:
        if "device" in model_class(member.model)().get_params(deep=False):
            member = MemberPlan(member.name, member.model, member.feature_set, {**member.params, "device": device},
                                member.source)
            touched = True
        out.append(member)
    if not touched:
        raise ParameterError(
            f"--device {device} applies to models with a device (xgboost, mlp); none of this fit's models has one "
            f"({', '.join(sorted({m.model for m in planned}))})."
        )
    return out


def describe_plan(plan: FitPlan, dataset_reason: str | None = None) -> list[str]:
    """Lines that say what will be fitted and which defaults came from the profile."""
    lines = []
    if dataset_reason:
        lines.append(dataset_reason)
    if plan.profile.note:
        lines.append(f"profile {plan.profile.dataset}: {plan.profile.note}")
    modes = f", reference_mode {plan.reference_mode}" if plan.reference_mode else ""
    described = plan.target.describe()
    target = plan.target.name if described == plan.target.name else f"{plan.target.name} ({described})"
    lines.append(f"target: {target}; unit: {plan.unit}{modes}")
    kind = plan.model + (f" ({plan.model_params.get('voting', 'soft')} voting)" if plan.model == "ensemble" else "")
    lines.append(f"model: {kind}" + (" with members:" if plan.ensemble else ""))
    width = max(len(m.name) for m in plan.members)
    for m in plan.members:
        params = f" {canonical_json(m.params)}" if m.params else ""
        lines.append(f"  {m.name:<{width}}  {m.model:<13} on {m.feature_set}  [{m.source}]{params}")
    for note in plan.notes:
        lines.append(f"NOTE: {note}")
    if plan.split == "given":
        split = "given by the data's 'split' column (train / val / test), checked for subject disjointness"
    elif plan.test_rule == "none":
        split = "no held-out test set"
    elif plan.test_rule == "per_class":
        split = "held-out test: one subject per class"
    elif plan.test_rule == "list":
        split = f"held-out test: the {len(plan.test_subject_list or ())} subjects listed in --test-subjects"
    else:
        split = f"held-out test: {plan.test_fraction:g} of the subjects of each label stratum"
    seeds = f"seed {plan.seeds[0]}" if len(plan.seeds) == 1 else f"seeds {plan.seeds[0]}..{plan.seeds[-1]}"
    lines.append(f"splits: {split}; {plan.folds}-fold subject-grouped stratified CV on the training subjects; {seeds}")
    lines.append(f"search: {plan.search}; augmentation: {'swap + noise' if plan.augment else 'off'}")
    return lines


# --- fitting -------------------------------------------------------------------------------------
def _build_single(model: str, params: dict, seed: int):
    cls = model_class(model)
    full = dict(params)
    if "random_state" in cls().get_params(deep=False):
        full.setdefault("random_state", seed)
    return create_model(model, **full)


def _build(plan: FitPlan, design: Design, seed: int):
    if plan.ensemble:
        members = [(m.name, _build_single(m.model, m.params, seed), design.columns[str(m.feature_set)])
                   for m in plan.members]
        return create_model(plan.model, members=members, **plan.model_params)
    member = plan.members[0]
    return _build_single(plan.model, {**member.params, **plan.model_params}, seed)


def _probabilities(estimator, model: str, member_names: list[str], X: np.ndarray, classes: list[str],
                   multilabel: bool) -> dict[str, np.ndarray]:
    out = {}
    want = np.array(classes, dtype=object)

    def aligned(proba, have):
        return proba if multilabel else align_proba(proba, np.asarray(have, dtype=object), want)

    for name in member_names:
        out[name] = aligned(estimator.member_proba(name, X), estimator.classes_)
    out[model] = aligned(estimator.predict_proba(X), estimator.classes_)
    return out


@dataclass
class _Evaluation:
    member: str
    split: str
    seed: int
    fold: int
    rows: np.ndarray  # positions in the design
    proba: np.ndarray


def _fit_and_predict(plan: FitPlan, design: Design, train: np.ndarray, evaluate: np.ndarray, seed: int,
                     X_swapped: np.ndarray | None, notes: set) -> tuple[object, dict, dict]:
    estimator = _build(plan, design, seed)
    if plan.augment:
        X, y, groups, aug_notes = augmented_training(design, train, swap_labels=plan.profile.swap_labels,
                                                     noise=plan.noise, seed=seed, X_swapped=X_swapped)
        notes.update(aug_notes)
    else:
        X, y, groups = design.X[train], design.y[train], design.subjects[train]
    estimator, chosen, search_notes = tune(estimator, X, y, groups, level=plan.search, seed=seed)
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
    return estimator, probas, chosen


def _seed_splits(store: Store, plan: FitPlan, design: Design, seed: int) -> tuple[np.ndarray, list[Split], np.ndarray, np.ndarray]:
    """(training rows, CV folds as design positions, test rows, final-training rows) for one seed."""
    groups = design.subjects
    strata = np.array([label_text(v, design.classes if design.multilabel else None) for v in design.y], dtype=object)
    if plan.split == "given":
        if design.split_values is None:
            raise EvaluationError(
                f"--split given needs a 'split' column (train / val / test) on the {design.unit} of {design.dataset!r}; "
                "there is none. Ingest a manifest with a split column, or use --split auto."
            )
        sides = given_split(design.split_values, groups)
        train, val, test = sides["train"], sides["val"], sides["test"]
        if len(val):
            folds = [Split(train, val)]
        else:
            folds = [Split(train[f.train], train[f.val]) for f in cv_folds(strata[train], groups[train], folds=plan.folds, seed=seed)]
        final = np.concatenate([train, val]) if len(val) else train
        return train, folds, test, np.sort(final)
    if plan.test_rule == "none":
        test_subjects: frozenset = frozenset()
    elif plan.test_rule == "list":
        test_subjects = frozenset(plan.test_subject_list or ())
        if not test_subjects & set(groups.tolist()):
            raise EvaluationError(
                f"None of the {len(test_subjects)} subjects listed in --test-subjects has {design.unit} with features in "
                f"{design.dataset!r}. List subject keys as in scans.subject (pseudonymous), one per line."
            )
    else:
        from store.subjects import dataset_subject_split

        test_subjects = frozenset(dataset_subject_split(store, design.dataset, test_fraction=plan.test_fraction, seed=seed).test)
    holdout = holdout_split(groups, test_subjects)
    train = holdout.train
    if len(train) == 0:
        raise EvaluationError("Every subject was held out for testing; hold out fewer (--test-subjects).")
    folds = [Split(train[f.train], train[f.val]) for f in cv_folds(strata[train], groups[train], folds=plan.folds, seed=seed)]
    return train, folds, holdout.val, train


def _metric_rows(run_id: str, model: str, evaluation: _Evaluation, design: Design, n_boot: int) -> list[dict]:
    rows = evaluation.rows
    groups = design.subjects[rows]
    boot = n_boot if evaluation.fold < 0 else 0
    if design.multilabel:
        values = multilabel_metrics(design.y[rows], evaluation.proba, design.classes, groups=groups, n_boot=boot,
                                    seed=evaluation.seed)
    else:
        classes = np.array(design.classes, dtype=object)
        predicted = classes[np.argmax(evaluation.proba, axis=1)]
        values = classification_metrics(design.y[rows], predicted, evaluation.proba, classes, groups=groups,
                                        n_boot=boot, seed=evaluation.seed)
    return [
        {"run_id": run_id, "model": model, "member": evaluation.member, "split": evaluation.split,
         "fold": evaluation.fold, "seed": evaluation.seed, "metric": v.metric, "class": v.cls, "value": v.value,
         "ci_low": v.ci_low, "ci_high": v.ci_high}
        for v in values
    ]


def _prediction_rows(run_id: str, evaluation: _Evaluation, design: Design) -> dict[str, list]:
    rows = evaluation.rows
    labels = design.classes
    if design.multilabel:
        predicted = [label_text(p >= 0.5, labels) for p in evaluation.proba]
        truth = [label_text(v, labels) for v in design.y[rows]]
    else:
        predicted = [labels[i] for i in np.argmax(evaluation.proba, axis=1)]
        truth = [label_text(v) for v in design.y[rows]]
    n = len(rows)
    return {
        "run_id": [run_id] * n, "dataset": [design.dataset] * n, "member": [evaluation.member] * n,
        "key": design.keys[rows].tolist(), "subject": design.subjects[rows].tolist(),
        "split": [evaluation.split] * n, "fold": [evaluation.fold] * n, "seed": [evaluation.seed] * n,
        "y_true": truth, "y_pred": predicted,
        "proba": [list(zip(labels, map(float, p))) for p in evaluation.proba],
    }


def summarise(metrics: pa.Table, member_order: list[str]) -> list[dict]:
    """Member-vs-ensemble summary from metric rows: per member, CV mean/std over folds and seeds of
    the ``SUMMARY_METRICS`` and the test value (mean/std over seeds, 95% interval of the first seed)."""
    rows = metrics.to_pylist()
    summary = []
    for member in member_order:
        entry = {"member": member, "cv": {}, "test": {}}
        for metric in SUMMARY_METRICS:
            cv = [r["value"] for r in rows if r["member"] == member and r["split"] == "cv" and r["fold"] >= 0
                  and r["metric"] == metric and r["class"] is None]
            if cv:
                entry["cv"][metric] = (float(np.mean(cv)), float(np.std(cv)), len(cv))
            test = sorted((r for r in rows if r["member"] == member and r["split"] == "test" and r["metric"] == metric
                           and r["class"] is None), key=lambda r: r["seed"])
            if test:
                values = [r["value"] for r in test]
                entry["test"][metric] = (float(np.mean(values)), float(np.std(values)), len(values),
                                         test[0]["ci_low"], test[0]["ci_high"])
        summary.append(entry)
    return summary


def run_plan(store: Store, plan: FitPlan, *, progress: bool = True, out: Callable[[str], None] = print) -> FitResult:
    """Fit and judge ``plan`` (see module docstring), write the run, return its ``FitResult``."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    design = load_design(store, plan.dataset, plan.unit, plan.feature_sets, plan.target, reference_mode=plan.reference_mode)
    loaded_s = time.perf_counter() - started
    n_subjects = len(set(design.subjects.tolist()))
    shape = ", ".join(f"{name} [{b - a}]" for name, (a, b) in design.columns.items())
    out(f"units: {len(design.rows)} {plan.unit} of {n_subjects} subjects; classes: {', '.join(design.classes)}; X: {shape}")
    for note in design.notes:
        out(f"NOTE: {note}")
    if plan.split == "auto" and design.split_values is not None:
        out("NOTE: the data has a 'split' column; --split given would honour it")

    # every split is computed before any fitting: a bad split fails fast and writes nothing
    splits = {seed: _seed_splits(store, plan, design, seed) for seed in plan.seeds}
    for seed, (train, folds, test, final) in splits.items():
        check_disjoint(design.subjects, final, test, what=f"test (seed {seed})")
        for fold in folds:
            check_disjoint(design.subjects, fold.train, fold.val, what=f"cross-validation (seed {seed})")
        if not design.multilabel:
            missing = set(design.classes) - set(design.y[final].tolist())
            if missing:
                raise EvaluationError(
                    f"Class(es) {', '.join(sorted(missing))} have no training subject for seed {seed} (all held out). "
                    "Hold out fewer subjects (--test-subjects) or add data."
                )

    run_id = new_run_id()
    X_swapped = design.swapped_X() if plan.augment and design.can_swap else None
    evaluations: list[_Evaluation] = []
    notes: set = set()
    saved = None
    chosen_final: dict = {}
    steps = sum(len(folds) + 1 for _, folds, _, _ in splits.values())
    bar = tqdm(total=steps, desc=f"fit {plan.model}", unit="fit", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    timings = {"load": loaded_s, "cv": 0.0, "final": 0.0}
    try:
        for seed, (train, folds, test, final) in splits.items():
            t0 = time.perf_counter()
            for k, fold in enumerate(folds):
                _, probas, _ = _fit_and_predict(plan, design, fold.train, fold.val, seed, X_swapped, notes)
                evaluations += [_Evaluation(name, "cv", seed, k, fold.val, p) for name, p in probas.items()]
                bar.update(1)
            t1 = time.perf_counter()
            estimator, probas, chosen = _fit_and_predict(plan, design, final, test, seed, X_swapped, notes)
            evaluations += [_Evaluation(name, "test", seed, -1, test, p) for name, p in probas.items()]
            bar.update(1)
            timings["cv"] += t1 - t0
            timings["final"] += time.perf_counter() - t1
            chosen_final[str(seed)] = chosen
            if saved is None:
                saved = (estimator, final)
    finally:
        bar.close()

    for note in sorted(notes):
        out(f"NOTE: {note}")
    member_order = ([m.name for m in plan.members] if plan.ensemble else []) + [plan.model]
    pooled = []
    for seed in plan.seeds:
        for member in member_order:
            parts = [e for e in evaluations if e.member == member and e.split == "cv" and e.seed == seed]
            if parts:
                pooled.append(_Evaluation(member, "cv", seed, -1, np.concatenate([e.rows for e in parts]),
                                          np.vstack([e.proba for e in parts])))
    metric_rows: list[dict] = []
    for evaluation in evaluations + pooled:
        if len(evaluation.rows):
            metric_rows += _metric_rows(run_id, plan.model, evaluation, design, plan.n_boot)
    metrics = pa.Table.from_pylist(metric_rows, schema=METRICS)
    columns: dict[str, list] = {name: [] for name in PREDICTIONS.names}
    for evaluation in evaluations:
        for name, values in _prediction_rows(run_id, evaluation, design).items():
            columns[name].extend(values)
    predictions = pa.table(columns, schema=PREDICTIONS)

    estimator, final_rows = saved
    fitted = FittedModel(
        estimator=estimator, model=plan.model,
        members=[(m.name, m.model, str(m.feature_set)) for m in plan.members],
        feature_sets=[str(fs) for fs in plan.feature_sets], unit=plan.unit, reference_mode=plan.reference_mode,
        dataset=plan.dataset, target=plan.target, classes=list(design.classes), multilabel=design.multilabel,
        table_hashes=design.table_hashes, training_subjects=tuple(sorted(set(design.subjects[final_rows].tolist()))),
    )
    timings["total"] = time.perf_counter() - started
    config = {
        "model": plan.model, "model_params": plan.model_params,
        "members": [{"name": m.name, "model": m.model, "features": str(m.feature_set), "params": m.params,
                     "source": m.source} for m in plan.members],
        "target": {"name": plan.target.name, "column": plan.target.column, "mapping": plan.target.mapping,
                   "where": [list(w) for w in plan.target.where], "positive": plan.target.positive},
        "unit": plan.unit, "reference_mode": plan.reference_mode, "folds": plan.folds, "seeds": plan.seeds,
        "split": plan.split, "test_rule": plan.test_rule, "test_fraction": plan.test_fraction,
        "search": plan.search, "search_choices": chosen_final, "augment": plan.augment, "noise": plan.noise,
        "n_boot": plan.n_boot, "classes": design.classes, "multilabel": design.multilabel,
        "columns": {k: list(v) for k, v in design.columns.items()},
        "notes": plan.notes + design.notes + sorted(notes),
        "test_subjects": {str(seed): len(set(design.subjects[test].tolist())) for seed, (_, _, test, _) in splits.items()},
    }
    run = {
        "run_id": run_id, "created": datetime.now(timezone.utc), "dataset": plan.dataset, "target": plan.target.name,
        "unit": plan.unit, "model": plan.model, "members": [m.name for m in plan.members] if plan.ensemble else [],
        "config": canonical_json(config),
        "feature_tables": sorted(design.table_hashes),
        "feature_hashes": [(k, v or "") for k, v in sorted(design.table_hashes.items())],
        "seeds": plan.seeds, "folds": plan.folds, "n_units": len(design.rows), "n_subjects": n_subjects,
        "classes": list(design.classes), "timings": [(k, float(v)) for k, v in timings.items()],
    }
    artifact = write_run(store, run, metrics, predictions, fitted,
                         model_meta={"unit": plan.unit, "target": plan.target.name, "feature_sets": fitted.feature_sets})
    summary = summarise(metrics, member_order)
    return FitResult([run_id], plan.dataset, plan.target.name, plan.model, summary,
                     plan.notes + design.notes + sorted(notes), artifact.sha256, plan)


def fit_command(
    store: Store,
    model: str,
    *,
    dataset: str | None = None,
    target: str | None = None,
    features: str | None = None,
    members=None,
    folds: int | None = None,
    test_subjects=None,
    seeds: int | None = None,
    split: str = "auto",
    search: str = "none",
    augment: bool = False,
    model_params: dict | None = None,
    n_boot: int = 1000,
    device: str | None = None,
    progress: bool = True,
    out: Callable[[str], None] = print,
) -> FitResult:
    """``python cli.py fit MODEL``: plan from the dataset profile, print the plan, fit, judge, store, print.

    ``model``: a registered model (logistic, svm_rbf, naive_bayes, random_forest, xgboost, knn) or
    ``ensemble`` / ``stacking``. ``dataset``: None picks the only dataset with features. ``target``:
    None (profile default), a named target (``binary``), a column, or ``COLUMN=VALUE``. ``features``:
    a feature set (``inception_v3:diff+time``) for every member, or ``+time`` to extend the defaults.
    ``members``: ``'logistic=inception_v3:diff,svm_rbf=sift_bovw500:concat,naive_bayes'``. ``folds`` /
    ``seeds``: None = profile default (5 folds; 1 seed, IMPC 5). ``test_subjects``: None (profile),
    'per-class', a fraction, or 0. ``split``: auto | given. ``search``: none | quick | thorough.
    ``device``: 'cuda' runs xgboost / mlp members on the GPU (``BackendUnavailableError`` when there is
    none), 'cpu' forces the CPU. Nothing is written unless everything succeeds. Returns the
    ``FitResult`` (run ids, summary).
    """
    from classifiers.report import format_summary
    from store.datasets import synthetic_notice

    _, reason = resolve_dataset(store, dataset)
    plan = plan_fit(store, model, dataset=dataset, target=target, features=features, members=members, folds=folds,
                    test_subjects=test_subjects, seeds=seeds, split=split, search=search, augment=augment,
                    model_params=model_params, n_boot=n_boot, device=device)
    notice = synthetic_notice(store, plan.dataset)
    if notice:
        out(notice)
    for line in describe_plan(plan, reason):
        out(line)
    result = run_plan(store, plan, progress=progress, out=out)
    out("")
    out(format_summary(result.summary, title=f"run {result.run_id}: {plan.model} on {plan.dataset}, target {plan.target.name}",
                       metrics=plan.profile.summary_metrics))
    out(f"saved: run {result.run_id}, model artifact {result.model_artifact[:12]} (report: python cli.py report {result.run_id})")
    return result
