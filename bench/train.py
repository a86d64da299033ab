"""Training throughput of chronofeat's own networks (prints figures; not a test).

Times one training epoch, after one warm-up epoch, of:

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
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_siamese(device, *, pairs: int, size: int, batch_size: int) -> tuple[float, float]:
    """(images/s, seconds) of one epoch of ``pairs`` pairs."""
    import torch

    from extractors.nets import SiameseNet
    from extractors.siamese import contrastive_loss
    from extractors.training import autocast, epoch_rng
    from features.augment import augment_batch, sample_params

    torch.manual_seed(0)
    images = torch.rand(512, 1, size, size, device=device)
    levels = torch.randint(0, 7, (512,), device=device)
    model = SiameseNet(n_aux=7).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=5e-4)
    weights = torch.ones(7, device=device)

    def epoch(e: int) -> float:
        rng = epoch_rng(0, e)
        a_all, b_all = rng.integers(0, 512, pairs), rng.integers(0, 512, pairs)
        same = torch.from_numpy((rng.random(pairs) < 0.5).astype(np.float32)).to(device)
        _sync(device)
        start = time.perf_counter()
        for s in range(0, pairs, batch_size):
            a = torch.from_numpy(a_all[s : s + batch_size]).to(device)
            b = torch.from_numpy(b_all[s : s + batch_size]).to(device)
            pa, pb = sample_params(rng, len(a)), sample_params(rng, len(a))
            pb["flip"] = pa["flip"]
            xa, xb = augment_batch(images[a], pa), augment_batch(images[b], pb)
            with autocast(device):
                emb, logits = model(torch.cat([xa, xb]))
            n = len(a)
            loss = contrastive_loss(emb[:n], emb[n:], same[s : s + n], 1.0)
            loss = loss + torch.nn.functional.cross_entropy(logits.float(), torch.cat([levels[a], levels[b]]), weight=weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        _sync(device)
        return time.perf_counter() - start

    epoch(0)
    seconds = epoch(1)
    return 2 * pairs / seconds, seconds


def bench_xcnn(device, *, arch: str, samples: int, size: int, batch_size: int) -> tuple[float, float, int]:
    """(images/s, seconds, parameters) of one epoch of ``samples`` samples."""
    import torch

    from classifiers._xcnn_nets import build_xcnn, count_parameters, l2_penalty
    from extractors.training import autocast, epoch_rng

    torch.manual_seed(0)
    images = torch.rand(samples, 1, size, size, device=device)
    diffs = torch.randn(samples, 1, size, size, device=device) * 0.1
    times = torch.randint(0, 9, (samples,), device=device).float()
    y = torch.randint(0, 2, (samples,), device=device)
    model = build_xcnn(arch, image_shape=(size, size), n_classes=2, timestamps=True).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def epoch(e: int) -> float:
        order = torch.from_numpy(epoch_rng(0, e).permutation(samples)).to(device)
        model.train()
        _sync(device)
        start = time.perf_counter()
        for s in range(0, samples, batch_size):
            idx = order[s : s + batch_size]
            with autocast(device):
                out = model(images[idx], diffs[idx] if arch == "xcnn" else None, times[idx])
            loss = torch.nn.functional.cross_entropy(out.float(), y[idx]) + l2_penalty(model)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        _sync(device)
        return time.perf_counter() - start

    epoch(0)
    seconds = epoch(1)
    per_sample = 2 if arch == "xcnn" else 1
    return per_sample * samples / seconds, seconds, count_parameters(model)


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64, help="input side in pixels (default 64, as trained)")
    parser.add_argument("--pairs", type=int, default=640, help="Siamese pairs per epoch (default 640)")
    parser.add_argument("--samples", type=int, default=800, help="X-CNN samples per epoch (default 800, ~ the chronomid demo)")
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
        rate, seconds = bench_siamese(device, pairs=args.pairs, size=args.size, batch_size=args.batch_size)
        from extractors.nets import SiameseNet

        params = sum(p.numel() for p in SiameseNet(n_aux=7).parameters())
        print(f"{'Siamese (small, augmented)':<28} {device.type:<6} {precision:<9} {rate:>10.1f} {seconds:>8.2f} {params:>11,d}")
        for arch, label in (("baseline", "CNN baseline + time"), ("xcnn", "X-CNN abs. diff. + time")):
            rate, seconds, params = bench_xcnn(device, arch=arch, samples=args.samples, size=args.size, batch_size=args.batch_size)
            print(f"{label:<28} {device.type:<6} {precision:<9} {rate:>10.1f} {seconds:>8.2f} {params:>11,d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
