"""Grad-CAM (and Grad-CAM++) class-activation maps for networks chronofeat trains or extracts with.

Selvaraju et al.'s Grad-CAM: for a class score ``y_c`` and a convolutional feature map ``A`` (C, h, w),
the channel weights are the spatially averaged gradients ``alpha_k = mean_ij dy_c/dA_kij`` and the map is
``ReLU(sum_k alpha_k A_k)``, upsampled to the image and scaled to [0, 1] per image. Grad-CAM++ (Chattopadhay
et al.) weights each position's positive gradient by its second-order coefficient instead. The IMPC paper
(seed 003) shows such maps for its fine-tuned EfficientNet / ConvNeXt classifiers.

A *forward* here is a function ``images (N, 3, H, W) in [0, 1] -> (A, scores)``: the map to explain and
the class scores computed from it. Three are provided:

* ``module_forward(model, layer)`` — any ``nn.Module`` returning scores, explained at the output of its
  submodule ``layer`` (a forward hook);
* ``classifier_forward(network)`` — a fine-tuned timm classifier (``extractors.timm_classifier.Normalised``)
  explained at its last feature map (``forward_features``, the input of the classifier head);
* ``embedding_forward(network, layer, head)`` — a frozen CNN (the one a CNN feature table was extracted
  with, ``feature_table_network``) followed by a linear head ``scores = W f(x) + b`` on its embedding ``f``
  (a logistic regression fitted on the table: ``affine_head`` recovers ``W`` and ``b`` from any model whose
  centred log-probabilities are affine in the features, and refuses one whose are not).

``grad_cam(forward, images, targets)`` returns the maps (N, H, W); ``overlay`` blends one onto its image.
Maps are computed in float32 with gradients enabled and the network in eval mode.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from features.errors import EvaluationError, ParameterError, WeightsError

__all__ = [
    "METHODS",
    "grad_cam",
    "module_forward",
    "classifier_forward",
    "embedding_of",
    "embedding_forward",
    "LinearHead",
    "affine_head",
    "centred_log_proba",
    "FeatureTableNetwork",
    "feature_table_network",
    "overlay",
    "mass_in",
]

METHODS = ("gradcam", "gradcam++")


def _maps(activation, gradient, size: tuple[int, int], method: str):
    """Class-activation maps (N, H, W) in [0, 1] from a map ``activation`` and its gradient (N, C, h, w)."""
    import torch

    if method == "gradcam":
        weights = gradient.mean(dim=(2, 3), keepdim=True)
    else:  # Grad-CAM++: alpha = g^2 / (2 g^2 + sum(A) g^3), weights = sum(alpha * relu(g))
        g2, g3 = gradient.pow(2), gradient.pow(3)
        denominator = 2 * g2 + activation.sum(dim=(2, 3), keepdim=True) * g3
        alpha = g2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
        weights = (alpha * torch.relu(gradient)).sum(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * activation).sum(dim=1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=size, mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(dim=1).values.view(-1, 1, 1)
    return torch.where(peak > 0, cam / peak.clamp_min(1e-12), torch.zeros_like(cam))


def grad_cam(forward: Callable, images, targets, *, method: str = "gradcam", batch_size: int = 16) -> np.ndarray:
    """Maps (N, H, W) float32 in [0, 1] of class ``targets`` (N ints) for ``images`` (N, C, H, W).

    ``forward(x) -> (A, scores)``: ``A`` the (n, C, h, w) map to explain, ``scores`` (n, K) computed from
    it (see the module docstring). An all-zero map means no positive evidence for the class.
    """
    import torch

    if method not in METHODS:
        raise ParameterError(f"The 'method' parameter of grad_cam must be one of {METHODS}. Got {method!r} instead.")
    images = torch.as_tensor(images, dtype=torch.float32)
    targets = torch.as_tensor(np.asarray(targets), dtype=torch.long).view(-1)
    if len(targets) != len(images):
        raise ParameterError(
            f"grad_cam needs one target class per image: {len(images)} images, {len(targets)} targets."
        )
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].detach().clone().requires_grad_(True)  # frozen networks too
        with torch.enable_grad():
            activation, scores = forward(x)
            if activation.ndim != 4:
                raise ParameterError(
                    f"Grad-CAM needs a convolutional map (N, C, h, w); the explained layer gave shape "
                    f"{tuple(activation.shape)} (a transformer's tokens?). Choose a convolutional layer."
                )
            chosen = scores.float().gather(1, targets[start:start + batch_size].to(scores.device).view(-1, 1))
            gradient, = torch.autograd.grad(chosen.sum(), activation)
        with torch.no_grad():
            out.append(_maps(activation.detach().float(), gradient.float(), tuple(x.shape[-2:]), method).cpu())
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, *images.shape[-2:]), np.float32)


def module_forward(model, layer: str) -> Callable:
    """A forward explaining ``model`` (images -> scores (N, K)) at the output of its submodule ``layer``."""
    modules = dict(model.named_modules())
    if layer not in modules:
        raise ParameterError(f"The model has no layer {layer!r}; its modules are: {', '.join(list(modules)[1:20])}...")

    def forward(x):
        captured = {}
        hook = modules[layer].register_forward_hook(lambda module, inputs, output: captured.setdefault("a", output))
        try:
            model.eval()
            scores = model(x.to(_device(model)))
        finally:
            hook.remove()
        return captured["a"], scores

    return forward


def _device(model):
    return next(iter(model.parameters())).device


def classifier_forward(network) -> Callable:
    """A forward explaining a fine-tuned timm classifier (``Normalised``) at its last feature map."""

    def forward(x):
        network.eval()
        activation = network.features(x.to(_device(network)))
        return activation, network.head(activation)

    return forward


@dataclass(frozen=True)
class LinearHead:
    """Class scores ``W f + b`` on an embedding ``f``: ``W`` (K, d), ``b`` (K,), in the classes' order."""

    W: np.ndarray
    b: np.ndarray

    def scores(self, X: np.ndarray) -> np.ndarray:
        """(n, K) scores of embeddings ``X`` (n, d)."""
        return np.asarray(X, np.float64) @ self.W.T + self.b


def centred_log_proba(predict_proba: Callable) -> Callable:
    """``X -> log p(X) - mean_k log p_k(X)``: for a softmax / logistic model these are its logits up to a
    per-row shift (the class score Grad-CAM differentiates), affine in ``X`` when the model is linear."""

    def scores(X: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            logp = np.log(np.asarray(predict_proba(np.asarray(X, np.float64)), np.float64))
        return logp - logp.mean(axis=1, keepdims=True)

    return scores


def affine_head(score: Callable, anchors: np.ndarray, *, step: float | None = None, tol: float = 1e-4) -> LinearHead:
    """``W`` and ``b`` of ``score`` (X (n, d) -> (n, K)), read by finite differences around ``anchors[0]``.

    ``anchors`` are realistic inputs (n >= 2, e.g. embeddings of the units to explain); the affine model is
    checked on every anchor and ``EvaluationError`` is raised when it does not reproduce the scores (a
    non-linear model: RBF SVM, forest, naive Bayes) or they are not finite (saturated probabilities).
    """
    anchors = np.asarray(anchors, np.float64)
    x0 = anchors[0]
    d = x0.shape[0]
    h = float(step if step is not None else max(float(np.std(anchors)), 1e-3))
    probes = np.vstack([x0, x0 + h * np.eye(d)])
    values = score(probes)
    if not np.all(np.isfinite(values)):
        raise EvaluationError("The model's class scores are not finite around the explained units (probabilities of "
                              "exactly 0 or 1); Grad-CAM through it is undefined.")
    b0 = values[0]
    W = ((values[1:] - b0) / h).T  # (K, d)
    head = LinearHead(W, b0 - W @ x0)
    actual = score(anchors)
    error = float(np.max(np.abs(head.scores(anchors) - actual))) if np.all(np.isfinite(actual)) else np.inf
    if not error <= tol * (1.0 + float(np.max(np.abs(actual)))):
        raise EvaluationError(
            f"The model's class scores are not a linear function of the embedding (deviation {error:.3g}); Grad-CAM "
            "through a frozen CNN needs a linear head such as logistic regression."
        )
    return head


def embedding_of(network, layer: str, x):
    """``(A, f)``: the explained map and the embedding frozen CNN ``network`` (``Normalised``, timm inside)
    gives the [0, 1] batch ``x`` at ``layer`` — ``'pooled'`` (the pre-logits embedding of the last feature
    map ``A``) or a timm module path (its output ``A``, averaged over space), as the CNN extractor computes it.
    """
    network.eval()
    x = x.to(_device(network))
    if layer == "pooled":
        activation = network.features(x)
        return activation, network.net.forward_head(activation, pre_logits=True).flatten(1)
    activation = _layer_output(network, layer, x)
    return activation, activation.mean(dim=(2, 3))


def embedding_forward(network, layer: str, head: LinearHead) -> Callable:
    """A forward explaining frozen CNN ``network`` at ``layer`` (see ``embedding_of``) followed by the
    linear ``head`` on its embedding."""
    import torch

    W = torch.as_tensor(head.W, dtype=torch.float32)
    b = torch.as_tensor(head.b, dtype=torch.float32)

    def forward(x):
        activation, embedding = embedding_of(network, layer, x)
        return activation, embedding.float() @ W.to(embedding.device).T + b.to(embedding.device)

    return forward


class _Stop(Exception):
    """Raised by the layer tap once the wanted module has run."""


def _layer_output(network, layer: str, x):
    captured = {}

    def tap(module, inputs, output):
        captured["a"] = output[0] if isinstance(output, (tuple, list)) else output
        raise _Stop

    hook = dict(network.net.named_modules())[layer].register_forward_hook(tap)
    try:
        with contextlib.suppress(_Stop):
            network(x)
    finally:
        hook.remove()
    if "a" not in captured:
        raise ParameterError(f"Layer {layer!r} did not run in the network's forward pass.")
    return captured["a"]


@dataclass
class FeatureTableNetwork:
    """The frozen CNN a feature table was extracted with, rebuilt: network (``Normalised``, no classifier
    used), the table's layer, input kind, reference mode, preprocessing and weights identity."""

    network: object
    model: str
    layer: str
    input: str
    reference: str
    preprocess: object  # how units become its inputs (extractors.timm_classifier.recipe_from_dict)
    tensor_sha256: str


def _table_metadata(store, table: str) -> dict:
    from store.tables import table_kv_metadata

    meta = table_kv_metadata(store, table)
    if meta.get("chronofeat.producer") != "extractor:cnn":
        raise EvaluationError(
            f"Table {table!r} was not written by the CNN extractor (producer {meta.get('chronofeat.producer')!r}); "
            "Grad-CAM needs the network behind the features."
        )
    return {k[len("chronofeat."):]: v for k, v in meta.items() if k.startswith("chronofeat.")}


def feature_table_network(store, table: str) -> FeatureTableNetwork:
    """Rebuild the CNN behind feature ``table`` from its provenance (model, layer, input, weights).

    ``WeightsError`` when the weights resolve to other tensors than the table recorded (e.g. a different
    import), so a map is never drawn for a network that did not compute the features.
    """
    from extractors._cnn_model import arch_info, build_network
    from extractors.timm_classifier import Normalised, recipe_from_dict
    from store.weights import resolve_weights

    meta = _table_metadata(store, table)
    settings = json.loads(meta["settings"])
    config = json.loads(meta["params"])
    recorded = json.loads(meta.get("weights") or "{}")
    pre = json.loads(meta["preprocess"])
    model = settings["model"]
    resolved = resolve_weights(store, model, settings["weights"], download=False)
    net, digest = build_network(model, resolved)
    if recorded.get("tensor_sha256") and recorded["tensor_sha256"] != digest:
        raise WeightsError(
            f"Table {table!r} was computed with weights {recorded['tensor_sha256'][:12]}; '{settings['weights']}' "
            f"now resolves to {digest[:12]} ({resolved.describe()}), so its network cannot be rebuilt."
        )
    info = arch_info(model)
    network = Normalised(net.float(), info.mean, info.std).eval()
    for p in network.parameters():
        p.requires_grad_(False)
    preprocess = recipe_from_dict(pre)
    return FeatureTableNetwork(network, model, config["layer"], settings["input"],
                               settings.get("reference", "absolute"), preprocess, digest)


def overlay(image: np.ndarray, cam: np.ndarray, *, alpha: float = 0.45) -> np.ndarray:
    """``image`` ((H, W) or (3, H, W) in [0, 1]) with ``cam`` (H, W in [0, 1]) blended on as a heat map:
    (H, W, 3) uint8."""
    from matplotlib import colormaps

    grey = image.mean(axis=0) if image.ndim == 3 else image
    base = np.repeat(np.clip(grey, 0, 1)[..., None], 3, axis=2)
    heat = colormaps["jet"](np.clip(cam, 0, 1))[..., :3]
    weight = alpha * np.clip(cam, 0, 1)[..., None] ** 0.5
    return np.round(255 * ((1 - weight) * base + weight * heat)).astype(np.uint8)


def mass_in(cam: np.ndarray, mask: np.ndarray) -> float:
    """The share of a map's total mass that lies inside boolean ``mask`` (0 for an all-zero map)."""
    total = float(cam.sum())
    return float(cam[mask].sum()) / total if total > 0 else 0.0
