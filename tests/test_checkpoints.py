"""Training checkpoints: atomic saves in the store, and a SIGKILLed training resuming to the same weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from features.errors import ParameterError, StoreError
from store.checkpoints import (
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
)

REPO = Path(__file__).resolve().parent.parent

# A real (small) convolutional training through the shared loop: checkpoint after every epoch, resume.
TRAINING_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np, torch
    torch.set_num_threads(1)
    from extractors.nets import SmallCNN
    from extractors.training import deterministic, fit_minibatches
    from features.augment import augment_batch, sample_params
    from store.layout import open_store

    store_dir, out_file, epochs, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    store = open_store(store_dir)
    data = np.random.default_rng(0)
    x = torch.from_numpy(data.normal(size=(96, 1, 32, 32)).astype(np.float32))
    y = torch.from_numpy((x[:, 0, :16].mean(dim=(1, 2)) > 0).long().numpy())
    with deterministic(7):
        net = torch.nn.Sequential(SmallCNN(1, (8, 16)), torch.nn.Dropout(0.3), torch.nn.Linear(16, 2))
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)

        def inputs(batch):
            idx = torch.from_numpy(batch.rows)
            return augment_batch(x[idx], sample_params(batch.rng, len(idx))), y[idx]

        def loss(prepared):
            images, labels = prepared
            return torch.nn.functional.cross_entropy(net(images), labels)

        def validate(epoch):
            time.sleep(pause)  # a slow epoch: the test kills the run here, after the first checkpoint
            return {"val_loss": float(torch.nn.functional.cross_entropy(net(x[:32]), y[:32]))}

        result = fit_minibatches(model=net, optimizer=opt, loss=loss, inputs=inputs, samples=np.arange(len(x)),
                                 batch_size=16, validate=validate, epochs=epochs, seed=7, patience=100, store=store,
                                 name="resume-test", key="k1", progress=False)
    torch.save(net.state_dict(), out_file)
    print("START", result.start_epoch, "RUN", result.epochs_run, flush=True)
    """
)


def _run(script: Path, store: Path, out: Path, epochs: int, pause: float) -> subprocess.Popen:
    env = {**os.environ, "CHRONOFEAT_NO_BOOTSTRAP": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(script), str(store), str(out), str(epochs), str(pause)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_save_load_roundtrip_and_atomic_replacement(tmp_store):
    state = {"epoch": 3, "model": {"w": torch.arange(6.0)}, "history": [{"loss": 1.5}], "finished": False}
    path = save_checkpoint(tmp_store, "siamese", "abc123", state)
    assert path == checkpoint_path(tmp_store, "siamese", "abc123") and path.is_file()
    loaded = load_checkpoint(tmp_store, "siamese", "abc123")
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], torch.arange(6.0))
    save_checkpoint(tmp_store, "siamese", "abc123", {**state, "epoch": 4})
    assert load_checkpoint(tmp_store, "siamese", "abc123")["epoch"] == 4
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]  # no temporary file left behind
    assert list_checkpoints(tmp_store) == [path]
    assert load_checkpoint(tmp_store, "siamese", "other") is None
    assert remove_checkpoint(tmp_store, "siamese", "abc123") and load_checkpoint(tmp_store, "siamese", "abc123") is None


def test_bad_names_and_damaged_files_are_errors(tmp_store):
    with pytest.raises(ParameterError):
        checkpoint_path(tmp_store, "../escape", "k")
    path = checkpoint_path(tmp_store, "cae", "k")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(StoreError, match="Delete it"):
        load_checkpoint(tmp_store, "cae", "k")


def test_sigkilled_training_resumes_to_identical_weights(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAINING_SCRIPT)
    epochs = 6

    # uninterrupted reference run
    ref = _run(script, tmp_path / "ref_store", tmp_path / "ref.pt", epochs, 0.0)
    ref_out, ref_err = ref.communicate(timeout=240)
    assert ref.returncode == 0, ref_err
    assert "START 0 RUN 6" in ref_out

    # interrupted run: SIGKILL as soon as the first checkpoint exists (while epoch 2 is validated)
    store = tmp_path / "store"
    ckpt = store / "checkpoints" / "resume-test" / "k1.pt"
    victim = _run(script, store, tmp_path / "never.pt", epochs, 1.0)
    deadline = time.monotonic() + 180
    while not ckpt.exists() and time.monotonic() < deadline and victim.poll() is None:
        time.sleep(0.02)
    assert ckpt.exists(), victim.communicate()[1]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "never.pt").exists()

    resumed = _run(script, store, tmp_path / "resumed.pt", epochs, 0.0)
    out, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err
    start = int(out.split("START")[1].split()[0])
    assert 0 < start < epochs, out
    assert "RUN 6" in out
    reference, final = torch.load(tmp_path / "ref.pt"), torch.load(tmp_path / "resumed.pt")
    assert reference.keys() == final.keys()
    for name in reference:  # bit-identical on CPU with one thread: all randomness derives from (seed, epoch)
        assert torch.equal(reference[name], final[name]), name
