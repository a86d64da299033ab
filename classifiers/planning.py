"""Plan a fit from the dataset profile: dataset, target, members and their feature sets, unit, splits.

``plan_fit`` decides everything a fit will do without fitting or writing anything: the dataset (the only
one with features, when not given), the target, the feature set of every member (profile defaults,
leaving out a member whose feature table is missing and saying why; explicit ``--features`` /
``--members`` must exist), the unit (scans, pairs, specimens), folds, seeds and the test rule.
``describe_plan`` says it in lines of text before the fit runs.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from classifiers._registry import create_model, is_ensemble, learns_from_features, list_models, model_class
from classifiers.profiles import Profile, TargetSpec, choose_default, profile_for, resolve_target
from classifiers.request import FitRequest
from classifiers.search import SEARCH_LEVELS, SEARCH_METRICS
from features.errors import DatasetError, EvaluationError, ParameterError, TableNotFoundError, is_int
from features.sets import FeatureSet, extend_feature_set, parse_feature_set
from features.splits import PER_CLASS_FRACTION
from store.feature_catalog import FeatureCatalog
from store.featureset import datasets_with_features, feature_tables
from store.layout import Store
from store.provenance import canonical_json

__all__ = [
    "AUGMENT_NOISE",
    "MemberPlan",
    "FitPlan",
    "TestRule",
    "plan_fit",
    "resolve_dataset",
    "parse_members",
    "parse_test_subjects",
    "parse_member_weights",
    "describe_plan",
    "build_estimator",
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
    test_list_source: str = "listed in --test-subjects"  # where test_subject_list came from, as the plan says it
    variance_threshold: float | None = None  # None: the models' default (0: constant columns only)
    search_metric: str | None = None  # None: macro F1 (multi-label: mean per-label AUC)
    resolutions: list[str] = field(default_factory=list)  # which table each feature name resolved to, and why

    @property
    def ensemble(self) -> bool:
        """True when the model combines members (ensemble, stacking)."""
        return is_ensemble(self.model)

    @property
    def feature_sets(self) -> list[FeatureSet]:
        """The distinct feature sets of the members, in member order (the column order of X)."""
        return list(dict.fromkeys(m.feature_set for m in self.members))

    @property
    def member_names(self) -> list[str]:
        """Names of the members judged beside the model (ensembles), then the model's own name."""
        return ([m.name for m in self.members] if self.ensemble else []) + [self.model]


# --- what is in the store ------------------------------------------------------------------------
def _distinct_values(store: Store, table: str, column: str, dataset: str | None = None) -> list:
    """Sorted distinct values of ``table.column`` (of one ``dataset`` when given); [] before the table exists."""
    from store.sql import connect
    from store.tables import table_exists

    if not table_exists(store, table):
        return []
    where = " WHERE dataset = ?" if dataset is not None else ""
    con = connect(store)
    try:
        sql = f"SELECT DISTINCT {column} FROM {table}{where} ORDER BY 1"
        return [r[0] for r in con.execute(sql, [dataset] if dataset is not None else []).fetchall()]
    finally:
        con.close()


def resolve_dataset(store: Store, dataset: str | None) -> tuple[str, str | None]:
    """The dataset to fit on and a line saying why it was picked (None when it was named).

    With no name: the only dataset of the store with feature tables; several or none raise
    ``DatasetError`` listing them / saying what to run first.
    """
    if dataset is not None:
        if not isinstance(dataset, str) or not dataset:
            raise ParameterError(f"The 'dataset' parameter of fit must be a dataset name. Got {dataset!r} instead.")
        known = _distinct_values(store, "scans", "dataset")
        if dataset not in known:
            raise DatasetError(
                f"Dataset {dataset!r} is not in {store.root} (datasets: {', '.join(known) or 'none yet'}). Ingest it "
                f"first ('python cli.py ingest --dataset {dataset}') or check the name."
            )
        return dataset, None
    with_features = datasets_with_features(store)
    if len(with_features) == 1:
        name = next(iter(with_features))
        return (
            name,
            f"dataset {name!r}: the only dataset with feature tables in the store ({', '.join(with_features[name])})",
        )
    if not with_features:
        raise DatasetError(
            f"No dataset in {store.root} has feature tables yet. Run 'python cli.py ingest --dataset NAME' and "
            "'python cli.py extract --extractor ... --dataset NAME' first, then fit with --dataset NAME."
        )
    listing = "; ".join(f"{d} ({', '.join(t)})" for d, t in sorted(with_features.items()))
    raise DatasetError(f"Several datasets have feature tables: {listing}. Say which one with --dataset NAME.")


