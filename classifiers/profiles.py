"""Per-dataset defaults for ``fit``: target, unit, feature sets, ensemble members, test rule.

A profile says what the paper behind a dataset did (CRMO: pairs, logistic on the Inception-v3 pair
difference + SVM and naive Bayes on the BoVW concatenation, voting; ChronoMID: scans, one mouse per
class held out, the integer week as a feature; IMPC: specimens, level-wise targets, 5 seeds; spine:
disc grade per scan in ``label``). Any other dataset gets the generic profile. Default feature sets are written as
candidates: a logical feature name (``inception_v3``: whichever pretrained variant the store holds, e.g.
``inception_v3_bf16``; see ``store.feature_catalog``), a glob over logical names (``*bovw*``) or
``{embedding}`` / ``{histogram}`` (any logical feature with that column); the first candidate that exists
for the dataset is used. Random-weights tables are never chosen here.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from features.errors import ParameterError
from features.sets import FeatureSet, parse_feature_set

__all__ = [
    "MemberDefault",
    "TargetSpec",
    "Profile",
    "PROFILES",
    "profile_for",
    "choose_default",
    "resolve_target",
]

# CNN tables in order of preference when a profile asks for "{embedding}"
PREFERRED_EMBEDDINGS = ("inception_v3", "efficientnet", "convnext", "resnet", "densenet", "vgg", "siamese", "cae")
BOVW = ("sift_bovw500", "sift_bovw*", "*bovw500*", "*bovw*", "{histogram}")


@dataclass(frozen=True)
class MemberDefault:
    """One default ensemble member: a registered model, feature-set candidates, model parameters."""

    model: str
    candidates: tuple[str, ...]
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TargetSpec:
    """What is predicted: a label ``column``, an optional value ``mapping`` and a row filter ``where``.

    ``where`` is ``((column, value), ...)``: only units whose columns equal those values are used
    (IMPC level 2 is judged on abnormal specimens only). Multi-label when the column holds lists.
    """

    name: str
    column: str
    mapping: dict | None = None
    where: tuple = ()
    positive: str | None = None  # binary one-vs-rest: ``positive`` vs ``not_<positive>``

    def map_value(self, value):
        """The target value of one raw label (None when the raw label has no target value)."""
        if value is None:
            return None
        if self.positive is not None:
            return self.positive if value == self.positive else f"not_{self.positive}"
        if self.mapping is not None:
            return self.mapping.get(value)
        return value

    def describe(self) -> str:
        """The target in words: column, mapping, positive class, row filter."""
        text = self.column
        if self.positive is not None:
            text += f" == {self.positive!r} (vs not_{self.positive})"
        if self.mapping:
            groups: dict = {}
            for raw, mapped in self.mapping.items():
                groups.setdefault(mapped, []).append(raw)
            text += " mapped: " + "; ".join(f"{k} <- {'/'.join(v)}" for k, v in groups.items())
        if self.where:
            text += " where " + " and ".join(f"{c} = {v!r}" for c, v in self.where)
        return text


@dataclass(frozen=True)
class Profile:
    """Defaults for one dataset (see the module docstring)."""

    dataset: str
    unit: str
    target: str = "label"
    targets: dict = field(default_factory=dict)  # name -> TargetSpec
    reference_mode: str | None = None
    members: tuple[MemberDefault, ...] = ()
    default_model: str = "ensemble"
    test_rule: str = "fraction"  # per_class | fraction | none
    test_fraction: float = 0.3
    folds: int = 5
    seeds: int = 1
    swap_labels: dict | None = None  # label after swapping a pair's order (augmentation)
    note: str = ""
    # printed after a fit; 'error' (1 - macro F1) is the CRMO poster's figure, so only its profile shows it
    summary_metrics: tuple[str, ...] = ("accuracy", "f1_macro", "auc_macro")
    train_metric: str = "f1_macro"  # the training-rows column of the printed summary (the final model's fit)
    metric_notes: tuple[str, ...] = ()  # footer lines under the summary, e.g. the paper's definition of error

    def features_for(self, model: str) -> tuple[str, ...]:
        """Candidate feature sets for a single ``model``: its member default, else the first member's."""
        for member in self.members:
            if member.model == model:
                return member.candidates
        return self.members[0].candidates if self.members else ()

    def params_for(self, model: str) -> dict:
        """Default parameters of ``model`` in this profile (``{}`` when none)."""
        for member in self.members:
            if member.model == model:
                return dict(member.params)
        return {}


_CRMO_BINARY = TargetSpec(
    "binary",
    "label",
    {"improved": "improved", "persisted": "persisted_or_regressed", "regressed": "persisted_or_regressed"},
)

