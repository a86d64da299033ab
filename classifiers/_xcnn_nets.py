"""The ChronoMID networks (seed 000, section 5): baseline CNN and cross-modal X-CNN, optional timestamp.

- Chain (Fig. 5): Conv3x3-ReLU, Conv3x3-ReLU, 2x2 max-pool, batch norm, dropout.
- Baseline CNN (5.1): five chains of 16, 32, 32, 32, 32 kernels, dropout 0.5 except in the last chain,
  then dense 64 (ReLU, BN), dense 32 (ReLU, BN), dense n (softmax via the loss); L2 0.003 on the dense
  layers; He-normal initialisation everywhere but the output layer.
- Timestamps (5.2): the integer time index (never normalised) is concatenated to the flattened
  convolutional output before the first dense layer.
- X-CNN (5.3, Fig. 6-7): an image channel and a difference-image channel, each five chains of 8, 8,
  16, 16, 32 kernels with dropout 0.25; after each of the first four chains every channel's output
  is concatenated with a 1x1 convolution (as many maps) of the other channel's output (cross-connections); both
  channels' final maps (and the timestamp) are concatenated before dense 64-32-n with L2 0.0003.

Padding is "same" and pooling keeps the odd border (Keras ``padding='same'``); at the paper's
501x763 canvas the baseline has 861 458 parameters (Table 1: 863 883) and the X-CNN 1 642 450
(Table 1: 1 643 323), counted as Keras does (weights plus batch-norm running statistics).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Chain", "BaselineCNN", "XCNN", "XCNN_VARIANTS", "build_xcnn", "count_parameters", "l2_penalty"]


def _he(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class Chain(nn.Module):
    """Conv-Conv-Pool-BN-Dropout (ChronoMID Fig. 5)."""

    def __init__(self, cin: int, cout: int, dropout: float):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(2, ceil_mode=True), nn.BatchNorm2d(cout),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _out_size(size: int, chains: int) -> int:
    for _ in range(chains):
        size = (size + 1) // 2
    return size


class _DenseHead(nn.Module):
    def __init__(self, n_in: int, n_classes: int):
        super().__init__()
        self.fc1, self.bn1 = nn.Linear(n_in, 64), nn.BatchNorm1d(64)
        self.fc2, self.bn2 = nn.Linear(64, 32), nn.BatchNorm1d(32)
        self.out = nn.Linear(32, n_classes)
        _he(self.fc1)
        _he(self.fc2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(torch.relu(self.fc1(x)))
        x = self.bn2(torch.relu(self.fc2(x)))
        return self.out(x)

    def regularised(self) -> list[torch.Tensor]:
        return [self.fc1.weight, self.fc2.weight]


class BaselineCNN(nn.Module):
    """Five chains on the image, optional timestamp, dense 64-32-n (ChronoMID 5.1-5.2)."""

    l2 = 0.003

    def __init__(
        self, *, image_shape: tuple[int, int], n_classes: int = 2, timestamps: bool = False, in_chans: int = 1
    ):
        super().__init__()
        widths, drops = (16, 32, 32, 32, 32), (0.5, 0.5, 0.5, 0.5, 0.0)
        chains, previous = [], in_chans
        for width, drop in zip(widths, drops, strict=True):
            chains.append(Chain(previous, width, drop))
            previous = width
        self.chains = nn.Sequential(*chains)
        self.timestamps = timestamps
        flat = previous * _out_size(image_shape[0], 5) * _out_size(image_shape[1], 5)
        self.head = _DenseHead(flat + int(timestamps), n_classes)
        self.chains.apply(_he)

    def forward(
        self, image: torch.Tensor, difference: torch.Tensor | None = None, time: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = self.chains(image).flatten(1)
        if self.timestamps:
            x = torch.cat([x, time.view(-1, 1).to(x.dtype)], dim=1)
        return self.head(x)


class XCNN(nn.Module):
    """Image and difference-image channels with 1x1 cross-connections (ChronoMID 5.3-5.4)."""

    l2 = 0.0003

    def __init__(
        self, *, image_shape: tuple[int, int], n_classes: int = 2, timestamps: bool = False, in_chans: int = 1
    ):
        super().__init__()
        widths, dropout = (8, 8, 16, 16, 32), 0.25
        self.image_chains, self.diff_chains = nn.ModuleList(), nn.ModuleList()
        self.to_diff, self.to_image = nn.ModuleList(), nn.ModuleList()
        previous = in_chans
        for i, width in enumerate(widths):
            self.image_chains.append(Chain(previous, width, dropout))
            self.diff_chains.append(Chain(previous, width, dropout))
            if i < len(widths) - 1:
                # the 1x1 kernels carry a chain's maps across; the merged (doubled) width feeds the next chain
                self.to_diff.append(nn.Conv2d(width, width, 1))
                self.to_image.append(nn.Conv2d(width, width, 1))
                previous = 2 * width
        self.timestamps = timestamps
        flat = 2 * widths[-1] * _out_size(image_shape[0], 5) * _out_size(image_shape[1], 5)
        self.head = _DenseHead(flat + int(timestamps), n_classes)
        for part in (self.image_chains, self.diff_chains, self.to_diff, self.to_image):
            part.apply(_he)

    def forward(self, image: torch.Tensor, difference: torch.Tensor, time: torch.Tensor | None = None) -> torch.Tensor:
        a, b = image, difference
        for i in range(len(self.image_chains)):
            a, b = self.image_chains[i](a), self.diff_chains[i](b)
            if i < len(self.to_diff):
                a, b = (
                    torch.cat([a, torch.relu(self.to_image[i](b))], 1),
                    torch.cat([b, torch.relu(self.to_diff[i](a))], 1),
                )
        x = torch.cat([a.flatten(1), b.flatten(1)], dim=1)
        if self.timestamps:
            x = torch.cat([x, time.view(-1, 1).to(x.dtype)], dim=1)
        return self.head(x)


# Table 1 rows: (label, architecture, reference mode or None, timestamps)
XCNN_VARIANTS: tuple[tuple[str, str, str | None, bool], ...] = (
    ("CNN", "baseline", None, False),
    ("CNN, timestamps", "baseline", None, True),
    ("X-CNN, abs. diff.", "xcnn", "absolute", False),
    ("X-CNN, rel. diff.", "xcnn", "relative", False),
    ("X-CNN, timestamps & abs. diff.", "xcnn", "absolute", True),
    ("X-CNN, timestamps & rel. diff.", "xcnn", "relative", True),
)


def build_xcnn(arch: str, *, image_shape: tuple[int, int], n_classes: int, timestamps: bool) -> nn.Module:
    """``BaselineCNN`` for ``arch == "baseline"``, ``XCNN`` for ``"xcnn"``."""
    cls = {"baseline": BaselineCNN, "xcnn": XCNN}[arch]
    return cls(image_shape=tuple(image_shape), n_classes=n_classes, timestamps=timestamps)


def count_parameters(model: nn.Module) -> int:
    """Weights plus batch-norm running mean and variance: the count Keras reports as total parameters."""
    weights = sum(p.numel() for p in model.parameters())
    stats = sum(
        m.running_mean.numel() + m.running_var.numel()
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    )
    return int(weights + stats)


def l2_penalty(model: nn.Module) -> torch.Tensor:
    """Keras-style L2 term ``l2 * sum(w**2)`` over the first two dense layers' weights."""
    return model.l2 * sum((w**2).sum() for w in model.head.regularised())