# --- parsing options -----------------------------------------------------------------------------
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
        if model not in known or is_ensemble(model) or not learns_from_features(model):
            singles = [m for m in known if not is_ensemble(m) and learns_from_features(m)]
            raise ParameterError(
                f"Member {item!r}: {model!r} is not a single model. Members are MODEL or MODEL=FEATURES with MODEL one "
                f"of {', '.join(singles)}."
            )
        parsed.append((model, features.strip() if sep else None))
    if not parsed:
        raise ParameterError(f"The 'members' parameter of fit names no member. Got {text!r} instead.")
    return parsed


@dataclass(frozen=True)
class TestRule:
    """How the held-out test subjects are chosen: ``rule`` per_class | fraction | none | list."""

    __test__ = False  # not a pytest test class

    rule: str
    fraction: float
    subjects: tuple[str, ...] | None = None  # rule 'list': exactly these subject keys


def parse_test_subjects(value, profile: Profile) -> TestRule:
    """The ``TestRule`` of ``--test-subjects``: None -> the profile's rule; 'per-class' / 'one-per-class' ->
    one subject per class; a fraction in (0, 1) of each label stratum; 0 / 'none' -> no held-out test set;
    the path of a text file -> exactly the subject keys it lists."""
    if value is None:
        return TestRule(profile.test_rule, profile.test_fraction)
    text = str(value).strip()
    key = text.lower().replace("-", "_")
    if key in ("per_class", "one_per_class", "perclass"):
        return TestRule("per_class", PER_CLASS_FRACTION)
    if key in ("0", "none", "0.0"):
        return TestRule("none", 0.0)
    if os.path.isfile(text):
        from store.subjects import read_subject_list

        return TestRule("list", 0.0, read_subject_list(text))
    try:
        fraction = float(text)
    except ValueError:
        fraction = None
    if fraction is None or not 0.0 < fraction < 1.0:
        raise ParameterError(
            f"The 'test_subjects' parameter of fit must be 'per-class', a fraction of subjects in (0, 1), 0 for none, "
            f"or a file of subject keys. Got {value!r} instead."
        )
    return TestRule("fraction", fraction)


def _check_options(request: FitRequest) -> None:
    """``ParameterError`` for options that no fit accepts, before anything is read."""
    known = list_models()
    if request.model not in known:
        raise ParameterError(f"Unknown model {request.model!r}. Known models: {', '.join(known)}.")
    if request.search not in SEARCH_LEVELS:
        raise ParameterError(
            f"The 'search' parameter of fit must be one of {', '.join(SEARCH_LEVELS)}. Got {request.search!r} instead.")
    if request.split not in ("auto", "given"):
        raise ParameterError(f"The 'split' parameter of fit must be 'auto' or 'given'. Got {request.split!r} instead.")
    if request.members is not None and not is_ensemble(request.model):
        raise ParameterError(
            f"--members is for 'ensemble' and 'stacking'; {request.model!r} is a single model (use --features).")
    _check_voting_options(request)
    for name, value, low in (("folds", request.folds, 2), ("seeds", request.seeds, 1)):
        if value is not None and not is_int(value, low):
            raise ParameterError(
                f"The {name!r} parameter of fit must be an int in [{low}, inf). Got {value!r} instead."
            )


