"""Single classifiers of the registry: logistic, svm_rbf, naive_bayes, random_forest, xgboost, knn.

Each is a scikit-learn estimator (``__init__`` stores keyword arguments only, learned state ends in
``_``) whose ``fit`` builds one pipeline: low-variance feature removal (``LowVarianceFilter``: ``VarianceThreshold``'s
rule without its float64 copy of X), scaling (``StandardScaler``, where the model needs it) and the
estimator, all learnt on the rows given to ``fit`` only — so inside cross-validation they see training
folds only. Copies of X: none by the filter when it keeps every column (the usual case: X passes
through as is), one by the scaler (float32 stays float32), and whatever the estimator itself needs
(lbfgs logistic regression and libsvm work in float64, as they do when used bare).

``fit(X, y, groups=None)``: ``y`` is 1-D (class labels, any hashable) or 2-D (multi-label 0/1
indicator, one binary model per label). ``groups`` (subjects) makes the folds used inside training
(SVM probability calibration) subject-grouped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.feature_selection import SelectorMixin
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import LabelEncoder, StandardScaler
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from classifiers._registry import register_model
from features.errors import BackendUnavailableError, EvaluationError, check_param, is_int
from features.splits import inner_splits
from store.cores import usable_cores

__all__ = [
    "ChronoClassifier",
    "Logistic",
    "SvmRbf",
    "NaiveBayes",
    "RandomForest",
    "XGBoost",
    "KNN",
    "NystroemSVC",
    "LowVarianceFilter",
    "Rule",
    "POSITIVE",
    "NON_NEGATIVE",
    "FRACTION",
    "CLASS_WEIGHT",
    "int_rule",
    "keep_params",
    "cuda_available",
    "fresh",
]

def _is_number(value, *, low=None, high=None, low_open=False) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    if low is not None and (value <= low if low_open else value < low):
        return False
    return high is None or value <= high



# A parameter rule: (what the value must be, in scikit-learn's wording; the test it must pass).
Rule = tuple[str, Callable[[object], bool]]
POSITIVE: Rule = ("a float in (0, inf)", lambda v: _is_number(v, low=0, low_open=True))
NON_NEGATIVE: Rule = ("a float in [0, inf)", lambda v: _is_number(v, low=0))
FRACTION: Rule = ("a float in (0, 1]", lambda v: _is_number(v, low=0, high=1, low_open=True))
CLASS_WEIGHT: Rule = ("None or 'balanced'", lambda v: v in (None, "balanced"))


def int_rule(low: int) -> Rule:
    """The rule "an int in [low, inf)"."""
    return (f"an int in [{low}, inf)", lambda v: is_int(v, low))


def keep_params(estimator, values: dict) -> None:
    """Store every ``__init__`` parameter of ``estimator`` from ``values`` (its ``locals()``) as an
    attribute of the same name: scikit-learn's convention, written once."""
    for name in type(estimator)._get_param_names():
        setattr(estimator, name, values[name])


