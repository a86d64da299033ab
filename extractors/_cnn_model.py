"""The network side of the CNN extractor: timm architecture facts, layer names, device, precision.

* ``arch_info(model)`` — what timm says about an architecture (data config, feature stages, module
  names, embedding width), read from a copy on torch's ``meta`` device: no weights, no memory.
* ``resolve_layer(model, layer)`` — ``'pooled'`` (the model's pre-logits embedding), or an
  intermediate module, globally average-pooled to a vector. Accepted names: timm module paths
  (``blocks.2.1``, ``stages.2``, ``blocks.2.1.conv_dw``) — the feature stages of
  ``model.feature_info`` are listed in the error for an unknown name — and, for timm's EfficientNet
  family, Keras layer names as the IMPC paper uses them (``block3b``, ``block3b_dwconv``): Keras
  block ``N`` letter ``x`` is timm's ``blocks.{N-1}.{x-'a'}`` (so ``block3b`` = ``blocks.2.1``), and
  the suffixes map to the block's own modules (``_dwconv`` -> ``conv_dw``, ``_expand_conv`` ->
  ``conv_pw``, ``_project_conv`` -> ``conv_pwl``/``conv_pw``, ``_activation`` -> the BN+act after
  the depthwise conv, ``_se`` -> ``se``). Names are canonicalised to the timm path, so both spellings
  give the same table.
* ``build_network(model, resolved)`` — the timm model with its weights, in eval mode.
* ``Embedder`` — normalisation (the weights' mean/std) + forward to the embedding, float32 out.
* ``choose_device`` / ``choose_precision`` — ``auto`` means CUDA when present (announced), else CPU;
  asking for CUDA without it raises ``BackendUnavailableError`` (never a silent CPU fallback).
"""

from __future__ import annotations

import contextlib
import difflib
import re
from dataclasses import dataclass
from functools import lru_cache

from features.errors import BackendUnavailableError, ParameterError
from store.weights import (
    RANDOM_SEED,
    ResolvedWeights,
    check_model_name,
    load_weights_into,
    meta_model,
)

__all__ = [
    "ArchInfo",
    "arch_info",
    "resolve_layer",
    "layer_width",
    "build_network",
    "Embedder",
    "choose_device",
    "choose_precision",
]

_KERAS_BLOCK = re.compile(r"^block(\d+)([a-z])(?:_(dwconv|expand_conv|project_conv|activation|se))?$")
_KERAS_PARTS = {
    # timm block class -> Keras suffix -> timm child module
    "InvertedResidual": {
        "dwconv": "conv_dw",
        "expand_conv": "conv_pw",
        "project_conv": "conv_pwl",
        "activation": "bn2",
        "se": "se",
    },
    "DepthwiseSeparableConv": {"dwconv": "conv_dw", "project_conv": "conv_pw", "activation": "bn1", "se": "se"},
}


@dataclass(frozen=True)
class ArchInfo:
    """Facts about one timm architecture that need no weights."""

    model: str
    class_name: str
    input_size: tuple[int, int, int]  # (C, H, W)
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float
    num_features: int  # width of the pooled embedding
    feature_stages: tuple[str, ...]  # module names of model.feature_info
    module_types: dict  # module path -> class name


@lru_cache(maxsize=32)
def arch_info(model: str) -> ArchInfo:
    """What timm says about ``model`` (``ParameterError`` when timm does not know it)."""
    import timm

    check_model_name(model)
    net = meta_model(model)
    cfg = timm.data.resolve_model_data_config(net)
    stages = tuple(f["module"] for f in getattr(net, "feature_info", []) or [] if f.get("module"))
    return ArchInfo(
        model=model,
        class_name=type(net).__name__,
        input_size=tuple(int(v) for v in cfg["input_size"]),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
        crop_pct=float(cfg.get("crop_pct", 1.0)),
        num_features=int(net.num_features),
        feature_stages=stages,
        module_types={name: type(module).__name__ for name, module in net.named_modules() if name},
    )