def _check_voting_options(request: FitRequest) -> None:
    """``ParameterError`` for voting options on a model that does not vote, or values out of range."""
    given = {name: value for name, value in (("--voting", request.voting), ("--member-weights", request.member_weights),
                                             ("--calibrate", request.calibrate)) if value is not None}
    if given and request.model != "ensemble":
        raise ParameterError(f"{', '.join(given)} configure the voting ensemble ('fit ensemble'); {request.model!r} "
                             "does not vote.")
    if request.voting is not None and request.voting not in ("soft", "hard"):
        raise ParameterError(f"The 'voting' parameter of fit must be 'soft' or 'hard'. Got {request.voting!r} instead.")
    if request.calibrate is not None and request.calibrate not in ("none", "sigmoid", "isotonic"):
        raise ParameterError(
            f"The 'calibrate' parameter of fit must be 'none', 'sigmoid' or 'isotonic'. Got {request.calibrate!r} "
            "instead.")
    if request.search_metric is not None and request.search_metric not in SEARCH_METRICS:
        raise ParameterError(f"The 'search_metric' parameter of fit must be one of {', '.join(SEARCH_METRICS)}. "
                             f"Got {request.search_metric!r} instead.")
    value = request.variance_threshold
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0):
        raise ParameterError(
            f"The 'variance_threshold' parameter of fit must be a float in [0, inf). Got {value!r} instead.")


def parse_member_weights(text, n_members: int, names: list[str]) -> list[float]:
    """The weights of ``--member-weights`` ('2,1,1' or a list): one non-negative number per planned member
    (in member order), not all zero; ``ParameterError`` otherwise."""
    items = text if isinstance(text, (list, tuple)) else [t for t in re.split(r"[;,\s]+", str(text).strip()) if t]
    try:
        weights = [float(v) for v in items]
    except (TypeError, ValueError):
        weights = []
    if len(weights) != n_members or any(not w >= 0 for w in weights) or sum(weights) <= 0:
        raise ParameterError(
            f"The 'member_weights' parameter of fit must be {n_members} non-negative numbers, one per member "
            f"({', '.join(names)}), not all zero. Got {text!r} instead."
        )
    return weights


def _ensemble_params(request: FitRequest, planned: list[MemberPlan]) -> dict:
    """``model_params`` with ``--voting``, ``--member-weights`` and ``--calibrate`` folded in."""
    params = dict(request.model_params or {})
    if request.voting is not None:
        params["voting"] = request.voting
    if request.calibrate is not None:
        params["calibrate"] = request.calibrate
    if request.member_weights is not None:
        params["weights"] = parse_member_weights(request.member_weights, len(planned), [m.name for m in planned])
    return params


def _with_variance_threshold(planned: list[MemberPlan], threshold: float) -> list[MemberPlan]:
    """Members with ``variance_threshold`` set (every single model of the registry has that parameter)."""
    out = []
    for member in planned:
        if "variance_threshold" not in model_class(member.model)().get_params(deep=False):
            raise ParameterError(f"--variance-threshold: model {member.model!r} has no low-variance filter.")
        out.append(MemberPlan(member.name, member.model, member.feature_set,
                              {**member.params, "variance_threshold": float(threshold)}, member.source))
    return out


def _with_exact(planned: list[MemberPlan]) -> list[MemberPlan]:
    """Members with ``exact=True`` where the model has an ``exact`` parameter (svm_rbf: no kernel approximation)."""
    return [MemberPlan(m.name, m.model, m.feature_set, {**m.params, "exact": True}, m.source)
            if "exact" in model_class(m.model)().get_params(deep=False) else m for m in planned]


# --- members and their feature sets --------------------------------------------------------------
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


