"""Small networks chronofeat trains itself: 2-D CNN backbones, the Siamese embedding net, the CAE.

- ``SmallCNN``: a compact convolutional backbone (conv-BN-ReLU-pool stages, global average pool)
  that trains in minutes on a CPU at 64x64; ``build_backbone(name)`` gives it for ``"small"`` and any
  timm model (randomly initialised, ``num_classes=0``) for any other name.
- ``SiameseNet``: backbone -> FC6 -> FC7 embedding (contrastive loss) and an FC8 auxiliary head on the
  embedding (vertebral level), seed 001 section 2.
- ``ConvAutoencoder``: encoder to a small latent map, decoder back to the image (MSE), seed 003 4.2.
- ``ClassifierNet``: a backbone plus a fully connected head (transfer experiments).
- for volumes: ``SmallCNN3d`` (``build_backbone("small3d")``, the spine paper's 3-D kernels) and
  ``ConvAutoencoder3d`` (family ``cae3d``), the same blocks with ``dims=3``; patch-wise outputs are in
  ``extractors.nets3d``.

``network_to_bytes`` / ``network_from_bytes`` serialise a network with the configuration that rebuilds
it (a plain dict), for artifacts of kind ``networks``.
"""

from __future__ import annotations

import io

import torch
from torch import nn

from features.errors import ParameterError, WeightsError

__all__ = [
    "SmallCNN",
    "build_backbone",
    "SiameseNet",
    "ConvAutoencoder",
    "ConvAutoencoder3d",
    "SmallCNN3d",
    "ClassifierNet",
    "build_network",
    "network_to_bytes",
    "network_from_bytes",
    "NETWORK_FORMAT",
]

NETWORK_FORMAT = "chronofeat-network/1"