def _keras_to_timm(info: ArchInfo, layer: str) -> str | None:
    match = _KERAS_BLOCK.match(layer)
    if not match or info.class_name != "EfficientNet":
        return None
    stage, index, part = int(match.group(1)) - 1, ord(match.group(2)) - ord("a"), match.group(3)
    block = f"blocks.{stage}.{index}"
    if block not in info.module_types:
        return None
    if part is None:
        return block
    child = _KERAS_PARTS.get(info.module_types[block], {}).get(part)
    return f"{block}.{child}" if child and f"{block}.{child}" in info.module_types else None


def resolve_layer(model: str, layer: str) -> str:
    """Canonical name of ``layer`` for ``model``: ``'pooled'`` or a timm module path.

    ``ParameterError`` for an unknown name lists the feature stages, close module names and, for
    EfficientNets, the Keras block names.
    """
    if not isinstance(layer, str) or not layer:
        raise ParameterError(
            f"The 'layer' parameter of CNNEmbedding must be 'pooled' or a module name. Got {layer!r} instead."
        )
    if layer == "pooled":
        return layer
    info = arch_info(model)
    if layer in info.module_types:
        return layer
    keras = _keras_to_timm(info, layer)
    if keras:
        return keras
    close = difflib.get_close_matches(layer, list(info.module_types), n=6, cutoff=0.6)
    extra = ""
    if info.class_name == "EfficientNet":
        blocks = sorted(
            {
                f"block{int(n.split('.')[1]) + 1}{chr(ord('a') + int(n.split('.')[2]))}"
                for n in info.module_types
                if re.fullmatch(r"blocks\.\d+\.\d+", n)
            },
            key=lambda s: (int(re.match(r"block(\d+)", s).group(1)), s),
        )
        extra = (
            " Keras names (optionally with _dwconv, _expand_conv, _project_conv, _activation, _se): "
            f"{', '.join(blocks)}."
        )
    raise ParameterError(
        f"{model!r} has no layer {layer!r}. Use 'pooled' (the embedding before the classifier), one of its "
        f"feature stages: {', '.join(info.feature_stages) or 'none'}, or any module path of "
        f"timm.create_model('{model}').named_modules()"
        + (f" (close: {', '.join(close)})" if close else "")
        + "."
        + extra
    )


class _StopForward(Exception):
    """Raised by the layer tap once the wanted module has run: the rest of the network is skipped."""


