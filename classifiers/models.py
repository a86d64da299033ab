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

from typing import ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.feature_selection import SelectorMixin
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import LabelEncoder, StandardScaler
from sklearn.utils.validation import check_is_fitted, validate_data

from classifiers._registry import register_model
from features.errors import BackendUnavailableError, EvaluationError, check_param
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
    "LowVarianceFilter",
    "cuda_available",
    "fresh",
]

def _is_number(value, *, low=None, high=None, low_open=False) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    if low is not None and (value <= low if low_open else value < low):
        return False
    return high is None or value <= high


def _is_int(value, low) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= low


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

    Subclasses define ``__init__`` (keyword-only, storing ``variance_threshold``, ``scale`` and their
    own parameters), ``validate_params``, ``_estimator(y, groups)`` returning an unfitted scikit-learn
    classifier for encoded labels, and ``search_space(level)``.
    """

    name: ClassVar[str] = "model"
    combines_members: ClassVar[bool] = False
    uses_scaling: ClassVar[bool] = True

    # --- contract -------------------------------------------------------------------------
    def validate_params(self) -> None:
        """Raise ``ParameterError`` (scikit-learn wording) for any parameter out of range."""
        owner = type(self).__name__
        t = self.variance_threshold
        check_param(owner, "variance_threshold", t, kind="a float in [0, inf)", ok=_is_number(t, low=0))
        check_param(owner, "scale", self.scale, kind="a bool", ok=isinstance(self.scale, bool))

    def check_available(self) -> None:
        """Raise ``BackendUnavailableError`` when a device or library this model was asked for is absent."""

    def search_space(self, level: str) -> dict[str, list]:
        """Parameter grid (``{name: values}``) tried by ``--search level``; ``{}`` for ``none``."""
        return {}

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

    def fit(self, X, y, groups=None):
        """Learn from ``X`` (n, d) and ``y`` (n,) labels or (n, L) 0/1 multi-label; return ``self``."""
        self.validate_params()
        self.check_available()
        X = np.asarray(X)
        y = np.asarray(y)
        groups = None if groups is None else np.asarray(groups)
        self.n_features_in_ = X.shape[1]
        if y.ndim == 2:
            self.multilabel_ = True
            self.classes_ = np.arange(y.shape[1])
            self.label_models_ = []
            for j in range(y.shape[1]):
                column = y[:, j].astype(int)
                if len(np.unique(column)) < 2:  # a label never (or always) present in training
                    self.label_models_.append(float(column.mean()))
                else:
                    self.label_models_.append(self._fit_one(X, column, groups))
            return self
        self.multilabel_ = False
        self.encoder_ = LabelEncoder().fit(y)
        self.classes_ = self.encoder_.classes_
        if len(self.classes_) < 2:
            raise EvaluationError(
                f"{self.name}: the training rows hold a single class ({self.classes_[0]!r}); a classifier "
                "needs at least two. Choose another target, or a split that keeps every class in training."
            )
        self.pipeline_ = self._fit_one(X, self.encoder_.transform(y), groups)
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (n, k) in ``classes_`` order; multi-label: P(label) per column (n, L)."""
        X = np.asarray(X)
        if self.multilabel_:
            columns = []
            for model in self.label_models_:
                if isinstance(model, float):
                    columns.append(np.full(len(X), model))
                else:
                    columns.append(model.predict_proba(X)[:, 1])
            return np.column_stack(columns)
        return self.pipeline_.predict_proba(X)

    def predict(self, X) -> np.ndarray:
        """Predicted labels (n,), or a 0/1 indicator (n, L) for multi-label (P >= 0.5)."""
        proba = self.predict_proba(X)
        if self.multilabel_:
            return (proba >= 0.5).astype(int)
        return self.classes_[np.argmax(proba, axis=1)]


@register_model("logistic")
class Logistic(ChronoClassifier):
    """L2-regularised logistic regression (multinomial softmax for more than two classes)."""

    def __init__(self, *, C=1.0, max_iter=2000, class_weight=None, variance_threshold=0.0, scale=True, random_state=None):
        self.C = C
        self.max_iter = max_iter
        self.class_weight = class_weight
        self.variance_threshold = variance_threshold
        self.scale = scale
        self.random_state = random_state

    def validate_params(self) -> None:
        super().validate_params()
        check_param("Logistic", "C", self.C, kind="a float in (0, inf)", ok=_is_number(self.C, low=0, low_open=True))
        check_param("Logistic", "max_iter", self.max_iter, kind="an int in [1, inf)", ok=_is_int(self.max_iter, 1))
        check_param("Logistic", "class_weight", self.class_weight, kind="None or 'balanced'",
                    ok=self.class_weight in (None, "balanced"))

    def search_space(self, level: str) -> dict[str, list]:
        if level == "quick":
            return {"C": [0.01, 0.1, 1.0, 10.0]}
        if level == "thorough":
            return {"C": [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0], "class_weight": [None, "balanced"]}
        return {}

    def _estimator(self, y, groups):
        from sklearn.linear_model import LogisticRegression

        # l1_ratio=0 is the L2 penalty (``penalty`` is deprecated in scikit-learn 1.8+); lbfgs fits
        # the multinomial (softmax) loss when there are more than two classes.
        return LogisticRegression(C=self.C, l1_ratio=0.0, solver="lbfgs", max_iter=self.max_iter,
                                  class_weight=self.class_weight, random_state=self.random_state)


