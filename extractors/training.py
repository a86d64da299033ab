"""The training loop shared by every network chronofeat trains (Siamese, CAE, X-CNN, torch heads).

One function, ``train_epochs``, runs epochs with early stopping and, when given a store, saves a
checkpoint after every epoch (``store.checkpoints``: model, optimizer, epoch, random-generator states,
early-stopping state, history) and resumes from it. All randomness of epoch ``e`` (shuffling,
augmentation, pair sampling, dropout) is derived from ``(seed, e)``, so a run resumed after epoch
``e`` continues exactly as the uninterrupted run would have: on the same machine, thread count and
library versions the final weights are bit-identical on CPU. On CUDA, ``deterministic()`` asks for
deterministic kernels where they exist; atomics in some backward kernels may still differ in the
last bits.
"""

from __future__ import annotations

import contextlib
import copy
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from features.errors import BackendUnavailableError, ParameterError

__all__ = [
    "select_device",
    "autocast",
    "epoch_seed",
    "epoch_rng",
    "deterministic",
    "EarlyStopping",
    "LoopResult",
    "train_epochs",
    "clone_state",
    "torch_threads",
    "true_fp32",
]


def select_device(device: str | None):
    """``torch.device`` for ``device`` ("auto"/None, "cpu", "cuda", "cuda:N").

    "auto" is CUDA when present, else CPU. Asking for CUDA where none is usable raises
    ``BackendUnavailableError`` (never a silent CPU fallback).
    """
    import torch

    choice = (device or "auto").lower()
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cpu":
        return torch.device("cpu")
    if choice.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BackendUnavailableError(
                f"Device {device!r} was asked for but PyTorch sees no CUDA GPU here (torch "
                f"{torch.__version__}). Use --device cpu or auto, or run on a machine with a GPU."
            )
        return torch.device(choice)
    raise ParameterError(f"The 'device' parameter must be one of 'auto', 'cpu', 'cuda', 'cuda:N'. Got {device!r} instead.")


