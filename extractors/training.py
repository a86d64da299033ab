"""The one training loop of chronofeat: every network it trains (Siamese, CAE, X-CNN, transfer, torch heads).

``fit_minibatches`` runs epochs of minibatches: each epoch draws its samples and their order from a
generator seeded by ``(seed, epoch)``, runs the loss under autocast (bf16 on CUDA, fp32 on CPU), steps
the optimizer, and reports each loss term as the mean over the samples it was computed on (a batch's
mean weighted by its size). Then it validates, steps early stopping (and an optional plateau
schedule) and, when given a store, saves a checkpoint (``store.checkpoints``: model, optimizer, epoch,
random-generator states, early-stopping state, history) that a rerun with the same key resumes from.
All randomness of epoch ``e`` (shuffling, augmentation, pair sampling, dropout) is derived from
``(seed, e)``, so a run resumed after epoch ``e`` continues exactly as the uninterrupted run would
have: on the same machine, thread count and library versions the final weights are bit-identical on
CPU. On CUDA, ``deterministic()`` asks for deterministic kernels where they exist; atomics in some
backward kernels may still differ in the last bits.
"""

from __future__ import annotations

import contextlib
import copy
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from features.errors import BackendUnavailableError, ParameterError

__all__ = [
    "select_device",
    "autocast",
    "epoch_seed",
    "epoch_rng",
    "deterministic",
    "EarlyStopping",
    "Batch",
    "Losses",
    "LoopResult",
    "fit_minibatches",
    "batched_outputs",
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
    raise ParameterError(
        f"The 'device' parameter must be one of 'auto', 'cpu', 'cuda', 'cuda:N'. Got {device!r} instead."
    )


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
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.bad_epochs, self.best_state = state["bad_epochs"], state["best_state"]


@dataclass
class LoopResult:
    """What ``fit_minibatches`` did: epochs completed (in total), where it resumed, the best epoch, history."""

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


@dataclass(frozen=True)
class Batch:
    """One minibatch: its ``rows`` (a slice of the epoch's shuffled samples), the epoch, and the epoch's
    generator ``rng`` (draw augmentation from it so a resumed run repeats it)."""

    rows: np.ndarray
    epoch: int
    rng: np.random.Generator


@dataclass
class Losses:
    """What a loss function returns when one tensor is not enough: the ``objective`` minimised and the
    ``terms`` reported per epoch, e.g. ``Losses(c + 0.5 * a, {"loss": c, "aux_loss": a})``."""

    objective: Any
    terms: dict[str, Any]


@dataclass
class _Schedule:
    """The loop's fixed settings (what ``fit_minibatches`` was given)."""

    model: Any
    optimizer: Any
    loss: Callable[[Any], Any]
    inputs: Callable[[Batch], Any] | None
    samples: Any
    batch_size: int
    min_batch: int
    seed: int
    rng_seed: int
    stream: int
    device: Any


def _epoch_samples(plan: _Schedule, rng: np.random.Generator) -> np.ndarray:
    """The epoch's samples, shuffled: ``samples(rng)`` when it is a function, else ``samples`` itself."""
    samples = plan.samples(rng) if callable(plan.samples) else plan.samples
    samples = np.asarray(samples)
    return samples[rng.permutation(len(samples))]


@dataclass
class _EpochLosses:
    """One epoch's training figures: each loss term's sample-weighted mean, and the samples seen."""

    terms: dict[str, float]
    seen: int


def _minibatch_epoch(plan: _Schedule, epoch: int) -> _EpochLosses:
    """Train one epoch; the sample-weighted mean of every loss term, and how many samples were seen.

    A batch smaller than ``min_batch`` (batch norm needs two rows) is skipped unless the whole epoch
    is that small.
    """
    rng = epoch_rng(plan.rng_seed, epoch, plan.stream)
    order = _epoch_samples(plan, rng)
    smallest = min(plan.min_batch, len(order))
    sums: dict[str, Any] = {}
    seen = 0
    for start in range(0, len(order), plan.batch_size):
        rows = order[start : start + plan.batch_size]
        if len(rows) < smallest:
            continue
        batch = Batch(rows, epoch, rng)
        prepared = plan.inputs(batch) if plan.inputs is not None else batch
        with autocast(plan.device):
            result = plan.loss(prepared)
        losses = result if isinstance(result, Losses) else Losses(result, {"loss": result})
        plan.optimizer.zero_grad(set_to_none=True)
        losses.objective.backward()
        plan.optimizer.step()
        for term, value in losses.terms.items():  # summed on the device: one synchronisation per epoch
            sums[term] = sums.get(term, 0.0) + value.detach().double() * len(rows)
        seen += len(rows)
    if not seen:
        return _EpochLosses({"loss": float("nan")}, 0)
    return _EpochLosses({term: float(total) / seen for term, total in sums.items()}, seen)


class _Progress:
    """The epoch bar on stderr, with the last epoch's figures and samples per second."""

    def __init__(self, *, epochs: int, start: int, desc: str, unit: str, enabled: bool):
        from tqdm.auto import tqdm

        self.unit = unit
        self.bar = tqdm(total=epochs, initial=start, unit="epoch", desc=desc, disable=not enabled,
                        file=sys.stderr, dynamic_ncols=True, leave=False)

    def epoch_done(self, metrics: dict, seen: int) -> None:
        shown = {k: f"{v:.4g}" for k, v in metrics.items() if k not in ("epoch", "seconds")}
        if metrics.get("seconds"):
            shown[f"{self.unit}/s"] = f"{seen / metrics['seconds']:.0f}"
        self.bar.update(1)
        self.bar.set_postfix(shown, refresh=False)

    def close(self) -> None:
        self.bar.close()


@dataclass
class _Progression:
    """Where a run stands: the history so far, the next epoch, and whether it has finished."""

    stopper: EarlyStopping
    scheduler: Any
    history: list[dict] = field(default_factory=list)
    epoch: int = 0
    finished: bool = False


class _Checkpoints:
    """Saving and resuming a run's state in ``store.checkpoints`` under ``(name, key)``."""

    def __init__(self, store, name: str, key: str | None):
        self.store, self.name, self.key = store, name, key
        self.enabled = store is not None and key is not None

    def resume(self, state: _Progression, model, optimizer) -> None:
        """Load the saved state (when there is one) into ``state``, ``model`` and ``optimizer``."""
        from store.checkpoints import load_checkpoint

        saved = load_checkpoint(self.store, self.name, self.key) if self.enabled else None
        if saved is None:
            return
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state.stopper.load_state_dict(saved["early"])
        if state.scheduler is not None and saved.get("scheduler") is not None:
            state.scheduler.load_state_dict(saved["scheduler"])
        state.history = list(saved["history"])
        state.epoch, state.finished = int(saved["epoch"]), bool(saved["finished"])
        _set_rng_state(saved["rng"])

    def save(self, state: _Progression, model, optimizer) -> None:
        """Write the state after an epoch (atomic replacement of the previous checkpoint)."""
        from store.checkpoints import save_checkpoint

        if not self.enabled:
            return
        save_checkpoint(self.store, self.name, self.key, {
            "version": 1, "key": self.key, "epoch": state.epoch, "finished": state.finished,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "early": state.stopper.state_dict(), "history": state.history, "rng": _rng_state(),
            "scheduler": state.scheduler.state_dict() if state.scheduler is not None else None,
        })


def _plateau_scheduler(optimizer, *, factor: float | None, mode: str, patience: int, validated: bool):
    import torch

    if factor is None or not validated:
        return None
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=factor,
                                                      patience=max(1, patience // 2 - 1))


def _judge(state: _Progression, metrics: dict, *, model, optimizer, validate, monitor: str) -> None:
    """Add ``validate``'s figures to ``metrics`` (eval mode, no gradients); step early stopping and the schedule."""
    import torch

    model.eval()
    with torch.no_grad():
        metrics.update(validate(metrics["epoch"]))
    if monitor not in metrics:
        raise ParameterError(f"validate() returned {sorted(metrics)} without the monitored {monitor!r}.")
    state.stopper.step(float(metrics[monitor]), model, int(metrics["epoch"]))
    if state.scheduler is not None:
        state.scheduler.step(float(metrics[monitor]))
        metrics["lr"] = float(optimizer.param_groups[0]["lr"])


def fit_minibatches(
    *,
    model,
    optimizer,
    loss: Callable[[Any], Any],
    samples: np.ndarray | Callable[[np.random.Generator], np.ndarray],
    epochs: int,
    seed: int,
    batch_size: int,
    inputs: Callable[[Batch], Any] | None = None,
    stream: int = 0,
    rng_seed: int | None = None,
    min_batch: int = 2,
    validate: Callable[[int], dict] | None = None,
    monitor: str = "val_loss",
    mode: str = "min",
    patience: int = 5,
    plateau_factor: float | None = None,
    store=None,
    name: str = "training",
    key: str | None = None,
    progress: bool = True,
    desc: str | None = None,
    unit: str = "sample",
) -> LoopResult:
    """Train ``model`` on minibatches for up to ``epochs`` epochs; early stopping; checkpoint and resume.

    ``samples`` are the epoch's training samples (row indices, or rows of an array such as index
    pairs), or a function drawing them from the epoch's generator. Each epoch shuffles them with
    ``epoch_rng(rng_seed or seed, epoch, stream)`` and cuts batches of ``batch_size``;
    ``inputs(batch)`` (optional, full precision: indexing, augmentation) prepares a ``Batch`` and
    ``loss(prepared)`` — under ``autocast`` — returns the loss tensor or ``Losses``. Torch's global
    generator is reseeded from ``(seed, epoch)`` before each epoch (dropout). ``validate(epoch)``
    returns figures including ``monitor`` (eval mode, no gradients); without it every epoch runs and
    the last weights are kept, otherwise the best weights are loaded at the end. ``plateau_factor``
    (e.g. 0.1) multiplies the learning rate when ``monitor`` has not improved for half the patience.
    With ``store`` and ``key`` a checkpoint is written after every epoch as ``(name, key)`` and a
    finished or interrupted run with the same key is resumed. ``unit`` names a sample on the bar.
    """
    import torch

    if int(epochs) < 1:
        raise ParameterError(f"The 'epochs' parameter must be an int in [1, inf). Got {epochs!r} instead.")
    device = next(iter(model.parameters())).device
    plan = _Schedule(model, optimizer, loss, inputs, samples, int(batch_size), int(min_batch), int(seed),
                     int(seed if rng_seed is None else rng_seed), int(stream), device)
    state = _Progression(
        stopper=EarlyStopping(mode=mode, patience=patience if validate is not None else 0),
        scheduler=_plateau_scheduler(optimizer, factor=plateau_factor, mode=mode, patience=patience,
                                     validated=validate is not None),
    )
    checkpoints = _Checkpoints(store, name, key)
    checkpoints.resume(state, model, optimizer)
    resumed_from = state.epoch
    began = time.perf_counter()
    bar = _Progress(epochs=epochs, start=state.epoch, desc=desc or name, unit=unit,
                    enabled=progress and not state.finished)
    try:
        while not state.finished and state.epoch < epochs:
            torch.manual_seed(epoch_seed(seed, state.epoch, stream=1))
            t0 = time.perf_counter()
            model.train()
            trained = _minibatch_epoch(plan, state.epoch)
            metrics = {"epoch": state.epoch, **trained.terms, "seconds": time.perf_counter() - t0}
            if validate is not None:
                _judge(state, metrics, model=model, optimizer=optimizer, validate=validate, monitor=monitor)
            state.history.append({k: float(v) for k, v in metrics.items()})
            state.epoch += 1
            state.finished = state.epoch >= epochs or state.stopper.should_stop
            checkpoints.save(state, model, optimizer)
            bar.epoch_done(metrics, trained.seen)
    finally:
        bar.close()
    return _finish(state, model, epochs=epochs, resumed_from=resumed_from, began=began)


def _finish(state: _Progression, model, *, epochs: int, resumed_from: int, began: float) -> LoopResult:
    """Load the best weights (when validation chose some) and say what the run did."""
    stopper = state.stopper
    if stopper.best_state is not None:
        model.load_state_dict(stopper.best_state)
    epochs_run = len(state.history)
    return LoopResult(
        epochs_run=epochs_run,
        start_epoch=resumed_from,
        best_epoch=stopper.best_epoch if stopper.best_state is not None else epochs_run - 1,
        best_value=stopper.best,
        stopped_early=epochs_run < epochs,
        history=state.history,
        seconds=time.perf_counter() - began,
    )


def batched_outputs(forward: Callable[[Any], Any], rows: np.ndarray | int, *, batch_size: int = 256, device=None,
                    mixed: bool = True) -> np.ndarray:
    """``forward(chunk)`` over ``rows`` (indices, or a count: ``range(rows)``) in chunks, as one float32 array.

    Runs without gradients and, with ``mixed`` on CUDA, under autocast; ``chunk`` is a slice of
    ``rows`` (a NumPy array, or a ``slice`` for a count). An empty ``rows`` gives a ``(0,)`` array.
    """
    import torch

    count = rows if isinstance(rows, (int, np.integer)) else len(rows)
    chunks = []
    with torch.no_grad():
        for start in range(0, int(count), batch_size):
            chunk = (slice(start, min(start + batch_size, int(count))) if isinstance(rows, (int, np.integer))
                     else rows[start : start + batch_size])
            with autocast(device) if mixed and device is not None else contextlib.nullcontext():
                chunks.append(forward(chunk).float().cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0,), np.float32)


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
