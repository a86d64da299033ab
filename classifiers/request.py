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
    pair-order swap and noise on training rows. ``device``: 'cuda' runs xgboost / mlp members on the GPU
    (``BackendUnavailableError`` when there is none), 'cpu' forces the CPU. ``reference`` / ``timestamps`` /
    ``epochs``: for models that learn from images (xcnn). ``model_params``: extra parameters of the model
    (e.g. ``{"voting": "hard"}``), ``n_boot``: bootstrap resamples of the test intervals, ``progress``: a
    progress bar on stderr.
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
    augment: bool = False
    device: str | None = None
    reference: str | None = None
    timestamps: bool | None = None
    epochs: int | None = None
    model_params: dict | None = None
    n_boot: int = 1000
    progress: bool = True

    @classmethod
    def from_options(cls, options: dict) -> FitRequest:
        """The request from a dict of parsed options (keys that are not fields are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in options.items() if k in names})
