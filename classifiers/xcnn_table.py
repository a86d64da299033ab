"""What ``fit xcnn`` reports: Table 1 of ChronoMID over seeds, and each variant's learning curve.

``XcnnSeed`` is one variant trained with one seed (its held-out accuracy, the epochs it ran and its
per-epoch history); ``XcnnResult`` gathers the seeds of one Table-1 row. ``format_table1`` prints the
paper's columns (accuracy, seconds per epoch, parameters) plus balanced accuracy, every seed's value
and whether every seed beat chance; ``format_curves`` and ``plot_learning_curves`` show the training
loss, validation loss and validation accuracy by epoch, the evidence that a network converged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["XcnnSeed", "XcnnResult", "format_table1", "format_by_time", "format_curves", "plot_learning_curves",
           "curve_image"]

CHANCE = 0.5  # balanced accuracy of a classifier that ignores its input, whatever the class sizes


@dataclass
class XcnnSeed:
    """One variant trained with one seed: held-out figures, the run of epochs and its history."""

    seed: int
    accuracy: float
    balanced_accuracy: float
    train_accuracy: float
    val_accuracy: float
    seconds_per_epoch: float
    epochs_run: int
    best_epoch: int
    n_train: int
    n_val: int
    n_test: int
    resumed_from: int = 0
    history: list = field(default_factory=list)
    refit_epochs: int = 0  # epochs of the final network on train+val (0: the validated network is final)
    by_time: dict = field(default_factory=dict)  # time index -> [correct, total] held-out units


@dataclass
class XcnnResult:
    """One Table-1 row: the variant and its outcome on every seed (``seeds``), written as run ``run_id``."""

    label: str
    arch: str
    reference: str | None
    timestamps: bool
    parameters: int
    paper_parameters: int
    seeds: list[XcnnSeed]
    run_id: str = ""

    @property
    def unit(self) -> str:
        """What the variant classifies: ``scans`` (baseline CNN) or ``pairs`` (X-CNN)."""
        return "scans" if self.arch == "baseline" else "pairs"

    def _values(self, name: str) -> np.ndarray:
        return np.array([getattr(s, name) for s in self.seeds], dtype=float)

    @property
    def accuracy(self) -> float:
        """Held-out accuracy, mean over seeds."""
        return float(self._values("accuracy").mean())

    @property
    def balanced_accuracy(self) -> float:
        """Held-out balanced accuracy, mean over seeds."""
        return float(self._values("balanced_accuracy").mean())

    @property
    def seconds_per_epoch(self) -> float:
        """Mean training seconds per epoch over seeds."""
        return float(self._values("seconds_per_epoch").mean())

    @property
    def epochs(self) -> int:
        """Epochs run by the first seed (early stopping may end a run before the maximum)."""
        return self.seeds[0].epochs_run

    @property
    def n_train(self) -> int:
        """Training units of the first seed."""
        return self.seeds[0].n_train

    @property
    def n_test(self) -> int:
        """Held-out test units of the first seed."""
        return self.seeds[0].n_test

    @property
    def history(self) -> list:
        """The first seed's per-epoch history."""
        return self.seeds[0].history

    @property
    def above_chance(self) -> bool:
        """True when the balanced accuracy beat chance (0.5) on every seed."""
        return bool((self._values("balanced_accuracy") > CHANCE).all())


def _mean_std(values: np.ndarray) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * values.mean():.1f} ± {100 * values.std(ddof=1):.1f}"


def format_table1(results: list[XcnnResult], *, epochs: int, image_size: int, patience: int | None = None,
                  inits: int = 1) -> str:
    """Table 1 of ChronoMID for this fit: accuracy and balanced accuracy (mean ± std over seeds), every
    seed's balanced accuracy, whether all beat chance, train accuracy, seconds per epoch, epochs run,
    parameters here and at the paper's canvas. ``inits`` > 1: each seed's figures are those of its
    networks' averaged probabilities (epochs and s/epoch: the first network's)."""
    lines = [
        f"{'Method':<31} {'Accuracy %':>12} {'Bal. acc. %':>12} {'bal. acc. % per seed':>21} {'>chance':>7} "
        f"{'train %':>7} {'s/epoch':>7} {'epochs':>7} {'Parameters':>10} {'@501x763':>10}",
    ]
    for r in results:
        per_seed = " ".join(f"{100 * s.balanced_accuracy:.0f}" for s in r.seeds)
        ran = "/".join(str(s.epochs_run) for s in r.seeds[:3]) + ("/…" if len(r.seeds) > 3 else "")
        lines.append(
            f"{r.label:<31} {_mean_std(r._values('accuracy')):>12} {_mean_std(r._values('balanced_accuracy')):>12} "
            f"{per_seed:>21} {'yes' if r.above_chance else 'NO':>7} {100 * r._values('train_accuracy').mean():>7.1f} "
            f"{r.seconds_per_epoch:>7.2f} {ran:>7} {r.parameters:>10,d} {r.paper_parameters:>10,d}"
        )
    seeds = [s.seed for s in results[0].seeds] if results else []
    stopping = f", early stopping on val loss (patience {patience})" if patience else ""
    averaged = (f"; each seed averages the probabilities of {inits} networks from different initialisations "
                "(epochs, s/epoch: the first network's)") if inits > 1 else ""
    lines.append(
        f"(seeds {', '.join(map(str, seeds))}: mean ± std; up to {epochs} epochs{stopping}{averaged}; "
        f"{image_size}x{image_size} "
        "inputs; test = one held-out subject per class, chosen by the seed; chance = 50 % balanced; parameters "
        "counted as Keras does; last column: the same network at the paper's 501x763 canvas, Table 1 lists "
        "863,883 / 1,643,323)"
    )
    return "\n".join(lines)


