"""The Grad-CAM section of a run's report: where the network looked, for its worst and best test units.

``gradcam_section(store, row, predictions, directory)`` is called by ``classifiers.report.write_report``
and returns HTML (empty for runs it cannot explain). Two kinds of run are explained:

* ``fit finetune`` runs: the fine-tuned timm network saved with the run (its first seed), explained at
  its last feature map (``extractors.gradcam.classifier_forward``);
* feature-model runs whose model is linear (``logistic``) on one CNN embedding table of the unit itself
  (``fit logistic --features efficientnet_b0``): the CNN is rebuilt from the table's provenance and the
  fitted model's class scores (its centred log-probabilities, ``W f(x) + b``) are differentiated through it
  (``extractors.gradcam.embedding_forward``).

For the first seed's held-out test units (training units when the run has no test set) the ``n`` with
the lowest probability of their true class (worst) and the ``n`` with the highest (best) are shown: the
network's input and the Grad-CAM map of the class it *predicted* blended on it, one PNG per unit
(``gradcam_worst_1.png``...). A run that cannot be explained gets a one-line reason instead of maps.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from features.errors import ChronofeatError, EvaluationError

__all__ = ["gradcam_section", "choose_units", "ExplainedUnit"]


@dataclass(frozen=True)
class ExplainedUnit:
    """One unit to draw: which list it is in, its key, subject, truth, prediction and p(true class)."""

    group: str  # 'worst' | 'best'
    rank: int
    key: str
    subject: str
    y_true: str
    y_pred: str
    p_true: float


def choose_units(predictions: list[dict], member: str, *, n: int = 3) -> tuple[str, list[ExplainedUnit]]:
    """The ``n`` worst and ``n`` best units of ``member``'s first-seed test predictions (train if none),
    by the probability given to the true class; returns (where they come from, the units)."""
    mine = [p for p in predictions if p["member"] == member and p["y_true"] is not None]
    if not mine:
        return "none", []
    seed = min(p["seed"] for p in mine)
    split = "test" if any(p["split"] == "test" and p["seed"] == seed for p in mine) else "train"
    rows = [p for p in mine if p["split"] == split and p["seed"] == seed]
    scored = sorted(rows, key=lambda p: (dict(p["proba"]).get(p["y_true"], 0.0), p["key"]))
    n = min(n, len(scored) // 2) or min(1, len(scored))

    def unit(group: str, rank: int, p: dict) -> ExplainedUnit:
        return ExplainedUnit(group, rank, p["key"], p["subject"], p["y_true"], p["y_pred"],
                             float(dict(p["proba"]).get(p["y_true"], 0.0)))

    chosen = [unit("worst", i + 1, p) for i, p in enumerate(scored[:n])]
    chosen += [unit("best", i + 1, p) for i, p in enumerate(reversed(scored[len(scored) - n:]))]
    return f"{split} units of seed {seed}", chosen


class _NotApplicable(Exception):
    """The run is not one Grad-CAM can explain (no CNN behind its features, an ensemble): no section at all."""


@dataclass
class _Explainer:
    """What draws the maps of one run: its forward, the class order of its scores, the inputs' recipe."""

    forward: object
    classes: list
    input: str
    reference: str
    preprocess: object
    description: str


def _finetune_explainer(store, row: dict) -> _Explainer:
    from extractors.gradcam import classifier_forward
    from extractors.timm_classifier import load_classifier, recipe_from_dict
    from store.runs import load_model

    state = load_model(store, row["run_id"])
    if not isinstance(state, dict) or state.get("state_dict") is None:
        raise EvaluationError("the run's artifact holds no network")
    network = load_classifier(state["model"], state["state_dict"], len(state["classes"]))
    return _Explainer(classifier_forward(network), list(state["classes"]), state["input"],
                      state.get("reference") or "absolute", recipe_from_dict(state["preprocess"]),
                      f"fine-tuned {state['model']} (seed {state.get('seed', 0)}), explained at its last feature map")


def _linear_explainer(store, row: dict, images_of) -> _Explainer:
    """The frozen CNN behind the run's one feature table + the fitted model as a linear head."""
    from classifiers._registry import is_ensemble
    from extractors.gradcam import affine_head, centred_log_proba, embedding_forward, feature_table_network
    from features.sets import parse_feature_set
    from store.runs import load_model
    from store.tables import table_kv_metadata

    table = row["feature_tables"][0]
    if is_ensemble(row["model"]) or table_kv_metadata(store, table).get("chronofeat.producer") != "extractor:cnn":
        raise _NotApplicable
    fitted = load_model(store, row["run_id"])
    sets = list(getattr(fitted, "feature_sets", []) or [])
    terms = parse_feature_set(sets[0]).terms if len(sets) == 1 else ()
    if len(terms) != 1 or terms[0].mode is not None:
        raise EvaluationError(f"Grad-CAM explains a model on one CNN embedding table of the unit itself; this run's "
                              f"features are {', '.join(sets)}")
    rebuilt = feature_table_network(store, terms[0].table)
    estimator = fitted.estimator
    classes = [str(c) for c in estimator.classes_]
    explainer = _Explainer(None, classes, rebuilt.input, rebuilt.reference, rebuilt.preprocess,
                           f"frozen {rebuilt.model} (table {terms[0].table}, layer {rebuilt.layer}) + the fitted "
                           f"{row['model']} as a linear head on its embedding")
    images = images_of(explainer)
    anchors = _embeddings(rebuilt.network, rebuilt.layer, images)
    head = affine_head(centred_log_proba(estimator.predict_proba), anchors)
    explainer.forward = embedding_forward(rebuilt.network, rebuilt.layer, head)
    return explainer


