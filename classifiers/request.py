"""What ``fit MODEL`` was asked to do: every option of ``cli.py fit`` in one frozen value."""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["FitRequest"]


@dataclass(frozen=True)
class FitRequest:
    """Every option of ``cli.py fit``; None means "the model's or the dataset profile's default".

    ``model``: a registered model (``cli.py fit --help`` lists them), ``ensemble`` / ``stacking`` combine
    members. ``dataset``: None picks the only dataset with features. ``target``: None (profile default),
    a named target (``binary``), a column, or ``COLUMN=VALUE``. ``features``: a feature set
    (``inception_v3:diff+time``) for every member, or ``+time`` to extend the defaults. ``members``:
    ``'logistic=inception_v3:diff,svm_rbf=sift_bovw500:concat,naive_bayes'``. ``folds`` / ``seeds``: None =
    profile default (5 folds; 1 seed, IMPC 5). ``test_subjects``: None (profile), 'per-class', a fraction,
    0, or a file of subject keys. ``split``: auto | given. ``search``: none | quick | thorough. ``augment``:
    None = the model's default (feature models: off, pair-order swap and noise when on; xcnn: on).
    ``device``: 'cuda' runs xgboost / mlp members on the GPU (``BackendUnavailableError`` when there is
    none), 'cpu' forces the CPU. ``reference`` / ``timestamps`` / ``epochs``: for models that learn from
    images (xcnn). ``model_params``: extra parameters of the model
    (e.g. ``{"voting": "hard"}``), ``n_boot``: bootstrap resamples of the test intervals, ``progress``: a
    progress bar on stderr. ``variance_threshold``: drop features whose training-row variance is at most this
    (every member; None = 0, constant features only). ``voting`` (soft | hard), ``member_weights`` ('2,1,1', one
    per member) and ``calibrate`` (none | sigmoid | isotonic: members' probabilities calibrated on
    subject-grouped inner folds) configure the voting ensemble. ``search_metric``: what ``search`` maximises
    (``classifiers.search.SEARCH_METRICS``; None = macro F1, multi-label mean AUC).
    """

    model: str
    dataset: str | None = None
    target: str | None = None
    features: str | None = None
    members: str | None = None
    folds: int | None = None
    test_subjects: str | None = None
    seeds: int | None = None
    split: str = "auto"
    search: str = "none"
    augment: bool | None = None  # None: the model's default (xcnn: on; feature models, finetune: off)
    device: str | None = None
    reference: str | None = None
    timestamps: bool | None = None
    epochs: int | None = None
    model_params: dict | None = None
    n_boot: int = 1000
    progress: bool = True
    variance_threshold: float | None = None
    voting: str | None = None
    member_weights: str | None = None
    calibrate: str | None = None
    search_metric: str | None = None
    backbone: str | None = None  # finetune: the timm network (--model)
    input: str | None = None  # finetune: image | difference | multiview
    weights: str | None = None  # finetune: hub | random | checkpoint file | imported hash
    lr: float | None = None  # finetune: learning rate
    batch_size: int | None = None  # finetune: minibatch size
    image_size: int | None = None  # networks trained on images: input side in pixels
    patience: int | None = None  # xcnn: early-stopping patience in epochs (0: train every epoch)
    inits: int | None = None  # xcnn: networks per seed, each from its own initialisation, probabilities averaged
    exact: bool = False  # svm_rbf: the exact kernel SVM at any row count (no Nystroem approximation)
    compare_views: str | None = None  # hierarchical: IMPC DV vs LAT vs multiview with this backbone (classifiers.impc)

    @classmethod
    def from_options(cls, options: dict) -> FitRequest:
        """The request from a dict of parsed options (keys that are not fields are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in options.items() if k in names})
