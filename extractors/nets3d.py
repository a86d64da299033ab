"""Small 3-D networks for volumes, and outputs of a network averaged over a volume's patches.

- ``SmallCNN3d``: Conv3x3x3-BN-ReLU-MaxPool stages and global average pooling, the 3-D twin of
  ``extractors.nets.SmallCNN`` (the spine paper's Siamese network uses 3-D kernels in Conv1-Conv4).
  ``extractors.nets.build_backbone("small3d")`` gives it, so ``SiameseNet(backbone="small3d")`` is the
  Siamese network on volumes ``(N, 1, D, H, W)``.
- ``ConvAutoencoder3d``: the 3-D twin of ``extractors.nets.ConvAutoencoder`` (family ``cae3d``).
- ``grid_outputs``: a network's output for each whole volume in patch mode: the mean of its outputs on
  the patches of a sliding grid (``features.volume_prep.grid_corners``, stride = half a patch).
- ``stitch_outputs``: a whole-volume output map from patch outputs (overlaps averaged), for an
  autoencoder's reconstruction in patch mode.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

__all__ = ["SmallCNN3d", "ConvAutoencoder3d", "grid_outputs", "stitch_outputs"]


def _block3d(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True)]


class SmallCNN3d(nn.Module):
    """Conv3x3x3-BN-ReLU stages of ``widths`` channels with 2x2x2 max pooling between them, then global
    average pooling. Input ``(N, in_chans, D, H, W)`` (sides >= 2 ** (len(widths) - 1)); output
    ``(N, widths[-1])`` (``out_features``)."""

    def __init__(self, in_chans: int = 1, widths: tuple[int, ...] = (8, 16, 32, 64)):
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_chans
        for i, width in enumerate(widths):
            layers += _block3d(previous, width)
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


class ConvAutoencoder3d(nn.Module):
    """Encoder (``depth`` conv-pool steps, widths doubling from ``base``) to a ``latent_channels`` map at
    1/2**depth of the input side; decoder mirrors it with upsampling and ends in a sigmoid.

    Inputs are volumes ``(N, in_chans, D, H, W)`` in [0, 1] with sides divisible by 2**depth.
    """

    def __init__(self, *, in_chans: int = 1, base: int = 8, depth: int = 3, latent_channels: int = 8):
        super().__init__()
        widths = [base * 2**i for i in range(depth)]
        enc: list[nn.Module] = []
        previous = in_chans
        for width in widths:
            enc += _block3d(previous, width) + [nn.MaxPool3d(2)]
            previous = width
        enc += [nn.Conv3d(previous, latent_channels, 3, padding=1), nn.ReLU(inplace=True)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = []
        previous = latent_channels
        for width in reversed(widths):
            dec += [nn.Upsample(scale_factor=2, mode="nearest")] + _block3d(previous, width)
            previous = width
        dec += [nn.Conv3d(previous, in_chans, 3, padding=1), nn.Sigmoid()]
        self.decoder = nn.Sequential(*dec)
        self.depth = depth

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent map ``(N, latent_channels, D / 2**depth, H / 2**depth, W / 2**depth)``."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def _volume_patches(volume: torch.Tensor, corners: np.ndarray, patch: int) -> torch.Tensor:
    """The patches of one volume ``(C, S, S, S)`` at ``corners``: ``(K, C, p, p, p)``."""
    return torch.stack([volume[:, z : z + patch, y : y + patch, x : x + patch] for z, y, x in corners])


def grid_outputs(forward: Callable[[torch.Tensor], torch.Tensor], volumes: torch.Tensor, *, patch: int | None,
                 batch_size: int = 32) -> torch.Tensor:
    """``forward`` of each volume of ``(N, C, S, S, S)``: whole volumes when ``patch`` is None, else the mean
    of ``forward`` over the volume's sliding-grid patches (stride ``patch // 2``). Returns ``(N, ...)``;
    runs as called (no ``no_grad``, no mode change)."""
    from features.volume_prep import grid_corners

    if patch is None:
        return torch.cat([forward(volumes[i : i + batch_size]) for i in range(0, len(volumes), batch_size)])
    corners = grid_corners(int(volumes.shape[-1]), patch)
    means = []
    for volume in volumes:
        patches = _volume_patches(volume, corners, patch)
        outs = torch.cat([forward(patches[i : i + batch_size]) for i in range(0, len(patches), batch_size)])
        means.append(outs.mean(dim=0))
    return torch.stack(means) if means else torch.zeros((0,))


def stitch_outputs(forward: Callable[[torch.Tensor], torch.Tensor], volume: torch.Tensor, *, patch: int,
                   batch_size: int = 32) -> torch.Tensor:
    """A same-shape output map of one volume ``(C, S, S, S)`` from ``forward`` on its sliding-grid patches
    (each ``(K, C, p, p, p)`` -> ``(K, C', p, p, p)``), overlapping voxels averaged."""
    from features.volume_prep import grid_corners

    corners = grid_corners(int(volume.shape[-1]), patch)
    patches = _volume_patches(volume, corners, patch)
    outs = torch.cat([forward(patches[i : i + batch_size]) for i in range(0, len(patches), batch_size)])
    total = torch.zeros((outs.shape[1],) + tuple(volume.shape[1:]), dtype=outs.dtype, device=outs.device)
    count = torch.zeros_like(total[:1])
    for out, (z, y, x) in zip(outs, corners, strict=True):
        total[:, z : z + patch, y : y + patch, x : x + patch] += out
        count[:, z : z + patch, y : y + patch, x : x + patch] += 1
    return total / count