@register_model("svm_rbf")
class SvmRbf(ChronoClassifier):
    """RBF-kernel SVM with probabilities by Platt scaling on subject-grouped inner folds."""

    def __init__(self, *, C=1.0, gamma="scale", class_weight=None, calibration_folds=3,
                 variance_threshold=0.0, scale=True, random_state=None):
        self.C = C
        self.gamma = gamma
        self.class_weight = class_weight
        self.calibration_folds = calibration_folds
        self.variance_threshold = variance_threshold
        self.scale = scale
        self.random_state = random_state

    def validate_params(self) -> None:
        super().validate_params()
        check_param("SvmRbf", "C", self.C, kind="a float in (0, inf)", ok=_is_number(self.C, low=0, low_open=True))
        check_param("SvmRbf", "gamma", self.gamma, kind="'scale', 'auto' or a float in (0, inf)",
                    ok=self.gamma in ("scale", "auto") or _is_number(self.gamma, low=0, low_open=True))
        check_param("SvmRbf", "class_weight", self.class_weight, kind="None or 'balanced'",
                    ok=self.class_weight in (None, "balanced"))
        check_param("SvmRbf", "calibration_folds", self.calibration_folds, kind="an int in [2, inf)",
                    ok=_is_int(self.calibration_folds, 2))

    def search_space(self, level: str) -> dict[str, list]:
        if level == "quick":
            return {"C": [0.1, 1.0, 10.0]}
        if level == "thorough":
            return {"C": [0.1, 1.0, 10.0, 100.0], "gamma": ["scale", 1e-4, 1e-3, 1e-2]}
        return {}

    def _estimator(self, y, groups):
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.svm import SVC

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


