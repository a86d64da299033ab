"""Training throughput of the 3-D networks on volumes (prints figures; not a test).

Times one training epoch, after one warm-up epoch, through the shared loop
(``extractors.training.fit_minibatches``), of:

1. the 3-D Siamese network (``SiameseNet(backbone="small3d")``) on pairs of whole cubes (32^3, 48^3) and
   in patch mode (64^3 cubes seen through random 32^3 patches), with the 3-D augmentation
   (``extractors.volume_nets.augment_volumes``) and the contrastive loss, as ``train siamese --input
   volume`` trains it;
2. the 3-D autoencoder (``ConvAutoencoder3d``) on whole 32^3 cubes and on 16^3 patches of 32^3 cubes;

then the time to describe one volume in patch mode (mean over the sliding grid, stride = half a patch).
Synthetic tensors, on the CPU and, when one is present, on CUDA with bf16 autocast. Prints volumes/s
(a pair counts two) and seconds per epoch.

Run: ``python bench/volume_nets.py`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _epoch_seconds(model, optimizer, *, loss, inputs, samples, batch_size: int) -> float:
    """Seconds of the second of two epochs through ``fit_minibatches`` (the first warms up)."""
    from extractors.training import fit_minibatches

    result = fit_minibatches(model=model, optimizer=optimizer, loss=loss, inputs=inputs, samples=samples, epochs=2,
                             seed=0, batch_size=batch_size, progress=False, name="bench")
    return result.history[1]["seconds"]


def bench_siamese(device, *, pairs: int, size: int, patch: int | None, batch_size: int) -> tuple[float, float]:
    """(volumes/s, s/epoch) of ``pairs`` random pairs of ``size``^3 cubes (patches of ``patch``^3 when set)."""
    import torch

    from extractors.nets import SiameseNet
    from extractors.siamese import contrastive_loss
    from extractors.volume_nets import augment_volumes
    from features.volume_prep import cut_patches, random_corners

    torch.manual_seed(0)
    cubes = torch.rand(64, 1, size, size, size, device=device)
    model = SiameseNet(backbone="small3d", embed_dim=128, n_aux=0).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    samples = np.column_stack([rng.integers(0, 64, (pairs, 2)), rng.integers(0, 2, pairs)])

    def inputs(batch):
        rows = batch.rows
        xa, xb = cubes[torch.from_numpy(rows[:, 0]).to(device)], cubes[torch.from_numpy(rows[:, 1]).to(device)]
        if patch:
            corners = random_corners(batch.rng, len(rows), size, patch)
            xa, xb = cut_patches(xa, corners, patch), cut_patches(xb, corners, patch)
        flip = batch.rng.random(len(rows)) < 0.5
        shift = max(1, int(xa.shape[-1]) // 8)
        xa = augment_volumes(xa, batch.rng, flip=flip, max_shift=shift)
        xb = augment_volumes(xb, batch.rng, flip=flip, max_shift=shift)
        return xa, xb, torch.from_numpy(rows[:, 2].astype(np.float32)).to(device)

    def loss(prepared):
        xa, xb, same = prepared
        emb = model.embed(torch.cat([xa, xb]))
        return contrastive_loss(emb[: len(xa)], emb[len(xa) :], same, 1.0)

    seconds = _epoch_seconds(model, optimizer, loss=loss, inputs=inputs, samples=samples, batch_size=batch_size)
    return 2 * pairs / seconds, seconds


def bench_cae(device, *, volumes: int, size: int, patch: int | None, batch_size: int) -> tuple[float, float]:
    """(volumes/s, s/epoch) of the 3-D autoencoder on ``volumes`` random cubes (patches when ``patch``)."""
    import torch

    from extractors.nets3d import ConvAutoencoder3d
    from features.volume_prep import cut_patches, random_corners

    torch.manual_seed(0)
    cubes = torch.rand(volumes, 1, size, size, size, device=device)
    model = ConvAutoencoder3d().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def inputs(batch):
        x = cubes[torch.from_numpy(batch.rows).to(device)]
        return cut_patches(x, random_corners(batch.rng, len(x), size, patch), patch) if patch else x

    def loss(x):
        return torch.nn.functional.mse_loss(model(x).float(), x)

    seconds = _epoch_seconds(model, optimizer, loss=loss, inputs=inputs, samples=np.arange(volumes),
                             batch_size=batch_size)
    return volumes / seconds, seconds


def bench_grid_embedding(device, *, size: int, patch: int, repeats: int = 3) -> float:
    """Seconds to embed one ``size``^3 volume as the mean over its ``patch``^3 sliding-grid patches."""
    import torch

    from extractors.nets import SiameseNet
    from extractors.volume_nets import network_outputs

    model = SiameseNet(backbone="small3d", embed_dim=128, n_aux=0).to(device).eval()
    cube = torch.rand(1, 1, size, size, size, device=device)
    network_outputs(model.embed, cube, patch=patch, device=device)
    started = time.perf_counter()
    for _ in range(repeats):
        network_outputs(model.embed, cube, patch=patch, device=device)
    return (time.perf_counter() - started) / repeats


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks on the CPU (and CUDA when present); print one line per case."""
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=64, help="Siamese pairs per epoch (default 64)")
    parser.add_argument("--volumes", type=int, default=64, help="autoencoder volumes per epoch (default 64)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        print(f"device {device} (threads {torch.get_num_threads()})")
        for size, patch in ((32, None), (48, None), (64, 32)):
            rate, seconds = bench_siamese(device, pairs=args.pairs, size=size, patch=patch, batch_size=8)
            what = f"{size}^3" + (f" via {patch}^3 patches" if patch else " whole")
            print(f"  siamese {what:24s} {rate:8.1f} volumes/s  {seconds:7.2f} s/epoch ({args.pairs} pairs)")
        for size, patch in ((32, None), (32, 16)):
            rate, seconds = bench_cae(device, volumes=args.volumes, size=size, patch=patch, batch_size=8)
            what = f"{size}^3" + (f" via {patch}^3 patches" if patch else " whole")
            print(f"  cae     {what:24s} {rate:8.1f} volumes/s  {seconds:7.2f} s/epoch ({args.volumes} volumes)")
        seconds = bench_grid_embedding(device, size=64, patch=32)
        print(f"  embed one 64^3 volume over 27 grid patches of 32^3: {seconds:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
