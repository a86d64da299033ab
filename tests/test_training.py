"""The one training loop (``extractors.training.fit_minibatches``): learning, seeding, resuming, loss averaging."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from extractors.training import (
    Losses,
    batched_outputs,
    deterministic,
    epoch_rng,
    fit_minibatches,
)
from features.errors import ParameterError


def _problem(n: int = 64, seed: int = 0):
    """A linearly separable two-class problem: the class is the sign of the first feature."""
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.normal(size=(n, 4)).astype(np.float32))
    y = (x[:, 0] > 0).long()
    return x, y


class _Task:
    """A small MLP with dropout (so torch's per-epoch seeding matters) on ``_problem``."""

    def __init__(self, seed: int, *, lr: float = 0.05, optimizer: str = "adam"):
        self.x, self.y = _problem()
        with deterministic(seed):
            self.model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                             torch.nn.Linear(16, 2))
        make = torch.optim.Adam if optimizer == "adam" else torch.optim.SGD
        self.optimizer = make(self.model.parameters(), lr=lr)
        self.seen: list[np.ndarray] = []

    def inputs(self, batch):
        self.seen.append(batch.rows.copy())
        return torch.from_numpy(batch.rows)

    def loss(self, idx):
        return torch.nn.functional.cross_entropy(self.model(self.x[idx]), self.y[idx])

    def fit(self, **options):
        settings = dict(model=self.model, optimizer=self.optimizer, loss=self.loss, inputs=self.inputs,
                        samples=np.arange(len(self.x)), batch_size=8, epochs=5, seed=3, progress=False)
        return fit_minibatches(**{**settings, **options})

    def weights(self) -> dict:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}


def test_loss_decreases_on_a_learnable_problem():
    task = _Task(seed=0)
    result = task.fit(epochs=15)
    losses = [h["loss"] for h in result.history]
    assert result.epochs_run == 15 and len(losses) == 15
    assert losses[-1] < 0.5 * losses[0]
    task.model.eval()
    with torch.no_grad():
        accuracy = (task.model(task.x).argmax(1) == task.y).float().mean()
    assert accuracy > 0.9


def test_the_same_seed_gives_identical_weights_and_another_seed_does_not():
    first, second, other = _Task(seed=0), _Task(seed=0), _Task(seed=0)
    first.fit()
    second.fit()
    other.fit(seed=4)
    for name, value in first.weights().items():
        assert torch.equal(value, second.weights()[name]), name
    assert any(not torch.equal(v, other.weights()[k]) for k, v in first.weights().items())
    assert [r.tolist() for r in first.seen] == [r.tolist() for r in second.seen]
    assert [r.tolist() for r in first.seen] != [r.tolist() for r in other.seen]  # a seed's shuffling is its own


def test_resuming_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path):
    from store.layout import open_store

    def validate_with(task):
        def validate(epoch: int) -> dict:
            return {"val_loss": float(task.loss(torch.arange(16)))}

        return validate

    reference = _Task(seed=0)
    full = reference.fit(epochs=6, validate=validate_with(reference), patience=100,
                         store=open_store(tmp_path / "a"), key="k")
    store = open_store(tmp_path / "b")

    class Interrupt(Exception):
        pass

    victim = _Task(seed=0)

    def failing_inputs(batch):
        if batch.epoch == 3:
            raise Interrupt
        return victim.inputs(batch)

    with pytest.raises(Interrupt):
        victim.fit(epochs=6, inputs=failing_inputs, validate=validate_with(victim), patience=100, store=store, key="k")
    resumed = _Task(seed=0)  # a fresh process would build the model and optimizer anew
    again = resumed.fit(epochs=6, validate=validate_with(resumed), patience=100, store=store, key="k")
    assert again.start_epoch == 3 and again.epochs_run == 6
    for name, value in reference.weights().items():
        assert torch.equal(value, resumed.weights()[name]), name
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in full.history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in again.history]
    finished = _Task(seed=0).fit(epochs=6, store=store, key="k")  # a finished run is loaded, not trained
    assert finished.start_epoch == 6 and finished.epochs_run == 6


def test_the_epoch_loss_is_the_mean_over_the_samples_trained_on():
    task = _Task(seed=0, lr=0.0, optimizer="sgd")  # weights never move: every sample's loss is fixed
    task.model[2].p = 0.0  # no dropout in this check: the per-sample losses below are exact
    with torch.no_grad():
        per_sample = torch.nn.functional.cross_entropy(task.model(task.x), task.y, reduction="none").double()
    result = task.fit(epochs=1, samples=np.arange(17), batch_size=8)  # batches of 8, 8 and 1: the 1 is skipped
    seen = np.concatenate(task.seen)
    assert [len(rows) for rows in task.seen] == [8, 8] and len(set(seen.tolist())) == 16
    assert result.history[0]["loss"] == pytest.approx(float(per_sample[seen].mean()), rel=1e-6)
    expected_order = np.arange(17)[epoch_rng(3, 0, 0).permutation(17)]
    assert seen.tolist() == expected_order[:16].tolist()


def test_losses_report_every_term_and_samples_may_be_drawn_per_epoch():
    task = _Task(seed=0)
    drawn = []

    def samples(rng):
        rows = rng.choice(len(task.x), size=24, replace=False)
        drawn.append(rows)
        return rows

    def loss(idx):
        main = task.loss(idx)
        penalty = sum((p**2).sum() for p in task.model.parameters())
        return Losses(main + 1e-3 * penalty, {"loss": main, "penalty": penalty})

    result = task.fit(epochs=2, samples=samples, loss=loss)
    assert {"loss", "penalty", "epoch", "seconds"} <= set(result.history[0])
    assert len(drawn) == 2 and not np.array_equal(drawn[0], drawn[1])
    assert sorted(np.concatenate(task.seen[:3]).tolist()) == sorted(drawn[0].tolist())


def test_early_stopping_keeps_the_best_weights():
    task = _Task(seed=0)
    snapshots = []

    def validate(epoch: int) -> dict:
        snapshots.append(task.weights())
        return {"val_loss": float(epoch)}  # only ever worse after the first epoch

    result = task.fit(epochs=20, validate=validate, patience=2)
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 0
    for name, value in snapshots[0].items():
        assert torch.equal(value, task.weights()[name])
    with pytest.raises(ParameterError, match="monitored"):
        _Task(seed=0).fit(epochs=1, validate=lambda epoch: {"other": 1.0})
    with pytest.raises(ParameterError, match="'epochs'"):
        _Task(seed=0).fit(epochs=0)


def test_batched_outputs_in_chunks():
    x = torch.arange(10.0).view(10, 1)
    out = batched_outputs(lambda chunk: x[chunk] * 2, 10, batch_size=3)
    assert out.dtype == np.float32 and out.ravel().tolist() == [2.0 * i for i in range(10)]
    picked = batched_outputs(lambda chunk: x[torch.from_numpy(chunk)], np.array([4, 1, 7]), batch_size=2)
    assert picked.ravel().tolist() == [4.0, 1.0, 7.0]
    assert batched_outputs(lambda chunk: x[chunk], 0).shape == (0,)