def format_by_time(results: list[XcnnResult]) -> list[str]:
    """Held-out accuracy % by time index, pooled over seeds, one line per variant: where a treatment acts
    only from some week on, the earlier weeks hold no signal and any classifier is at chance there."""
    times = sorted({int(t) for r in results for s in r.seeds for t in s.by_time})
    if not times:
        return []
    lines = ["held-out accuracy % by week (time index), pooled over seeds; [n] held-out units",
             f"  {'':<31} " + " ".join(f"{t:>9}" for t in times)]
    for r in results:
        cells = []
        for t in times:
            correct = sum(s.by_time.get(t, (0, 0))[0] for s in r.seeds)
            total = sum(s.by_time.get(t, (0, 0))[1] for s in r.seeds)
            cells.append(f"{100 * correct / total:>3.0f} [{total:>3}]" if total else f"{'-':>9}")
        lines.append(f"  {r.label:<31} " + " ".join(cells))
    return lines


def format_curves(results: list[XcnnResult]) -> list[str]:
    """One line per variant: the first seed's train loss / val loss / val accuracy % by epoch (* = kept)."""
    lines = []
    for r in results:
        s = r.seeds[0]
        cells = []
        for h in s.history:
            mark = "*" if int(h["epoch"]) == s.best_epoch else ""
            cells.append(f"{h['loss']:.2f}/{h.get('val_loss', float('nan')):.2f}/"
                         f"{100 * h.get('val_accuracy', float('nan')):.0f}{mark}")
        lines.append(f"  {r.label} (seed {s.seed}): " + " ".join(cells))
    return ["learning curves, per epoch: train loss / val loss / val acc % (* = the weights kept)", *lines]


def plot_learning_curves(path: str | Path, curves: dict[str, list[dict]]) -> bool:
    """Write a PNG of train loss, val loss and val accuracy by epoch for each ``{label: history}``.

    Returns False (and writes nothing) when no history has a validation figure. Uses matplotlib's
    Agg backend.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    curves = {k: v for k, v in curves.items() if v and "val_loss" in v[0]}
    if not curves:
        return False
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (label, history) in enumerate(curves.items()):
        epochs = [int(h["epoch"]) + 1 for h in history]
        color = f"C{i % 10}"
        ax_loss.plot(epochs, [h["loss"] for h in history], "--", color=color, label=f"{label} train")
        ax_loss.plot(epochs, [h["val_loss"] for h in history], "-", color=color, label=f"{label} val")
        ax_acc.plot(epochs, [100 * h["val_accuracy"] for h in history], "-", color=color, label=label)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="train (dashed) and validation loss")
    ax_acc.set(xlabel="epoch", ylabel="%", title="validation accuracy")
    ax_acc.axhline(100 * CHANCE, color="grey", lw=0.8)
    ax_loss.legend(fontsize=6)
    ax_acc.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def curve_image(directory: str | Path, config: dict) -> list[tuple[str, str]]:
    """For a run report: the learning-curve PNG of an ``xcnn`` run's ``config`` (its per-seed ``history``)
    written into ``directory``; ``[(file name, caption)]``, empty when the run has no curve."""
    histories = config.get("history") or {}
    if isinstance(histories, list):
        histories = {"0": histories}
    label = config.get("variant", "xcnn")
    curves = {f"{label}, seed {seed}": h for seed, h in histories.items()}
    name = "learning_curve.png"
    if not plot_learning_curves(Path(directory) / name, curves):
        return []
    return [(name, f"{label}: learning curve (train / val loss, val accuracy)")]