def autocast(device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (mixed precision); a no-op context on CPU (fp32)."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A 63-bit seed for epoch ``epoch`` of a run seeded ``seed``; ``stream`` separates uses."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(stream)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def epoch_rng(seed: int, epoch: int, stream: int = 0) -> np.random.Generator:
    """A NumPy generator for epoch ``epoch``, independent of every other (seed, epoch, stream)."""
    return np.random.default_rng(epoch_seed(seed, epoch, stream))


@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seed torch/NumPy/random; on CUDA also ask for deterministic algorithms (flags restored after)."""
    import torch

    cuda = torch.cuda.is_available()
    previous = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    torch.manual_seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    random.seed(seed)
    if cuda:  # CPU kernels are deterministic already; the switch costs a heavy import there
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        if cuda:
            torch.use_deterministic_algorithms(previous[0], warn_only=True)
            torch.backends.cudnn.benchmark = previous[1]


class EarlyStopping:
    """Stop when the monitored value has not improved for ``patience`` epochs; keep the best weights."""

    def __init__(self, *, mode: str = "min", patience: int = 5, min_delta: float = 0.0):
        if mode not in ("min", "max"):
            raise ParameterError(f"The 'mode' parameter of EarlyStopping must be 'min' or 'max'. Got {mode!r} instead.")
        self.mode, self.patience, self.min_delta = mode, patience, min_delta
        self.best: float | None = None
        self.best_epoch = -1
        self.bad_epochs = 0
        self.best_state: dict | None = None

    def step(self, value: float, model, epoch: int) -> bool:
        """Record ``value`` of ``epoch``; returns True (and copies the weights) when it is the best so far."""
        better = self.best is None or (
            value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta
        )
        if better and np.isfinite(value):
            self.best, self.best_epoch, self.bad_epochs = float(value), epoch, 0
            self.best_state = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        """True once ``patience`` epochs in a row brought no improvement."""
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        """Everything needed to resume (best value, epoch, bad-epoch count, best weights)."""
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs, "best_state": self.best_state}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.bad_epochs, self.best_state = state["bad_epochs"], state["best_state"]


@dataclass
class LoopResult:
    """What ``train_epochs`` did: epochs completed (in total), where it resumed, the best epoch, history."""

    epochs_run: int
    start_epoch: int
    best_epoch: int
    best_value: float | None
    stopped_early: bool
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the epochs run by this call

    @property
    def seconds_per_epoch(self) -> float:
        """Mean training seconds per epoch over the whole history (resumed epochs included)."""
        times = [h["seconds"] for h in self.history if "seconds" in h]
        return float(np.mean(times)) if times else float("nan")


def _rng_state() -> dict:
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train_epochs(
    *,
    model,
    optimizer,
    run_epoch: Callable[[int], dict],
    validate: Callable[[int], dict] | None,
    epochs: int,
    seed: int,
    monitor: str = "val_loss",
    mode: str = "min",
    patience: int = 5,
    store=None,
    name: str = "training",
    key: str | None = None,
    progress: bool = True,
    desc: str | None = None,
    after_epoch: Callable[[int, dict], None] | None = None,
    plateau_factor: float | None = None,
) -> LoopResult:
    """Train ``model`` for up to ``epochs`` epochs with early stopping; resume from a checkpoint.

    ``run_epoch(e)`` trains one epoch and returns metrics (floats); ``validate(e)`` returns metrics
    including ``monitor``; with ``validate=None`` every epoch runs and the last weights are kept.
    Torch's global generator is reseeded from ``(seed, e)`` before each epoch. With ``store`` and
    ``key`` a checkpoint is written after every epoch and a finished or interrupted run with the same
    key is resumed; at the end the best weights (by ``monitor``) are loaded into ``model``.
    ``plateau_factor`` (e.g. 0.1) multiplies the learning rate when ``monitor`` has not improved for
    half the patience, as the spine paper lowers it "as the validation error plateaus".
    """
    import torch
    from tqdm.auto import tqdm

    from store.checkpoints import load_checkpoint, save_checkpoint

    if int(epochs) < 1:
        raise ParameterError(f"The 'epochs' parameter must be an int in [1, inf). Got {epochs!r} instead.")
    stopper = EarlyStopping(mode=mode, patience=patience if validate is not None else 0)
    scheduler = None
    if plateau_factor is not None and validate is not None:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=mode, factor=plateau_factor, patience=max(1, patience // 2 - 1))
    history: list[dict] = []
    start, finished = 0, False
    use_checkpoints = store is not None and key is not None
    if use_checkpoints:
        saved = load_checkpoint(store, name, key)
        if saved is not None:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            stopper.load_state_dict(saved["early"])
            if scheduler is not None and saved.get("scheduler") is not None:
                scheduler.load_state_dict(saved["scheduler"])
            history = list(saved["history"])
            start, finished = int(saved["epoch"]), bool(saved["finished"])
            _set_rng_state(saved["rng"])
    resumed_from = start
    began = time.perf_counter()
    bar = tqdm(total=epochs, initial=start, unit="epoch", desc=desc or name, disable=not progress or finished,
               file=sys.stderr, dynamic_ncols=True, leave=False)
    try:
        epoch = start
        while not finished and epoch < epochs:
            torch.manual_seed(epoch_seed(seed, epoch, stream=1))
            t0 = time.perf_counter()
            model.train()
            metrics = {"epoch": epoch, **run_epoch(epoch)}
            metrics["seconds"] = time.perf_counter() - t0
            if validate is not None:
                model.eval()
                with torch.no_grad():
                    metrics.update(validate(epoch))
                if monitor not in metrics:
                    raise ParameterError(f"validate() returned {sorted(metrics)} without the monitored {monitor!r}.")
                stopper.step(float(metrics[monitor]), model, epoch)
                if scheduler is not None:
                    scheduler.step(float(metrics[monitor]))
                    metrics["lr"] = float(optimizer.param_groups[0]["lr"])
            history.append({k: float(v) for k, v in metrics.items()})
            epoch += 1
            finished = epoch >= epochs or stopper.should_stop
            if after_epoch is not None:
                after_epoch(epoch - 1, metrics)
            if use_checkpoints:
                save_checkpoint(store, name, key, {
                    "version": 1, "key": key, "epoch": epoch, "finished": finished,
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "early": stopper.state_dict(), "history": history, "rng": _rng_state(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                })
            bar.update(1)
            shown = {k: f"{v:.4g}" for k, v in metrics.items() if k not in ("epoch", "seconds")}
            bar.set_postfix(shown, refresh=False)
    finally:
        bar.close()
    if stopper.best_state is not None:
        model.load_state_dict(stopper.best_state)
    epochs_run = len(history)
    return LoopResult(
        epochs_run=epochs_run,
        start_epoch=resumed_from,
        best_epoch=stopper.best_epoch if stopper.best_state is not None else epochs_run - 1,
        best_value=stopper.best,
        stopped_early=epochs_run < epochs,
        history=history,
        seconds=time.perf_counter() - began,
    )


def clone_state(model) -> dict:
    """A CPU copy of ``model``'s state dict (for keeping the initial or best weights)."""
    return copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op CPU threads (None: unchanged); restored after.

    Tiny networks (heads on embeddings) run faster on one thread: their matrices are too small to
    share, and idle worker threads spinning cost more than they give, worst on a busy machine.
    """
    import torch

    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def true_fp32() -> Iterator[None]:
    """Run the block with TF32 off on CUDA, so fp32 inference gives the same values on any device.

    Extracted features are stored in one table whatever the device; TF32 (on by default for cuDNN
    convolutions) would change them at the 1e-3 level. The previous flags are restored after.
    """
    import torch

    previous = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous
