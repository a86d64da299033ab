"""A timm network as an image classifier: its inputs, its weights and its normalisation.

Shared by ``fit finetune`` (end-to-end fine-tuning) and Grad-CAM (``extractors.gradcam``), so both see
exactly the inputs the CNN extractor feeds its networks (``extract --extractor cnn``):

* ``input_units(store, dataset, input=..., reference=...)`` — the work units of ``image`` (scans),
  ``difference`` (pairs of one reference mode) or ``multiview`` (IMPC specimens), as the extractor reads them;
* ``unit_images(store, units, input, preprocess)`` — every unit as a ``(3, H, W)`` float32 image in [0, 1]
  (intensity policy, registration and differencing, multiview composite, fit-and-pad: the extractor's
  recipe, ``extractors._cnn_data``), plus the units that could not be read;
* ``input_recipe(model, image_size)`` — the architecture's interpolation at ``image_size`` (None: timm's size);
* ``build_classifier(store, model, weights, n_classes)`` — the timm network with weights resolved by
  ``store.weights.resolve_weights`` ('hub': imported, cached or downloaded pretrained weights, offline a
  ``WeightsError`` at once; a checkpoint file; an imported weights hash; 'random') and a new classifier of
  ``n_classes`` outputs (the backbone is what is transferred; a checkpoint's classifier is not used);
* ``Normalised`` — the network behind the weights' mean/std normalisation: it takes [0, 1] images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from extractors._cnn_data import Preprocess, UnitImages, make_loader
from extractors._cnn_model import arch_info
from features.errors import ParameterError

__all__ = [
    "INPUT_UNITS",
    "INPUT_KEYS",
    "input_units",
    "input_recipe",
    "recipe_from_dict",
    "unit_images",
    "UnitImageSet",
    "build_classifier",
    "BuiltClassifier",
    "load_classifier",
    "Normalised",
]

INPUT_UNITS = {"image": "scans", "difference": "pairs", "multiview": "specimens"}
INPUT_KEYS = {"image": "scan_id", "difference": "pair_id", "multiview": "specimen_id"}


def input_units(store, dataset: str, *, input: str, reference: str = "absolute"):
    """The work units (Arrow table) of ``input`` for ``dataset``, exactly as the CNN extractor reads them."""
    from extractors.cnn import CNNEmbedding

    if input not in INPUT_UNITS:
        raise ParameterError(
            f"The 'input' parameter must be one of {', '.join(INPUT_UNITS)}. Got {input!r} instead."
        )
    return CNNEmbedding(input=input, reference=reference).units(store, dataset)


def recipe_from_dict(described: dict) -> Preprocess:
    """The ``Preprocess`` whose ``describe()`` gave ``described`` (as a run or a feature table records it)."""
    return Preprocess(size=tuple(int(v) for v in described["input_size"]),
                      interpolation=described.get("interpolation", "bicubic"),
                      intensity=described.get("intensity", "auto"))


def input_recipe(model: str, image_size: int | None, *, intensity: str = "auto") -> Preprocess:
    """How a unit becomes ``model``'s input: ``image_size`` square (None: the architecture's own size)."""
    info = arch_info(model)
    size = tuple(info.input_size[1:]) if image_size is None else (int(image_size), int(image_size))
    return Preprocess(size=size, interpolation=info.interpolation, intensity=intensity)


@dataclass
class UnitImageSet:
    """The images of some units: ``images`` (n, 3, H, W) float32 for the ``rows`` (indices into the units)
    that could be read, and ``failed``: (row, error class, message) of the others."""

    images: np.ndarray
    rows: np.ndarray
    failed: list


def unit_images(store, units, input: str, preprocess: Preprocess, *, progress: bool = True,
                workers: int = 0, batch_size: int = 32) -> UnitImageSet:
    """Read and preprocess every unit of ``units`` (a table from ``input_units``) into one array.

    A unit whose pixels cannot be used (any ``ChronofeatError``) is left out and listed in ``failed``.
    """
    import sys

    from tqdm.auto import tqdm

    from extractors._cnn_data import INPUT_COLUMNS

    columns = [c for c in INPUT_COLUMNS[input] if c in units.column_names]
    rows = units.select(columns).to_pylist()
    loader = make_loader(UnitImages(store, rows, input, preprocess), batch_size=batch_size, workers=workers,
                         pin_memory=False)
    images = np.zeros((len(rows), 3, *preprocess.size), np.float32)
    good: list[int] = []
    failed: list = []
    bar = tqdm(total=len(rows), desc=f"{input} inputs", unit="unit", disable=not progress, file=sys.stderr,
               leave=False)
    for indices, batch, bad in loader:
        if batch is not None:
            images[indices] = batch.numpy()
            good += list(indices)
        failed += bad
        bar.update(len(indices) + len(bad))
    bar.close()
    kept = np.array(sorted(good), dtype=np.int64)
    return UnitImageSet(images[kept], kept, failed)


class Normalised(nn.Module):
    """``net`` behind ``(x - mean) / std``: a [0, 1] batch (N, 3, H, W) in, ``net``'s output out.

    ``features(x)`` is the network's last feature map (timm's ``forward_features``) and ``head(a)`` its
    classifier on that map, so ``head(features(x)) == forward(x)`` (what Grad-CAM differentiates).
    """

    def __init__(self, net, mean, std):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def normalise(self, x):
        """``(x - mean) / std`` in ``x``'s dtype."""
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def features(self, x):
        """The last feature map (N, C, h, w) of a [0, 1] batch."""
        return self.net.forward_features(self.normalise(x))

    def head(self, activation):
        """Class scores (logits) from the last feature map."""
        return self.net.forward_head(activation)

    def forward(self, x):
        return self.net(self.normalise(x))


@dataclass
class BuiltClassifier:
    """A network ready to train or explain, and where its weights came from."""

    network: Normalised
    resolved: object  # store.weights.ResolvedWeights
    digest: str  # tensor_sha256 of the loaded backbone (classifier excluded)

    def describe(self) -> dict:
        """JSON-able record of the weights (for a run's configuration)."""
        r = self.resolved
        return {"source": r.source, "model": r.model, "hub": r.hub, "artifact": r.artifact,
                "file": r.path.name if r.path is not None and r.source == "file" else None,
                "file_sha256": r.file_sha256, "tensor_sha256": self.digest}


def build_classifier(store, model: str, weights: str, n_classes: int, *, seed: int = 0) -> BuiltClassifier:
    """timm's ``model`` with ``weights`` ('hub' | 'random' | a checkpoint file | an imported hash) and a
    classifier of ``n_classes`` outputs, behind its normalisation (``Normalised``, CPU, train mode off).

    The new classifier (and, for 'random', the whole network) is initialised under ``seed``; the global
    random state is left untouched. Raises ``WeightsError`` (offline and nothing cached, a file that does
    not fit the architecture) before anything is trained.
    """
    import timm

    from store.weights import check_model_name, load_weights_into, resolve_weights

    check_model_name(model)
    resolved = resolve_weights(store, model, weights)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        if resolved.source in ("hub-cache", "hub-download"):
            net = timm.create_model(model, pretrained=True, num_classes=int(n_classes),
                                    pretrained_cfg_overlay={"file": str(resolved.path)})
        else:
            net = timm.create_model(model, pretrained=False, num_classes=int(n_classes))
    digest = load_weights_into(net, resolved)
    info = arch_info(model)
    return BuiltClassifier(Normalised(net, info.mean, info.std).eval(), resolved, digest)


def load_classifier(model: str, state_dict: dict, n_classes: int) -> Normalised:
    """A fine-tuned network back from its ``state_dict`` (timm keys, ``n_classes`` outputs), eval mode, CPU."""
    import timm

    net = timm.create_model(model, pretrained=False, num_classes=int(n_classes))
    net.load_state_dict(state_dict)
    info = arch_info(model)
    return Normalised(net, info.mean, info.std).eval()