PROFILES: dict[str, Profile] = {
    "crmo": Profile(
        dataset="crmo", unit="pairs", reference_mode="given",
        targets={"binary": _CRMO_BINARY},
        members=(
            MemberDefault("logistic", ("inception_v3:diff",)),
            MemberDefault("svm_rbf", tuple(f"{b}:concat" for b in BOVW)),
            MemberDefault("naive_bayes", tuple(f"{b}:concat" for b in BOVW)),
        ),
        test_rule="fraction", test_fraction=0.3,
        swap_labels={"improved": "regressed", "persisted": "persisted", "regressed": "improved"},
        note="CRMO poster: logistic on the Inception-v3 pair difference + SVM and naive Bayes on the BoVW "
             "concatenation, soft voting (--calibrate sigmoid keeps naive Bayes' near-0/1 probabilities from "
             "outvoting the others); error = 1 - F1.",
        summary_metrics=("accuracy", "f1_macro", "error", "auc_macro"),
        train_metric="error",
        metric_notes=("error = 1 - macro F1 (CRMO poster: training, dev and test error)",),
    ),
    "chronomid": Profile(
        dataset="chronomid", unit="scans", reference_mode="absolute",
        members=(
            MemberDefault("logistic", ("{embedding}+time",)),
            MemberDefault("random_forest", ("{embedding}+time",)),
            MemberDefault("svm_rbf", ("{embedding}+time",)),
        ),
        test_rule="per_class",
        swap_labels={"wild_type": "wild_type", "pth": "pth"},
        note="ChronoMID: one mouse per class held out for testing; the integer week is a feature.",
    ),
    "impc": Profile(
        dataset="impc", unit="specimens", target="level1",
        targets={
            "level2": TargetSpec("level2", "level2", where=(("level1", "abnormal"),)),
            "level3": TargetSpec("level3", "level3", where=(("level1", "abnormal"),)),
        },
        members=(
            MemberDefault("logistic", ("{embedding}",)),
            MemberDefault("random_forest", ("{embedding}",)),
        ),
        test_rule="fraction", test_fraction=0.1, seeds=5,
        note="IMPC: one multiview unit per specimen; per-class AUC, mean and std over 5 seeds.",
    ),
    "spine": Profile(
        dataset="spine", unit="scans", target="label", reference_mode="absolute",
        members=(
            MemberDefault("logistic", ("{embedding}",)),
            MemberDefault("random_forest", ("{embedding}",)),
            MemberDefault("svm_rbf", ("{embedding}",)),
        ),
        test_rule="fraction", test_fraction=0.3,
        note="Spine: disc grade (label grade_1..grade_4) per vertebral-level scan; the paper's metric is the mean "
             "per-class accuracy (bal.acc).",
        summary_metrics=("balanced_accuracy", "f1_macro", "auc_macro"),
        train_metric="balanced_accuracy",
        metric_notes=("bal.acc = mean per-class accuracy (the spine paper's metric)",),
    ),
}


def profile_for(dataset: str, *, unit: str = "scans") -> Profile:
    """The profile of ``dataset`` (a built-in demo name), else a generic one on ``unit``."""
    if dataset in PROFILES:
        return PROFILES[dataset]
    return Profile(
        dataset=dataset, unit=unit,
        members=(
            MemberDefault("logistic", ("{embedding}", "{histogram}")),
            MemberDefault("random_forest", ("{embedding}", "{histogram}")),
            MemberDefault("svm_rbf", ("{embedding}", "{histogram}")),
        ),
        note="generic profile: label column 'label', subject-grouped splits.",
    )


def _logical_columns(catalog, key: str) -> dict:
    """Logical feature -> the columns of its non-random variants keyed by ``key`` with rows for the dataset."""
    usable: dict = {}
    for logical in catalog.logical():
        for variant in catalog.variants_of(logical, key=key):
            if not variant.random:
                usable.setdefault(logical, set()).update(catalog.tables[variant.table].columns)
    return usable


def _match_name(pattern: str, usable: dict) -> str | None:
    """The logical feature a candidate ``pattern`` means among ``usable`` (name -> columns)."""
    if pattern.startswith("{") and pattern.endswith("}"):
        names = sorted(n for n, columns in usable.items() if pattern[1:-1] in columns)
        for prefix in PREFERRED_EMBEDDINGS:
            for name in names:
                if name.startswith(prefix):
                    return name
        return names[0] if names else None
    if any(ch in pattern for ch in "*?["):
        names = sorted(fnmatch.filter(usable, pattern))
        return names[0] if names else None
    return pattern if pattern in usable else None


def choose_default(candidates: tuple[str, ...], catalog, unit: str) -> tuple[FeatureSet | None, str, list]:
    """The first candidate whose logical features all resolve in ``catalog`` (a ``FeatureCatalog`` of the dataset).

    Returns (feature set of table names, "", resolutions) or (None, reason naming what was looked for, []).
    An ambiguous logical name raises ``AmbiguousNameError`` listing its tables.
    """
    from features.errors import TableNotFoundError

    unit_key = {"scans": "scan_id", "pairs": "pair_id", "specimens": "specimen_id"}[unit]
    for candidate in candidates:
        resolved, resolutions = [], []
        for token in candidate.split("+"):
            token = token.strip()
            if token == "time":
                resolved.append(token)
                continue
            pattern, sep, mode = token.partition(":")
            key = "scan_id" if mode else unit_key
            name = _match_name(pattern, _logical_columns(catalog, key))
            try:
                found = catalog.resolve(name, key=key) if name is not None else None
            except TableNotFoundError:
                found = None
            if found is None:
                break
            resolved.append(f"{found.table}{sep}{mode}")
            resolutions.append((found, mode or None))
        else:
            return parse_feature_set("+".join(resolved)), "", resolutions
    wanted = " or ".join(c.replace("{", "any table with column '").replace("}", "'") for c in candidates)
    return None, f"no feature table for it ({wanted})", []


def resolve_target(profile: Profile, text: str | None) -> TargetSpec:
    """The target ``text`` means for ``profile``: a named target (``binary``, ``level2``), a column,
    or ``COLUMN=VALUE`` (binary: VALUE vs not_VALUE). None gives the profile's default target."""
    name = text or profile.target
    if not isinstance(name, str) or not name.strip():
        raise ParameterError(f"The 'target' parameter of fit must be a non-empty string. Got {text!r} instead.")
    if name in profile.targets:
        return profile.targets[name]
    if name == "binary":
        raise ParameterError(
            f"Dataset {profile.dataset!r} has no predefined binary target. Write one as COLUMN=VALUE, e.g. "
            f"--target label=<positive class> (VALUE vs every other class)."
        )
    if "=" in name:
        column, _, positive = name.partition("=")
        return TargetSpec(name, column.strip(), positive=positive.strip())
    return TargetSpec(name, name)