@register_model("naive_bayes")
class NaiveBayes(ChronoClassifier):
    """Naive Bayes: Gaussian on scaled features (default), or multinomial on raw counts.

    Gaussian is the default because stored BoVW histograms are normalised (they sum to 1), which
    starves a multinomial model of evidence (on the CRMO demo's SIFT BoVW concatenation: macro F1
    0.66 Gaussian vs 0.48 multinomial). ``kind='multinomial'`` suits raw count features;
    ``kind='auto'`` picks multinomial when every training value is >= 0. The choice is ``kind_``.
    """

    def __init__(self, *, kind="gaussian", alpha=1.0, var_smoothing=1e-9, variance_threshold=0.0, scale=True):
        self.kind = kind
        self.alpha = alpha
        self.var_smoothing = var_smoothing
        self.variance_threshold = variance_threshold
        self.scale = scale

    def validate_params(self) -> None:
        super().validate_params()
        check_param("NaiveBayes", "kind", self.kind, kind="one of 'auto', 'gaussian', 'multinomial'",
                    ok=self.kind in ("auto", "gaussian", "multinomial"))
        check_param("NaiveBayes", "alpha", self.alpha, kind="a float in (0, inf)", ok=_is_number(self.alpha, low=0, low_open=True))
        check_param("NaiveBayes", "var_smoothing", self.var_smoothing, kind="a float in (0, inf)",
                    ok=_is_number(self.var_smoothing, low=0, low_open=True))

    def search_space(self, level: str) -> dict[str, list]:
        if level == "quick":
            return {"alpha": [0.1, 1.0], "var_smoothing": [1e-9, 1e-4]}
        if level == "thorough":
            return {"alpha": [0.01, 0.1, 0.5, 1.0, 2.0], "var_smoothing": [1e-9, 1e-6, 1e-3, 1e-1]}
        return {}

    def fit(self, X, y, groups=None):
        X = np.asarray(X)
        if self.kind == "auto":
            self.kind_ = "multinomial" if X.size and float(X.min()) >= 0.0 else "gaussian"
        else:
            self.kind_ = self.kind
        if self.kind_ == "multinomial" and X.size and float(X.min()) < 0.0:
            raise EvaluationError(
                "naive_bayes with kind='multinomial' needs non-negative features (histograms); this feature "
                "set has negative values (a 'diff' mode?). Use kind='gaussian' or a histogram feature set."
            )
        return super().fit(X, y, groups)

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

    def __init__(self, *, n_estimators=300, max_features="sqrt", min_samples_leaf=1, class_weight=None,
                 n_jobs=None, variance_threshold=0.0, scale=False, random_state=None):
        self.n_estimators = n_estimators
        self.max_features = max_features
        self.min_samples_leaf = min_samples_leaf
        self.class_weight = class_weight
        self.n_jobs = n_jobs
        self.variance_threshold = variance_threshold
        self.scale = scale
        self.random_state = random_state

    def validate_params(self) -> None:
        super().validate_params()
        check_param("RandomForest", "n_estimators", self.n_estimators, kind="an int in [1, inf)", ok=_is_int(self.n_estimators, 1))
        check_param("RandomForest", "min_samples_leaf", self.min_samples_leaf, kind="an int in [1, inf)",
                    ok=_is_int(self.min_samples_leaf, 1))
        check_param("RandomForest", "max_features", self.max_features, kind="'sqrt', 'log2' or a float in (0, 1]",
                    ok=self.max_features in ("sqrt", "log2") or _is_number(self.max_features, low=0, high=1, low_open=True))
        check_param("RandomForest", "class_weight", self.class_weight, kind="None, 'balanced' or 'balanced_subsample'",
                    ok=self.class_weight in (None, "balanced", "balanced_subsample"))

    def search_space(self, level: str) -> dict[str, list]:
        if level == "quick":
            return {"min_samples_leaf": [1, 3], "max_features": ["sqrt", 0.2]}
        if level == "thorough":
            return {"n_estimators": [300, 600], "min_samples_leaf": [1, 2, 5], "max_features": ["sqrt", "log2", 0.2],
                    "class_weight": [None, "balanced"]}
        return {}

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

    def __init__(self, *, n_estimators=200, max_depth=4, learning_rate=0.1, subsample=1.0, colsample_bytree=1.0,
                 device="cpu", n_jobs=None, variance_threshold=0.0, scale=False, random_state=None):
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.device = device
        self.n_jobs = n_jobs
        self.variance_threshold = variance_threshold
        self.scale = scale
        self.random_state = random_state

    def validate_params(self) -> None:
        super().validate_params()
        check_param("XGBoost", "n_estimators", self.n_estimators, kind="an int in [1, inf)", ok=_is_int(self.n_estimators, 1))
        check_param("XGBoost", "max_depth", self.max_depth, kind="an int in [1, inf)", ok=_is_int(self.max_depth, 1))
        check_param("XGBoost", "learning_rate", self.learning_rate, kind="a float in (0, 1]",
                    ok=_is_number(self.learning_rate, low=0, high=1, low_open=True))
        for name in ("subsample", "colsample_bytree"):
            value = getattr(self, name)
            check_param("XGBoost", name, value, kind="a float in (0, 1]", ok=_is_number(value, low=0, high=1, low_open=True))
        check_param("XGBoost", "device", self.device, kind="'cpu' or 'cuda'", ok=self.device in ("cpu", "cuda"))

    def check_available(self) -> None:
        if self.device == "cuda" and not cuda_available():
            raise BackendUnavailableError(
                "xgboost was asked to run on device='cuda' but no CUDA device is usable here (XGBoost needs a "
                "CUDA build and a visible GPU). Run on a machine with a GPU, or use device='cpu'."
            )

    def search_space(self, level: str) -> dict[str, list]:
        if level == "quick":
            return {"max_depth": [3, 6], "learning_rate": [0.05, 0.2]}
        if level == "thorough":
            return {"max_depth": [2, 4, 6, 8], "learning_rate": [0.03, 0.1, 0.3], "subsample": [0.7, 1.0],
                    "colsample_bytree": [0.5, 1.0]}
        return {}

    def _estimator(self, y, groups):
        from xgboost import XGBClassifier

        return XGBClassifier(n_estimators=self.n_estimators, max_depth=self.max_depth, learning_rate=self.learning_rate,
                             subsample=self.subsample, colsample_bytree=self.colsample_bytree, tree_method="hist",
                             device=self.device, n_jobs=usable_cores() if self.n_jobs is None else self.n_jobs,
                             random_state=0 if self.random_state is None else int(self.random_state))


@register_model("knn")
class KNN(ChronoClassifier):
    """k-nearest neighbours on scaled features (k capped at the number of training rows)."""

    def __init__(self, *, n_neighbors=5, weights="uniform", variance_threshold=0.0, scale=True):
        self.n_neighbors = n_neighbors
        self.weights = weights
        self.variance_threshold = variance_threshold
        self.scale = scale

    def validate_params(self) -> None:
        super().validate_params()
        check_param("KNN", "n_neighbors", self.n_neighbors, kind="an int in [1, inf)", ok=_is_int(self.n_neighbors, 1))
        check_param("KNN", "weights", self.weights, kind="'uniform' or 'distance'", ok=self.weights in ("uniform", "distance"))

    def search_space(self, level: str) -> dict[str, list]:
        if level == "quick":
            return {"n_neighbors": [3, 5, 9]}
        if level == "thorough":
            return {"n_neighbors": [1, 3, 5, 9, 15], "weights": ["uniform", "distance"]}
        return {}

    def _estimator(self, y, groups):
        from sklearn.neighbors import KNeighborsClassifier

        self.n_neighbors_ = min(self.n_neighbors, len(y))
        return KNeighborsClassifier(n_neighbors=self.n_neighbors_, weights=self.weights)


def fresh(estimator, **params):
    """An unfitted copy of ``estimator`` with ``params`` set (``sklearn.base.clone`` + ``set_params``)."""
    copy = clone(estimator)
    return copy.set_params(**params) if params else copy