def _embeddings(network, layer: str, images: np.ndarray) -> np.ndarray:
    """The embeddings (n, d) float64 the frozen network gives ``images`` (what the table holds)."""
    import torch

    from extractors.gradcam import embedding_of

    with torch.no_grad():
        return np.vstack([embedding_of(network, layer, torch.from_numpy(images[i:i + 16]))[1].double().cpu().numpy()
                          for i in range(0, len(images), 16)])


def _unit_images(store, dataset: str, explainer: _Explainer, units: list[ExplainedUnit]) -> np.ndarray:
    """The network inputs (n, 3, H, W) of ``units``, in their order."""
    from extractors.timm_classifier import INPUT_KEYS, input_units, unit_images

    table = input_units(store, dataset, input=explainer.input, reference=explainer.reference)
    keys = table.column(INPUT_KEYS[explainer.input]).to_pylist()
    position = {k: i for i, k in enumerate(keys)}
    missing = [u.key for u in units if u.key not in position]
    if missing:
        raise EvaluationError(f"{len(missing)} explained unit(s) are no longer in the dataset (e.g. {missing[0]})")
    read = unit_images(store, table.take([position[u.key] for u in units]), explainer.input, explainer.preprocess,
                       progress=False)
    if len(read.rows) != len(units):
        raise EvaluationError(f"{len(units) - len(read.rows)} explained unit(s) could not be read: {read.failed[0][2]}")
    return read.images


def _write_png(path: Path, image: np.ndarray, cam: np.ndarray) -> None:
    """The network's input (3 channels as RGB) and the overlay side by side, at least 192 px high."""
    from PIL import Image

    from extractors.gradcam import overlay

    shown = np.round(255 * np.clip(image.transpose(1, 2, 0), 0, 1)).astype(np.uint8)  # the composite in colour
    both = np.concatenate([shown, np.full((shown.shape[0], 4, 3), 255, np.uint8), overlay(image, cam)], axis=1)
    picture = Image.fromarray(both)
    scale = max(1, int(np.ceil(192 / both.shape[0])))
    picture.resize((both.shape[1] * scale, both.shape[0] * scale), Image.Resampling.NEAREST).save(path)


def _figures(directory: Path, units: list[ExplainedUnit], images: np.ndarray, maps: np.ndarray) -> str:
    parts = []
    for unit, image, cam in zip(units, images, maps, strict=True):
        name = f"gradcam_{unit.group}_{unit.rank}.png"
        _write_png(directory / name, image, cam)
        caption = (f"{unit.group} {unit.rank}: {unit.key[:12]} (subject {unit.subject[:8]}), true {unit.y_true}, "
                   f"predicted {unit.y_pred}, p(true) {unit.p_true:.2f}; map of '{unit.y_pred}'")
        parts.append(f'<figure><img src="{name}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}'
                     "</figcaption></figure>")
    return "".join(parts)


def gradcam_section(store, row: dict, predictions: list[dict], directory: Path, *, n: int = 3,
                    method: str = "gradcam") -> str:
    """HTML of the Grad-CAM section for run ``row`` (PNGs written into ``directory``); '' when the run is
    neither a fine-tuned network nor a model on exactly one feature table."""
    if row["model"] != "finetune" and len(row.get("feature_tables") or []) != 1:
        return ""
    where, units = choose_units(predictions, row["model"], n=n)
    title = "<h2>Grad-CAM</h2>"
    if not units:
        return f"{title}<p>No labelled predictions to explain.</p>"
    try:
        from extractors.gradcam import grad_cam

        cache = {}

        def images_of(explainer: _Explainer) -> np.ndarray:
            if "x" not in cache:
                cache["x"] = _unit_images(store, row["dataset"], explainer, units)
            return cache["x"]

        explainer = (_finetune_explainer(store, row) if row["model"] == "finetune"
                     else _linear_explainer(store, row, images_of))
        images = images_of(explainer)
        targets = [explainer.classes.index(u.y_pred) for u in units]
        maps = grad_cam(explainer.forward, images, targets, method=method)
    except _NotApplicable:
        return ""
    except (ChronofeatError, KeyError, ValueError) as exc:
        return f"{title}<p>Grad-CAM maps not drawn: {html.escape(str(exc))}.</p>"
    return (f"{title}<p>{html.escape(method)} of {html.escape(explainer.description)}: the {len(units) // 2 or 1} "
            f"worst and best {html.escape(where)} by the probability of their true class. Left: the network's input; "
            f"right: the map of the predicted class (red = most evidence).</p>"
            + _figures(directory, units, images, maps))