class SmallCNN(nn.Module):
    """Conv3x3-BN-ReLU-MaxPool stages with ``widths`` channels, then global average pooling.

    Input ``(N, in_chans, H, W)``; output ``(N, widths[-1])`` (``out_features``). ``feature_map``
    returns the last stage's map before pooling.
    """

    def __init__(self, in_chans: int = 1, widths: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_chans
        for i, width in enumerate(widths):
            layers += [
                nn.Conv2d(previous, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            previous = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_features = previous
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map ``(N, widths[-1], h, w)`` before pooling."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


class _TimmBackbone(nn.Module):
    def __init__(self, name: str, in_chans: int):
        super().__init__()
        import timm

        try:
            self.model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans)
        except RuntimeError as exc:  # timm's "Unknown model"
            raise ParameterError(
                f"The 'backbone' parameter must be 'small' or a timm model name; {name!r} is not one "
                f"({exc}). List names with: python -c \"import timm; print(timm.list_models('*resnet*'))\"."
            ) from None
        self.out_features = int(self.model.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def build_backbone(name: str, in_chans: int = 1) -> nn.Module:
    """The backbone called ``name``: ``"small"`` (``SmallCNN``), ``"small3d"`` (``SmallCNN3d``, for volumes)
    or any timm model, randomly initialised."""
    if not isinstance(name, str) or not name:
        raise ParameterError(f"The 'backbone' parameter must be 'small' or a timm model name. Got {name!r} instead.")
    if name == "small":
        return SmallCNN(in_chans)
    if name == "small3d":
        return SmallCNN3d(in_chans)
    return _TimmBackbone(name, in_chans)


class SiameseNet(nn.Module):
    """Backbone -> FC6 (ReLU) -> FC7 embedding; FC8 auxiliary classifier on the embedding."""

    def __init__(
        self, *, backbone: str = "small", in_chans: int = 1, embed_dim: int = 128, hidden: int = 256, n_aux: int = 7
    ):
        super().__init__()
        self.backbone = build_backbone(backbone, in_chans)
        self.fc6 = nn.Sequential(nn.Linear(self.backbone.out_features, hidden), nn.ReLU(inplace=True))
        self.fc7 = nn.Linear(hidden, embed_dim)
        self.fc8 = nn.Linear(embed_dim, n_aux) if n_aux > 0 else None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """FC7 embedding ``(N, embed_dim)`` of images ``(N, C, H, W)``."""
        return self.fc7(self.fc6(self.backbone(x)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        embedding = self.embed(x)
        return embedding, (self.fc8(embedding) if self.fc8 is not None else None)


_LAYERS = {2: (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d), 3: (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d)}


def _block(cin: int, cout: int, dims: int = 2) -> list[nn.Module]:
    conv, norm, _ = _LAYERS[dims]
    return [conv(cin, cout, 3, padding=1, bias=False), norm(cout), nn.ReLU(inplace=True)]


class ConvAutoencoder(nn.Module):
    """Encoder (``depth`` conv-pool steps, widths doubling from ``base``) to a ``latent_channels`` map
    at 1/2**depth of the input size; decoder mirrors it with upsampling and ends in a sigmoid.

    Inputs are images ``(N, in_chans, H, W)`` (``dims`` 2) or volumes ``(N, in_chans, D, H, W)`` (``dims`` 3)
    scaled to [0, 1], with sides divisible by 2**depth.
    """

    def __init__(self, *, in_chans: int = 1, base: int = 16, depth: int = 3, latent_channels: int = 16,
                 dims: int = 2):
        super().__init__()
        conv, _, pool = _LAYERS[dims]
        widths = [base * 2**i for i in range(depth)]
        enc: list[nn.Module] = []
        previous = in_chans
        for width in widths:
            enc += _block(previous, width, dims) + [pool(2)]
            previous = width
        enc += [conv(previous, latent_channels, 3, padding=1), nn.ReLU(inplace=True)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = []
        previous = latent_channels
        for width in reversed(widths):
            dec += [nn.Upsample(scale_factor=2, mode="nearest")] + _block(previous, width, dims)
            previous = width
        dec += [conv(previous, in_chans, 3, padding=1), nn.Sigmoid()]
        self.decoder = nn.Sequential(*dec)
        self.depth = depth

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent map ``(N, latent_channels, *sides / 2**depth)``."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class SmallCNN3d(nn.Module):
    """Conv3x3x3-BN-ReLU stages of ``widths`` channels with 2x2x2 max pooling between them, then global
    average pooling. Input ``(N, in_chans, D, H, W)`` (sides >= 2 ** (len(widths) - 1)); output
    ``(N, widths[-1])`` (``out_features``)."""

    def __init__(self, in_chans: int = 1, widths: tuple[int, ...] = (8, 16, 32, 64)):
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_chans
        for i, width in enumerate(widths):
            layers += _block(previous, width, 3)
            if i < len(widths) - 1:
                layers.append(nn.MaxPool3d(2))
            previous = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.out_features = previous
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map ``(N, widths[-1], d, h, w)`` before pooling."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


class ConvAutoencoder3d(ConvAutoencoder):
    """``ConvAutoencoder`` for volumes ``(N, in_chans, D, H, W)`` in [0, 1] (sides divisible by 2**depth),
    with the narrower defaults a 3-D network needs on a CPU."""

    def __init__(self, *, in_chans: int = 1, base: int = 8, depth: int = 3, latent_channels: int = 8):
        super().__init__(in_chans=in_chans, base=base, depth=depth, latent_channels=latent_channels, dims=3)


class ClassifierNet(nn.Module):
    """A backbone and a fully connected head (hidden layer with ReLU and dropout, then ``n_classes``)."""

    def __init__(
        self, *, backbone: str = "small", in_chans: int = 1, n_classes: int = 2, hidden: int = 256, dropout: float = 0.5
    ):
        super().__init__()
        self.backbone = build_backbone(backbone, in_chans)
        self.head = nn.Sequential(
            nn.Linear(self.backbone.out_features, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


_FAMILIES = {"siamese": SiameseNet, "cae": ConvAutoencoder, "cae3d": ConvAutoencoder3d, "classifier": ClassifierNet}


def build_network(config: dict) -> nn.Module:
    """Rebuild the (untrained) network that ``config["family"]`` and ``config["arch"]`` describe."""
    family = config.get("family")
    if family not in _FAMILIES:
        raise WeightsError(f"Network family {family!r} is unknown; expected one of {', '.join(_FAMILIES)}.")
    return _FAMILIES[family](**config.get("arch", {}))


def network_to_bytes(config: dict, model: nn.Module) -> bytes:
    """Serialise ``model``'s weights with ``config`` (family, arch, preprocessing ...) as bytes."""
    import json

    from store.provenance import canonical_json

    config = json.loads(canonical_json(config))  # plain JSON types only: loadable with weights_only=True
    buffer = io.BytesIO()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save({"format": NETWORK_FORMAT, "config": config, "state_dict": state}, buffer)
    return buffer.getvalue()


def network_from_bytes(data: bytes, *, what: str = "network") -> tuple[dict, nn.Module]:
    """The configuration and the network (weights loaded, eval mode, on CPU) serialised in ``data``."""
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"The {what} cannot be read as a chronofeat network ({type(exc).__name__}: {exc}).") from exc
    if not isinstance(payload, dict) or payload.get("format") != NETWORK_FORMAT:
        raise WeightsError(f"The {what} is not a chronofeat network file (format {NETWORK_FORMAT}).")
    config = payload["config"]
    model = build_network(config)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise WeightsError(
            f"The weights in the {what} do not fit its architecture {config.get('arch')}: {exc}"
        ) from exc
    return config, model.eval()