class _MemberPlanner:
    """Chooses each member's feature set: ``--members`` / ``--features`` when given, else the profile's
    default among this dataset's tables (a member without one is left out, with a note). Every name is
    resolved through ``store.feature_catalog`` (logical name or exact table); ``resolutions`` says how."""

    def __init__(self, profile: Profile, dataset: str, features: str | None, catalog: FeatureCatalog) -> None:
        self.profile, self.dataset, self.features, self.catalog = profile, dataset, features, catalog
        self.explicit = features is not None and not str(features).strip().startswith("+")
        self.resolutions: dict[str, None] = {}
        self.explicit_set = self._resolve(parse_feature_set(features)) if self.explicit else None
        self.unit_hint = _unit_of(self.explicit_set, catalog.tables) if self.explicit else profile.unit
        self.notes: list[str] = []

    def _resolve(self, feature_set: FeatureSet) -> FeatureSet:
        resolved, found = self.catalog.resolve_set(feature_set)
        for resolution, term in zip(found, feature_set.terms, strict=True):
            self.resolutions[resolution.sentence(term.mode)] = None
        return resolved

    def plan(self, name: str, model: str, member_features: str | None) -> MemberPlan | None:
        """The plan of member ``name`` (model ``model``), or None when it is left out (see ``notes``)."""
        params = self.profile.params_for(model)
        if member_features is not None:
            return MemberPlan(name, model, self._resolve(parse_feature_set(member_features)), params, "--members")
        if self.explicit:
            return MemberPlan(name, model, self.explicit_set, params, "--features")
        candidates = self.profile.features_for(model)
        fs, why, found = choose_default(candidates, self.catalog, self.unit_hint)
        if fs is None:
            self.notes.append(f"left out member {name}: {why}{_random_only(self.catalog, candidates)}; compute that "
                              f"table (python cli.py extract ... --dataset {self.dataset}) to include it")
            return None
        for resolution, mode in found:
            self.resolutions[resolution.sentence(mode)] = None
        if self.features is not None:  # '+time' style: extends the default; only the added names are resolved
            extended = extend_feature_set(fs, self.features)
            added = extended.terms[len(fs.terms):]
            added = self._resolve(FeatureSet(added)).terms if added else ()
            fs = FeatureSet(tuple(dict.fromkeys(fs.terms + added)), extended.time)
        return MemberPlan(name, model, fs, params, "profile default" + (f" {self.features}" if self.features else ""))


def _random_only(catalog: FeatureCatalog, candidates: tuple[str, ...]) -> str:
    """Words naming the random-weights tables of the candidates' logical names (never chosen implicitly)."""
    names = {t.strip().partition(":")[0] for c in candidates for t in c.split("+")}
    tables = sorted(v.table for n in names for v in catalog.variants_of(n) if v.random)
    if not tables:
        return ""
    return (f" ({', '.join(tables)} {'has' if len(tables) == 1 else 'have'} random weights, used only when named, "
            "e.g. --features TABLE:diff)")


def _member_specs(request: FitRequest, profile: Profile, dataset: str) -> list[tuple[str, str | None]]:
    """(model, feature set or None) of every member to plan."""
    if request.members is not None:
        return parse_members(request.members)
    if not is_ensemble(request.model):
        return [(request.model, None)]
    specs = [(m.model, None) for m in profile.members]
    if not specs:
        raise EvaluationError(f"The profile of {dataset!r} has no default members; name them with --members.")
    return specs


def _plan_members(
    request: FitRequest, profile: Profile, dataset: str, catalog: FeatureCatalog
) -> tuple[list[MemberPlan], list[str], list[str]]:
    """(the members to fit, notes on members left out, resolution sentences); ``TableNotFoundError`` when
    none is left."""
    specs = _member_specs(request, profile, dataset)
    planner = _MemberPlanner(profile, dataset, request.features, catalog)
    planned: list[MemberPlan] = []
    counts: dict[str, int] = {}
    for model, member_features in specs:
        counts[model] = counts.get(model, 0) + 1
        name = model if counts[model] == 1 else f"{model}_{counts[model]}"
        member = planner.plan(name, model, member_features)
        if member is not None:
            planned.append(member)
    if not planned:
        raise TableNotFoundError(
            f"No member of the {dataset!r} default can be fitted: " + "; ".join(planner.notes)
            + f". Run the extraction first (python cli.py extract --extractor ... --dataset {dataset}), or name "
            "existing tables with --features / --members."
        )
    return planned, planner.notes, list(planner.resolutions)


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


