"""Training throughput of chronofeat's own networks (prints figures; not a test).

Times one training epoch, after one warm-up epoch, through the shared loop
(``extractors.training.fit_minibatches``), of:

1. the Siamese network (``SiameseNet``, small backbone) on pairs with the paper's augmentation, the
   contrastive + class-balanced auxiliary loss, as ``train siamese`` trains it;
2. the ChronoMID baseline CNN and X-CNN (absolute difference + timestamp), as ``fit xcnn`` trains them;

on synthetic tensors of the default input size (64x64), on the CPU and, when one is present, on CUDA
with bf16 autocast. Prints images/s (a Siamese pair counts two images; an X-CNN sample counts two:
the image and its difference image) and seconds per epoch.

Run: ``python bench/train.py`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


@dataclass
class Throughput:
    """One timed epoch: images per second, its seconds, and the network's parameter count."""

    images_per_second: float
    seconds: float
    parameters: int


def _second_epoch(model, optimizer, *, loss, inputs, samples, batch_size: int, images_per_sample: int) -> Throughput:
    """Train two epochs through ``extractors.training.fit_minibatches``; time the second (the first warms up)."""
    from extractors.training import fit_minibatches

    result = fit_minibatches(model=model, optimizer=optimizer, loss=loss, inputs=inputs, samples=samples, epochs=2,
                             seed=0, batch_size=batch_size, progress=False, name="bench")
    seconds = result.history[1]["seconds"]  # ends with the epoch's loss read back: the device has finished
    count = len(samples(np.random.default_rng(0))) if callable(samples) else len(samples)
    return Throughput(images_per_sample * count / seconds, seconds, sum(p.numel() for p in model.parameters()))


def bench_siamese(device, *, pairs: int, size: int, batch_size: int) -> Throughput:
    """One epoch of ``pairs`` random pairs with the paper's augmentation and the contrastive + auxiliary loss."""
    import torch

    from extractors.nets import SiameseNet
    from extractors.siamese import contrastive_loss
    from extractors.training import Losses
    from features.augment import augment_batch, sample_params

    torch.manual_seed(0)
    images = torch.rand(512, 1, size, size, device=device)
    levels = torch.randint(0, 7, (512,), device=device)
    model = SiameseNet(n_aux=7).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=5e-4)
    weights = torch.ones(7, device=device)

    def samples(rng):
        return np.column_stack([rng.integers(0, 512, pairs), rng.integers(0, 512, pairs), rng.random(pairs) < 0.5])

    def inputs(batch):
        rows = torch.from_numpy(batch.rows.astype(np.int64)).to(device)
        pa, pb = sample_params(batch.rng, len(rows)), sample_params(batch.rng, len(rows))
        pb["flip"] = pa["flip"]
        return rows, augment_batch(images[rows[:, 0]], pa), augment_batch(images[rows[:, 1]], pb)

    def loss(prepared):
        rows, xa, xb = prepared
        emb, logits = model(torch.cat([xa, xb]))
        n = len(rows)
        contrast = contrastive_loss(emb[:n], emb[n:], rows[:, 2].float(), 1.0)
        aux = torch.nn.functional.cross_entropy(logits.float(), torch.cat([levels[rows[:, 0]], levels[rows[:, 1]]]),
                                                weight=weights)
        return Losses(contrast + aux, {"loss": contrast, "aux_loss": aux})

    return _second_epoch(model, optimizer, loss=loss, inputs=inputs, samples=samples, batch_size=batch_size,
                         images_per_sample=2)


def bench_xcnn(device, *, arch: str, samples: int, size: int, batch_size: int) -> Throughput:
    """One epoch of ``samples`` samples of the ChronoMID baseline CNN or X-CNN (with timestamps)."""
    import torch

    from classifiers._xcnn_nets import build_xcnn, count_parameters, l2_penalty

    torch.manual_seed(0)
    images = torch.rand(samples, 1, size, size, device=device)
    diffs = torch.randn(samples, 1, size, size, device=device) * 0.1
    times = torch.randint(0, 9, (samples,), device=device).float()
    y = torch.randint(0, 2, (samples,), device=device)
    model = build_xcnn(arch, image_shape=(size, size), n_classes=2, timestamps=True).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def loss(idx):
        out = model(images[idx], diffs[idx] if arch == "xcnn" else None, times[idx])
        return torch.nn.functional.cross_entropy(out.float(), y[idx]) + l2_penalty(model)

    timed = _second_epoch(model, optimizer, loss=loss, inputs=lambda batch: torch.from_numpy(batch.rows).to(device),
                          samples=np.arange(samples), batch_size=batch_size,
                          images_per_sample=2 if arch == "xcnn" else 1)
    timed.parameters = count_parameters(model)
    return timed


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64, help="input side in pixels (default 64, as trained)")
    parser.add_argument("--pairs", type=int, default=640, help="Siamese pairs per epoch (default 640)")
    parser.add_argument(
        "--samples", type=int, default=800, help="X-CNN samples per epoch (default 800, ~ the chronomid demo)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default 32, the papers')")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}, "
          f"CUDA: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none (GPU figures skipped)'}")
    print(f"input {args.size}x{args.size}, batch {args.batch_size}; one epoch after a warm-up epoch")
    print(f"{'network':<28} {'device':<6} {'precision':<9} {'images/s':>10} {'s/epoch':>8} {'parameters':>11}")
    for device in devices:
        precision = "bf16" if device.type == "cuda" else "fp32"
        rows = [("Siamese (small, augmented)",
                 bench_siamese(device, pairs=args.pairs, size=args.size, batch_size=args.batch_size))]
        for arch, label in (("baseline", "CNN baseline + time"), ("xcnn", "X-CNN abs. diff. + time")):
            rows.append((label, bench_xcnn(device, arch=arch, samples=args.samples, size=args.size,
                                           batch_size=args.batch_size)))
        for label, t in rows:
            print(f"{label:<28} {device.type:<6} {precision:<9} {t.images_per_second:>10.1f} {t.seconds:>8.2f} "
                  f"{t.parameters:>11,d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