def _pool(output):
    """Global average of a module output: NCHW -> NC, (B, tokens, C) -> BC, (B, C) unchanged."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    if output.ndim == 4:
        return output.mean(dim=(2, 3))
    if output.ndim == 3:
        return output.mean(dim=1)
    return output.flatten(1)


@lru_cache(maxsize=64)
def layer_width(model: str, layer: str) -> int:
    """Length of the embedding ``layer`` gives for ``model`` (a shape-only forward on ``meta``)."""
    import torch

    layer = resolve_layer(model, layer)
    info = arch_info(model)
    if layer == "pooled":
        return info.num_features
    net = meta_model(model)
    embedder = Embedder(net, info, layer)
    try:
        out = embedder(torch.empty((1, *info.input_size), device="meta"))
    finally:
        embedder.close()
    return int(out.shape[1])


def build_network(model: str, resolved: ResolvedWeights):
    """The timm model ``model`` in eval mode with the weights ``resolved`` names; returns (net, tensor_sha256).

    Random weights come from timm's initialisation under ``torch.manual_seed(RANDOM_SEED)`` (the
    global RNG is left untouched); hub weights go through timm's own loader (its per-model
    checkpoint filters apply) from the resolved cache file.
    """
    import timm
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        if resolved.source in ("hub-cache", "hub-download"):
            net = timm.create_model(model, pretrained=True, pretrained_cfg_overlay={"file": str(resolved.path)})
        else:
            net = timm.create_model(model, pretrained=False)
    digest = load_weights_into(net, resolved)
    return net.eval(), digest


class Embedder:
    """Callable: a batch in [0, 1] (B, 3, H, W) -> embeddings (B, d) float32, through one network.

    Normalises with the weights' mean/std, then returns the pre-logits pooled embedding
    (``forward_features`` + ``forward_head(pre_logits=True)``) or, for an intermediate ``layer``,
    that module's output averaged over space; the network stops right after that module.
    ``logits`` gives the classifier output (used to check that preprocessing matches the weights).
    """

    def __init__(self, net, info: ArchInfo, layer: str = "pooled"):
        import torch

        self.net = net
        self.layer = layer
        device = next(net.parameters()).device
        self.mean = torch.tensor(info.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(info.std, device=device).view(1, 3, 1, 1)
        self._captured = None
        self._hook = None
        self._pooled = self._pooled_forward
        if layer != "pooled":
            module = dict(net.named_modules())[layer]
            self._hook = module.register_forward_hook(self._capture)

    def _capture(self, module, inputs, output):
        self._captured = _pool(output)
        raise _StopForward

    def to(self, device, memory_format=None):
        """Move the network (and the normalisation constants) to ``device``; returns self."""
        self.net.to(device)
        if memory_format is not None:
            self.net.to(memory_format=memory_format)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    def normalise(self, batch):
        """``(batch - mean) / std`` with the weights' ImageNet statistics."""
        return (batch - self.mean.to(batch.dtype)) / self.std.to(batch.dtype)

    def _pooled_forward(self, x):
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True).flatten(1)

    def compile(self) -> None:
        """Compile the pooled forward with ``torch.compile`` (kernels are built at the first batch).

        Only the pooled embedding: an intermediate layer stops the network by an exception from a
        hook, which a compiled graph cannot express (``ParameterError``).
        """
        import torch

        if self.layer != "pooled":
            raise ParameterError(
                f"compile=True applies to layer='pooled' only (asked for layer {self.layer!r}); run the "
                "intermediate layer without --compile."
            )
        self._pooled = torch.compile(self._pooled_forward)

    def __call__(self, batch):
        x = self.normalise(batch)
        if self.layer == "pooled":
            return self._pooled(x).float()
        self._captured = None
        with contextlib.suppress(_StopForward):
            self.net(x)
        if self._captured is None:
            raise ParameterError(
                f"Layer {self.layer!r} did not run in the forward pass of {type(self.net).__name__} (e.g. an "
                "auxiliary head); choose a module on the main path."
            )
        out, self._captured = self._captured, None
        return out.float()

    def logits(self, batch):
        """Classifier output for a batch in [0, 1] (normalised here)."""
        return self.net(self.normalise(batch)).float()

    def close(self) -> None:
        """Remove the layer hook (the network can then be used on its own again)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


def choose_device(device: str) -> str:
    """``'cpu'``, ``'cuda'`` or ``'cuda:N'`` for the requested ``device`` (``'auto'``: CUDA if present).

    ``BackendUnavailableError`` when CUDA is asked for and this torch build or machine has none.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BackendUnavailableError(
                f"--device {device} was asked for, but torch {torch.__version__} sees no CUDA device here "
                f"(built for CUDA {torch.version.cuda or 'none'}). Run with --device cpu or --device auto "
                "(which announces what it picks); nothing is moved to the CPU silently."
            )
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise BackendUnavailableError(
                f"--device {device} was asked for, but only {torch.cuda.device_count()} CUDA device(s) exist."
            )
    return device


def choose_precision(precision: str, device: str) -> str:
    """``'fp32'``, ``'bf16'`` or ``'fp16'``: ``auto`` is fp32 on CPU, bf16 on CUDA (fp16 without bf16)."""
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