def _common_unit(planned: list[MemberPlan], tables: dict) -> str:
    units = {m.name: _unit_of(m.feature_set, tables) for m in planned}
    if len(set(units.values())) > 1:
        raise EvaluationError(
            "Members must predict the same units; these do not: "
            + ", ".join(f"{n}: {u}" for n, u in units.items()) + ". Give every member feature sets of one unit."
        )
    return next(iter(units.values()))


def _reference_mode(
    store: Store, dataset: str, profile: Profile, planned: list[MemberPlan], tables: dict
) -> str | None:
    """Which pairs per-image tables are read in pair modes (None when a table is keyed by pair already)."""
    if any(tables[t.table].key == "pair_id" for m in planned for t in m.feature_set.terms if t.table in tables):
        return None
    modes = _distinct_values(store, "pairs", "reference_mode", dataset)
    for mode in (profile.reference_mode, "given", "absolute"):
        if mode in modes:
            return mode
    return None


def build_estimator(model: str, params: dict, seed: int):
    """An unfitted model registered as ``model`` with ``params``; ``random_state`` = ``seed`` when it has one."""
    full = dict(params)
    if "random_state" in model_class(model)().get_params(deep=False):
        full.setdefault("random_state", seed)
    return create_model(model, **full)


def plan_fit(store: Store, request: FitRequest | str, **options) -> FitPlan:
    """Decide everything a fit will do (no fitting, no writing).

    ``request`` is a ``FitRequest``, or a model name with the request's other fields as keywords
    (``plan_fit(store, "ensemble", members="logistic,knn")``). Raises ``ParameterError``,
    ``DatasetError``, ``TableNotFoundError``, ``EvaluationError`` or ``BackendUnavailableError`` saying what to fix.
    """
    if isinstance(request, str):
        request = FitRequest(model=request, **options)
    _check_options(request)
    dataset, _ = resolve_dataset(store, request.dataset)
    profile = profile_for(dataset)
    target = resolve_target(profile, request.target)
    tables = feature_tables(store)
    planned, notes, resolutions = _plan_members(request, profile, dataset, FeatureCatalog(store, dataset, tables))
    if request.device is not None:
        planned = _with_device(planned, request.device)
    if request.variance_threshold is not None:
        planned = _with_variance_threshold(planned, request.variance_threshold)
    if request.exact:
        planned = _with_exact(planned)
    unit = _common_unit(planned, tables)
    reference_mode = _reference_mode(store, dataset, profile, planned, tables) if unit == "pairs" else None
    rule = parse_test_subjects(request.test_subjects, profile)
    plan = FitPlan(
        dataset=dataset, profile=profile, model=request.model, target=target, unit=unit, reference_mode=reference_mode,
        members=planned, folds=int(request.folds if request.folds is not None else profile.folds),
        seeds=list(range(int(request.seeds if request.seeds is not None else profile.seeds))),
        test_rule=rule.rule, test_fraction=rule.fraction, split=request.split, search=request.search,
        augment=bool(request.augment), model_params=_ensemble_params(request, planned), notes=notes,
        n_boot=int(request.n_boot), test_subject_list=rule.subjects,
        variance_threshold=request.variance_threshold, search_metric=request.search_metric,
        resolutions=resolutions,
    )
    from classifiers.leakage import guard_network_subjects  # never judge on subjects a feature network saw

    plan = guard_network_subjects(store, plan, explicit=request.test_subjects is not None)
    for member in planned:  # fail before loading anything when a backend is missing
        build_estimator(member.model, member.params, 0).check_available()
    return plan


# --- saying it -----------------------------------------------------------------------------------
def _split_text(plan: FitPlan) -> str:
    if plan.split == "given":
        return "given by the data's 'split' column (train / val / test), checked for subject disjointness"
    if plan.test_rule == "none":
        return "no held-out test set"
    if plan.test_rule == "per_class":
        return "held-out test: one subject per class"
    if plan.test_rule == "list":
        return f"held-out test: the {len(plan.test_subject_list or ())} subjects {plan.test_list_source}"
    return f"held-out test: {plan.test_fraction:g} of the subjects of each label stratum"


