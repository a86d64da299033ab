"""Outputs of a network over a volume's patches (the 3-D networks themselves are in ``extractors.nets``).

- ``SmallCNN3d`` and ``ConvAutoencoder3d`` (re-exported from ``extractors.nets``, where they share the 2-D
  networks' blocks): ``build_backbone("small3d")`` gives the first, so ``SiameseNet(backbone="small3d")``
  is the Siamese network on volumes ``(N, 1, D, H, W)``; the second is the network family ``cae3d``.
- ``grid_outputs``: a network's output for each whole volume in patch mode: the mean of its outputs on
  the patches of a sliding grid (``features.volume_prep.grid_corners``, stride = half a patch).
- ``stitch_outputs``: a whole-volume output map from patch outputs (overlaps averaged), for an
  autoencoder's reconstruction in patch mode.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from extractors.nets import ConvAutoencoder3d, SmallCNN3d

__all__ = ["SmallCNN3d", "ConvAutoencoder3d", "grid_outputs", "stitch_outputs"]


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