class LowVarianceFilter(SelectorMixin, BaseEstimator):
    """Drop columns whose variance is ``<= threshold`` — ``sklearn.feature_selection.VarianceThreshold``'s
    rule (with ``threshold=0``: a column is dropped when it is constant, judged by its peak-to-peak as
    well as its variance; NaN ignored), for dense arrays, without its costs on large float32 X.

    ``VarianceThreshold`` converts X to a float64 copy to learn the variances and copies X again in
    ``transform`` even when every column is kept (on 100k x 2048 float32: 11 s and 2.4 GB). Here the
    variances are accumulated over row blocks of at most ``block_bytes`` as float64 (one pass over X, each
    block small enough to stay in the CPU cache; Chan's pairwise update, so as exact as a two-pass
    variance), and ``transform`` returns X itself when every column is
    kept (else ``X[:, mask]``, a copy). Callers that go on to change the output in place must copy it;
    the scaler after it in our pipelines does (``StandardScaler(copy=True)``).

    Learnt: ``variances_`` (float64, per input column), ``n_features_in_``; ``get_support()`` and
    ``get_feature_names_out()`` as for any scikit-learn selector.
    """

    def __init__(self, threshold=0.0, block_bytes=1 << 21):
        self.threshold = threshold
        self.block_bytes = block_bytes

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

    def fit(self, X, y=None):
        """Learn the variance (and, for ``threshold == 0``, the peak-to-peak) of every column of ``X``."""
        X = validate_data(self, X, dtype="numeric", ensure_all_finite="allow-nan", reset=True)
        n, d = X.shape
        rows = max(1, int(self.block_bytes) // (8 * max(d, 1)))
        count = np.zeros(d)
        mean = np.zeros(d)
        m2 = np.zeros(d)
        low = np.full(d, np.nan)
        high = np.full(d, np.nan)
        for start in range(0, n, rows):
            block = X[start:start + rows].astype(np.float64)  # small enough to stay in the CPU cache
            if self.threshold == 0:
                low = np.fmin(low, np.fmin.reduce(block, axis=0))  # fmin/fmax skip NaN
                high = np.fmax(high, np.fmax.reduce(block, axis=0))
            sums = block.sum(axis=0)
            missing = None
            if np.isnan(sums).any():  # NaN in this block: count and sum the present values only
                missing = np.isnan(block)
                block[missing] = 0.0
                block_count = (~missing).sum(axis=0).astype(np.float64)
                sums = block.sum(axis=0)
            else:
                block_count = np.full(d, float(len(block)))
            with np.errstate(invalid="ignore", divide="ignore"):
                block_mean = np.where(block_count > 0, sums / block_count, 0.0)
            block -= block_mean
            if missing is not None:
                block[missing] = 0.0
            block_m2 = np.einsum("ij,ij->j", block, block)
            total = count + block_count
            with np.errstate(invalid="ignore", divide="ignore"):
                delta = block_mean - mean
                share = np.where(total > 0, block_count / total, 0.0)
                mean = mean + delta * share
                m2 = m2 + block_m2 + delta * delta * count * share
            count = total
        with np.errstate(invalid="ignore", divide="ignore"):
            variances = np.where(count > 0, m2 / np.maximum(count, 1.0), np.nan)
        if self.threshold == 0:  # as VarianceThreshold: a constant column has peak-to-peak exactly 0
            variances = np.fmin(variances, high - low)
        self.variances_ = variances
        if np.all(~np.isfinite(self.variances_) | (self.variances_ <= self.threshold)):
            message = f"No feature in X meets the variance threshold {self.threshold:.5f}"
            raise ValueError(message + (" (X contains only one sample)" if n == 1 else ""))
        return self

    def _get_support_mask(self):
        check_is_fitted(self)
        with np.errstate(invalid="ignore"):
            return self.variances_ > self.threshold

    def transform(self, X):
        """``X`` itself when every column is kept, else ``X[:, kept]`` (a copy)."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=None, ensure_all_finite=False, reset=False)
        mask = self._get_support_mask()
        return X if mask.all() else X[:, mask]


class ChronoClassifier(ClassifierMixin, BaseEstimator):
    """Base of the single models: preprocessing pipeline, label encoding, multi-label handling.

    Subclasses define ``__init__`` (keyword-only, ``keep_params(self, locals())``, with
    ``variance_threshold``, ``scale`` and their own parameters), ``param_rules`` (name -> ``Rule``, the
    base's included), ``search_spaces`` (level -> parameter grid) and ``_estimator(y, groups)`` returning
    an unfitted scikit-learn classifier for encoded labels.
    """

    name: ClassVar[str] = "model"
    combines_members: ClassVar[bool] = False
    uses_scaling: ClassVar[bool] = True
    param_rules: ClassVar[dict[str, Rule]] = {
        "variance_threshold": NON_NEGATIVE,
        "scale": ("a bool", lambda v: isinstance(v, bool)),
    }
    search_spaces: ClassVar[dict[str, dict[str, list]]] = {}

    # --- contract -------------------------------------------------------------------------
    def validate_params(self) -> None:
        """Raise ``ParameterError`` (scikit-learn wording) for any parameter out of range."""
        owner = type(self).__name__
        for name, (kind, ok) in self.param_rules.items():
            value = getattr(self, name)
            check_param(owner, name, value, kind=kind, ok=ok(value))

    def check_available(self) -> None:
        """Raise ``BackendUnavailableError`` when a device or library this model was asked for is absent."""

    def search_space(self, level: str) -> dict[str, list]:
        """Parameter grid (``{name: values}``) tried by ``--search level``; ``{}`` for ``none``."""
        return {name: list(values) for name, values in self.search_spaces.get(level, {}).items()}

    def _estimator(self, y: np.ndarray, groups: np.ndarray | None):
        raise NotImplementedError

    # --- fitting --------------------------------------------------------------------------
    def _pipeline(self, y: np.ndarray, groups: np.ndarray | None) -> Pipeline:
        steps = [("variance", LowVarianceFilter(threshold=float(self.variance_threshold)))]
        if self.scale and self.uses_scaling:
            # copy=True: the filter passes the caller's X through untouched when it keeps every column,
            # so the scaler must not work in place (its one copy keeps float32 as float32).
            steps.append(("scale", StandardScaler(copy=True)))
        steps.append(("model", self._estimator(y, groups)))
        return Pipeline(steps)

    def _fit_one(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None) -> Pipeline:
        pipeline = self._pipeline(y, groups)
        try:
            return pipeline.fit(X, y)
        except ValueError as exc:
            if "variance threshold" in str(exc):
                raise EvaluationError(
                    f"{self.name}: no feature varies more than variance_threshold={self.variance_threshold} "
                    "in the training rows, so there is nothing to learn from. Check the feature table "
                    "(are all rows equal?) or lower the threshold."
                ) from None
            raise

    def _fit_inputs(self, X, y, groups) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(X, y, groups) as arrays, after the checks every fit makes: parameters, backend, X a dense
        2-D numeric matrix (not copied; NaN is left to the model), 1-D y holding class labels."""
        self.validate_params()
        self.check_available()
        X = validate_data(self, X, dtype="numeric", ensure_all_finite=False, reset=True)
        if y is None:
            check_classification_targets(y)  # scikit-learn's error for a missing y
        y = np.asarray(y)
        if y.ndim < 2:  # a 2-D y is a multi-label 0/1 indicator
            check_classification_targets(y)
        return X, y, None if groups is None else np.asarray(groups)

    def _set_classes(self, y: np.ndarray) -> None:
        """``multilabel_`` and ``classes_`` from ``y``; ``EvaluationError`` for a single class."""
        if y.ndim == 2:
            self.multilabel_ = True
            self.classes_ = np.arange(y.shape[1])
            return
        self.multilabel_ = False
        self.encoder_ = LabelEncoder().fit(y)
        self.classes_ = self.encoder_.classes_
        if len(self.classes_) < 2:
            raise EvaluationError(
                f"{self.name}: the training rows hold a single class ({self.classes_[0]!r}); a classifier "
                "needs at least two. Choose another target, or a split that keeps every class in training."
            )

    def fit(self, X, y, groups=None):
        """Learn from ``X`` (n, d) and ``y`` (n,) labels or (n, L) 0/1 multi-label; return ``self``."""
        X, y, groups = self._fit_inputs(X, y, groups)
        self._set_classes(y)
        if not self.multilabel_:
            self.pipeline_ = self._fit_one(X, self.encoder_.transform(y), groups)
            return self
        self.label_models_ = []
        for j in range(y.shape[1]):
            column = y[:, j].astype(int)
            if len(np.unique(column)) < 2:  # a label never (or always) present in training
                self.label_models_.append(float(column.mean()))
            else:
                self.label_models_.append(self._fit_one(X, column, groups))
        return self

    def _predict_inputs(self, X) -> np.ndarray:
        """``X`` checked against the fitted model: ``NotFittedError`` before ``fit``, ``ValueError`` for a
        matrix of another width or not 2-D."""
        check_is_fitted(self)
        return validate_data(self, X, dtype="numeric", ensure_all_finite=False, reset=False)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (n, k) in ``classes_`` order; multi-label: P(label) per column (n, L)."""
        X = self._predict_inputs(X)
        if not self.multilabel_:
            return self.pipeline_.predict_proba(X)
        columns = []
        for model in self.label_models_:
            if isinstance(model, float):
                columns.append(np.full(len(X), model))
            else:
                columns.append(model.predict_proba(X)[:, 1])
        return np.column_stack(columns)

    def features_kept(self) -> tuple[int, int]:
        """(columns kept by the low-variance filter, columns in X) of the fitted model; with multi-label, of
        the first label's model (each label's filter sees the same rows, so all keep the same columns)."""
        check_is_fitted(self)
        fitted = [self.pipeline_] if not self.multilabel_ else [
            m for m in self.label_models_ if not isinstance(m, float)]
        if not fitted:
            return self.n_features_in_, self.n_features_in_
        support = fitted[0].named_steps["variance"].get_support()
        return int(support.sum()), int(len(support))

    def labels_from(self, proba: np.ndarray) -> np.ndarray:
        """Labels (n,) of the most probable class, or a 0/1 indicator (n, L) for multi-label (P >= 0.5)."""
        if self.multilabel_:
            return (proba >= 0.5).astype(int)
        return self.classes_[np.argmax(proba, axis=1)]

    def predict(self, X) -> np.ndarray:
        """Predicted labels (n,), or a 0/1 indicator (n, L) for multi-label (P >= 0.5)."""
        return self.labels_from(self.predict_proba(X))


@register_model("logistic")
class Logistic(ChronoClassifier):
    """L2-regularised logistic regression (multinomial softmax for more than two classes).

    After ``fit``, ``n_iter_`` is the most lbfgs iterations any of its fits needed.
    """

    param_rules = {**ChronoClassifier.param_rules, "C": POSITIVE, "max_iter": int_rule(1), "class_weight": CLASS_WEIGHT}
    search_spaces = {
        "quick": {"C": [0.01, 0.1, 1.0, 10.0]},
        "thorough": {"C": [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0], "class_weight": [None, "balanced"]},
    }

    def __init__(
        self, *, C=1.0, max_iter=2000, class_weight=None, variance_threshold=0.0, scale=True, random_state=None
    ):
        keep_params(self, locals())

    def fit(self, X, y, groups=None):
        super().fit(X, y, groups)
        fitted = (
            [self.pipeline_] if not self.multilabel_ else [m for m in self.label_models_ if not isinstance(m, float)]
        )
        self.n_iter_ = max((int(np.max(m[-1].n_iter_)) for m in fitted), default=0)
        return self

    def _estimator(self, y, groups):
        from sklearn.linear_model import LogisticRegression

        # l1_ratio=0 is the L2 penalty (``penalty`` is deprecated in scikit-learn 1.8+); lbfgs fits
        # the multinomial (softmax) loss when there are more than two classes.
        return LogisticRegression(C=self.C, l1_ratio=0.0, solver="lbfgs", max_iter=self.max_iter,
                                  class_weight=self.class_weight, random_state=self.random_state)


@register_model("svm_rbf")
class SvmRbf(ChronoClassifier):
    """RBF-kernel SVM with probabilities by Platt scaling on subject-grouped inner folds."""

    param_rules = {
        **ChronoClassifier.param_rules, "C": POSITIVE,
        "gamma": ("'scale', 'auto' or a float in (0, inf)", lambda v: v in ("scale", "auto") or POSITIVE[1](v)),
        "class_weight": CLASS_WEIGHT, "calibration_folds": int_rule(2),
        "approximate_above": int_rule(1), "n_components": int_rule(1),
        "exact": ("a bool", lambda v: isinstance(v, bool)),
    }
    search_spaces = {
        "quick": {"C": [0.1, 1.0, 10.0]},
        "thorough": {"C": [0.1, 1.0, 10.0, 100.0], "gamma": ["scale", 1e-4, 1e-3, 1e-2]},
    }

    def __init__(self, *, C=1.0, gamma="scale", class_weight=None, calibration_folds=3, approximate_above=20000,
                 n_components=1000, exact=False, variance_threshold=0.0, scale=True, random_state=None):
        keep_params(self, locals())

    def approximates(self, n_rows: int) -> bool:
        """True when a fit on ``n_rows`` training rows uses the Nystroem approximation (not ``exact`` and
        more rows than ``approximate_above``)."""
        return not self.exact and int(n_rows) > int(self.approximate_above)

    def _estimator(self, y, groups):
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.svm import SVC

        if self.approximates(len(y)):
            svc = NystroemSVC(C=self.C, gamma=self.gamma, n_components=self.n_components,
                              class_weight=self.class_weight, random_state=self.random_state)
        else:
            svc = SVC(kernel="rbf", C=self.C, gamma=self.gamma, class_weight=self.class_weight,
                      random_state=self.random_state)
        seed = 0 if self.random_state is None else int(self.random_state)
        folds = inner_splits(y, groups, n_splits=self.calibration_folds, seed=seed)
        if folds is None:
            raise EvaluationError(
                "svm_rbf: some class has a single training row, so its probabilities cannot be calibrated. "
                "Use fewer folds (--folds), hold out fewer subjects, or choose another model."
            )
        return CalibratedClassifierCV(svc, method="sigmoid", cv=folds, ensemble=False)


class NystroemSVC(ClassifierMixin, BaseEstimator):
    """An RBF SVM approximated for many rows: ``Nystroem`` features (``n_components`` landmark rows) and a
    linear SVM (``LinearSVC``, hinge loss) on them; fit time grows linearly in the rows, not as rows^2.

    ``gamma``: 'scale' (1 / (d * X.var()), as ``SVC``), 'auto' (1 / d) or a float; the value used is
    ``gamma_``. Learnt: ``nystroem_``, ``svm_``, ``classes_``. ``decision_function`` feeds Platt scaling.
    """

    def __init__(self, C=1.0, gamma="scale", n_components=1000, class_weight=None, random_state=None):
        self.C = C
        self.gamma = gamma
        self.n_components = n_components
        self.class_weight = class_weight
        self.random_state = random_state

    def fit(self, X, y):
        """Learn the landmarks and the linear SVM from ``X`` (n, d) and labels ``y`` (n,); return ``self``."""
        from sklearn.kernel_approximation import Nystroem
        from sklearn.svm import LinearSVC

        X = np.asarray(X)
        if self.gamma == "scale":
            variance = float(X.var())
            self.gamma_ = 1.0 / (X.shape[1] * variance) if variance > 0 else 1.0
        else:
            self.gamma_ = 1.0 / X.shape[1] if self.gamma == "auto" else float(self.gamma)
        self.nystroem_ = Nystroem(kernel="rbf", gamma=self.gamma_, n_components=min(self.n_components, len(X)),
                                  random_state=self.random_state)
        Z = self.nystroem_.fit_transform(X)
        self.svm_ = LinearSVC(C=self.C, class_weight=self.class_weight, dual="auto", max_iter=5000,
                              random_state=self.random_state).fit(Z, y)
        self.classes_ = self.svm_.classes_
        return self

    def decision_function(self, X) -> np.ndarray:
        """Signed distances to the separating hyperplane(s) in Nystroem space: (n,) or (n, k)."""
        check_is_fitted(self)
        return self.svm_.decision_function(self.nystroem_.transform(np.asarray(X)))

    def predict(self, X) -> np.ndarray:
        """The predicted class of each row."""
        check_is_fitted(self)
        return self.svm_.predict(self.nystroem_.transform(np.asarray(X)))


@register_model("naive_bayes")
class NaiveBayes(ChronoClassifier):
    """Naive Bayes: Gaussian on scaled features (default), or multinomial on raw counts.

    Gaussian is the default because stored BoVW histograms are normalised (they sum to 1), which
    starves a multinomial model of evidence (on the CRMO demo's SIFT BoVW concatenation: macro F1
    0.66 Gaussian vs 0.48 multinomial). ``kind='multinomial'`` suits raw count features;
    ``kind='auto'`` picks multinomial when every training value is >= 0. The choice is ``kind_``.
    """

    param_rules = {
        **ChronoClassifier.param_rules,
        "kind": ("one of 'auto', 'gaussian', 'multinomial'", lambda v: v in ("auto", "gaussian", "multinomial")),
        "alpha": POSITIVE, "var_smoothing": POSITIVE,
    }
    search_spaces = {
        "quick": {"alpha": [0.1, 1.0], "var_smoothing": [1e-9, 1e-4]},
        "thorough": {"alpha": [0.01, 0.1, 0.5, 1.0, 2.0], "var_smoothing": [1e-9, 1e-6, 1e-3, 1e-1]},
    }

    def __init__(self, *, kind="gaussian", alpha=1.0, var_smoothing=1e-9, variance_threshold=0.0, scale=True):
        keep_params(self, locals())

    def search_space(self, level: str) -> dict[str, list]:
        """The grid of ``level`` without the parameter the chosen ``kind`` ignores (alpha is multinomial's,
        var_smoothing Gaussian's; 'auto' keeps both: its kind is known only once it sees the data)."""
        space = super().search_space(level)
        ignored = {"gaussian": "alpha", "multinomial": "var_smoothing"}.get(self.kind)
        return {name: values for name, values in space.items() if name != ignored}

    def _fit_inputs(self, X, y, groups):
        X, y, groups = super()._fit_inputs(X, y, groups)
        if self.kind == "auto":
            self.kind_ = "multinomial" if X.size and float(X.min()) >= 0.0 else "gaussian"
        else:
            self.kind_ = self.kind
        if self.kind_ == "multinomial" and X.size and float(X.min()) < 0.0:
            raise EvaluationError(
                "naive_bayes with kind='multinomial' needs non-negative features (histograms); this feature "
                "set has negative values (a 'diff' mode?). Use kind='gaussian' or a histogram feature set."
            )
        return X, y, groups

    def _pipeline(self, y, groups):
        pipeline = super()._pipeline(y, groups)
        if self.kind_ == "multinomial":  # counts must stay counts: no centring
            pipeline.steps = [s for s in pipeline.steps if s[0] != "scale"]
        return pipeline

    def _estimator(self, y, groups):
        from sklearn.naive_bayes import GaussianNB, MultinomialNB

        if self.kind_ == "multinomial":
            return MultinomialNB(alpha=self.alpha)
        return GaussianNB(var_smoothing=self.var_smoothing)


@register_model("random_forest")
class RandomForest(ChronoClassifier):
    """Random forest of ``n_estimators`` trees (no scaling: trees do not need it)."""

    uses_scaling = False
    param_rules = {
        **ChronoClassifier.param_rules,
        "n_estimators": int_rule(1),
        "min_samples_leaf": int_rule(1),
        "max_features": ("'sqrt', 'log2' or a float in (0, 1]", lambda v: v in ("sqrt", "log2") or FRACTION[1](v)),
        "class_weight": (
            "None, 'balanced' or 'balanced_subsample'",
            lambda v: v in (None, "balanced", "balanced_subsample"),
        ),
    }
    search_spaces = {
        "quick": {"min_samples_leaf": [1, 3], "max_features": ["sqrt", 0.2]},
        "thorough": {"n_estimators": [300, 600], "min_samples_leaf": [1, 2, 5], "max_features": ["sqrt", "log2", 0.2],
                     "class_weight": [None, "balanced"]},
    }

    def __init__(self, *, n_estimators=300, max_features="sqrt", min_samples_leaf=1, class_weight=None,
                 n_jobs=None, variance_threshold=0.0, scale=False, random_state=None):
        keep_params(self, locals())

    def _estimator(self, y, groups):
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(n_estimators=self.n_estimators, max_features=self.max_features,
                                      min_samples_leaf=self.min_samples_leaf, class_weight=self.class_weight,
                                      n_jobs=self.n_jobs, random_state=self.random_state)


def cuda_available() -> bool:
    """True when XGBoost was built with CUDA and the CUDA driver reports at least one visible device.

    Asks the driver (``libcuda``) directly: fast, and honours ``CUDA_VISIBLE_DEVICES``.
    """
    import ctypes

    import xgboost

    if not xgboost.build_info().get("USE_CUDA", False):
        return False
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return False
    return count.value > 0




@register_model("xgboost")
class XGBoost(ChronoClassifier):
    """Gradient-boosted trees (XGBoost, ``tree_method='hist'``); ``device='cuda'`` runs on the GPU.

    ``n_estimators`` is the number of boosting rounds; with k > 2 classes each round grows k trees
    (softmax), so the default 200 rounds make 600 trees for 3 classes. ``n_jobs=None`` uses every core
    this process may run on (``os.sched_getaffinity``), recorded as such in the booster's ``nthread``.
    On a machine whose cores are busy with other work, fewer threads can be faster: XGBoost's OpenMP
    threads wait for each other at every tree level, so one descheduled thread stalls them all.
    """

    uses_scaling = False
    param_rules = {
        **ChronoClassifier.param_rules, "n_estimators": int_rule(1), "max_depth": int_rule(1),
        "learning_rate": FRACTION, "subsample": FRACTION, "colsample_bytree": FRACTION,
        "device": ("'cpu' or 'cuda'", lambda v: v in ("cpu", "cuda")),
    }
    search_spaces = {
        "quick": {"max_depth": [3, 6], "learning_rate": [0.05, 0.2]},
        "thorough": {"max_depth": [2, 4, 6, 8], "learning_rate": [0.03, 0.1, 0.3], "subsample": [0.7, 1.0],
                     "colsample_bytree": [0.5, 1.0]},
    }

    def __init__(self, *, n_estimators=200, max_depth=4, learning_rate=0.1, subsample=1.0, colsample_bytree=1.0,
                 device="cpu", n_jobs=None, variance_threshold=0.0, scale=False, random_state=None):
        keep_params(self, locals())

    def check_available(self) -> None:
        if self.device == "cuda" and not cuda_available():
            raise BackendUnavailableError(
                "xgboost was asked to run on device='cuda' but no CUDA device is usable here (XGBoost needs a "
                "CUDA build and a visible GPU). Run on a machine with a GPU, or use device='cpu'."
            )

    def _estimator(self, y, groups):
        from xgboost import XGBClassifier

        return XGBClassifier(n_estimators=self.n_estimators, max_depth=self.max_depth, learning_rate=self.learning_rate,
                             subsample=self.subsample, colsample_bytree=self.colsample_bytree, tree_method="hist",
                             device=self.device, n_jobs=usable_cores() if self.n_jobs is None else self.n_jobs,
                             random_state=0 if self.random_state is None else int(self.random_state))


@register_model("knn")
class KNN(ChronoClassifier):
    """k-nearest neighbours on scaled features (k capped at the number of training rows)."""

    param_rules = {
        **ChronoClassifier.param_rules, "n_neighbors": int_rule(1),
        "weights": ("'uniform' or 'distance'", lambda v: v in ("uniform", "distance")),
    }
    search_spaces = {
        "quick": {"n_neighbors": [3, 5, 9]},
        "thorough": {"n_neighbors": [1, 3, 5, 9, 15], "weights": ["uniform", "distance"]},
    }

    def __init__(self, *, n_neighbors=5, weights="uniform", variance_threshold=0.0, scale=True):
        keep_params(self, locals())

    def _estimator(self, y, groups):
        from sklearn.neighbors import KNeighborsClassifier

        self.n_neighbors_ = min(self.n_neighbors, len(y))
        return KNeighborsClassifier(n_neighbors=self.n_neighbors_, weights=self.weights)


def fresh(estimator, **params):
    """An unfitted copy of ``estimator`` with ``params`` set (``sklearn.base.clone`` + ``set_params``)."""
    copy = clone(estimator)
    return copy.set_params(**params) if params else copy