def _evaluation_text(plan: FitPlan, dev: str | None) -> str:
    """How the model is judged and refitted: CV or the given val side, and what the final model learns from."""
    seeds = f"seed {plan.seeds[0]}" if len(plan.seeds) == 1 else f"seeds {plan.seeds[0]}..{plan.seeds[-1]}"
    if plan.split != "given":
        final = ("the final model is refitted on all training subjects" if plan.test_rule != "none" else
                 "the final model is refitted on all subjects (nothing held out)")
        return f"{plan.folds}-fold subject-grouped stratified CV on the training subjects; {final}; {seeds}"
    if dev == "cv":
        return (f"the data gives no val side, so {plan.folds}-fold subject-grouped stratified CV on the given train "
                f"subjects; the final model is refitted on train and judged on the given test subjects; {seeds}")
    return ("validation on the given val subjects (one split, no folds); the final model is refitted on "
            f"train+val and judged on the given test subjects; {seeds}")


def _model_text(plan: FitPlan) -> str:
    if plan.model != "ensemble":
        return plan.model
    params = plan.model_params
    parts = [f"{params.get('voting', 'soft')} voting"]
    if params.get("weights") is not None:
        parts.append("weights " + ", ".join(f"{w:g}" for w in params["weights"]))
    if params.get("calibrate", "none") != "none":
        parts.append(f"members calibrated ({params['calibrate']}, subject-grouped inner folds)")
    return f"{plan.model} ({'; '.join(parts)})"


def _svm_scaling_text(member: MemberPlan) -> str:
    """What an svm_rbf member does on many rows: the exact SVM, or above its threshold the approximation."""
    model = build_estimator(member.model, member.params, 0)
    if model.exact:
        return f"{member.name}: exact RBF SVM at any row count (--exact; fit time grows as rows^2)"
    return (f"{member.name}: above {model.approximate_above:,} training rows, Nystroem kernel approximation "
            f"(n_components {model.n_components}) + linear SVM; --exact for the exact SVM")


def describe_plan(plan: FitPlan, dataset_reason: str | None = None, *, dev: str | None = None) -> list[str]:
    """Lines that say what will be fitted and which defaults came from the profile.

    ``dev`` is how the run was judged before its test ('cv' or 'val', ``runs.config['dev']``); None says
    what ``--split given`` will do in either case.
    """
    lines = []
    if dataset_reason:
        lines.append(dataset_reason)
    if plan.profile.note:
        lines.append(f"profile {plan.profile.dataset}: {plan.profile.note}")
    modes = f", reference_mode {plan.reference_mode}" if plan.reference_mode else ""
    described = plan.target.describe()
    target = plan.target.name if described == plan.target.name else f"{plan.target.name} ({described})"
    lines.append(f"target: {target}; unit: {plan.unit}{modes}")
    lines.append(f"model: {_model_text(plan)}" + (" with members:" if plan.ensemble else ""))
    width = max(len(m.name) for m in plan.members)
    for m in plan.members:
        params = f" {canonical_json(m.params)}" if m.params else ""
        lines.append(f"  {m.name:<{width}}  {m.model:<13} on {m.feature_set}  [{m.source}]{params}")
    lines += [f"features: {sentence}" for sentence in plan.resolutions]
    lines += [f"NOTE: {note}" for note in plan.notes]
    lines += [_svm_scaling_text(m) for m in plan.members if m.model == "svm_rbf"]
    lines.append(f"splits: {_split_text(plan)}; {_evaluation_text(plan, dev)}")
    if plan.variance_threshold is not None:
        lines.append(f"low-variance filter: features with variance <= {plan.variance_threshold:g} on the training rows "
                     "of each fit are dropped (inside the pipeline; counts kept are printed below)")
    metric = plan.search_metric or "f1_macro; multi-label: roc_auc"
    search = plan.search if plan.search == "none" else f"{plan.search} (maximising {metric})"
    lines.append(f"search: {search}; augmentation: {'swap + noise' if plan.augment else 'off'}")
    return lines
