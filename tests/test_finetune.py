"""``fit finetune``: a timm network fine-tuned end to end on a demo dataset, judged on held-out subjects.

Uses timm's ``test_efficientnet`` (0.1 M parameters) with random weights at 32 px: the same code path as
EfficientNet-B0 / ConvNeXt with pretrained weights, at a fraction of the cost (no internet here).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests._demo_stores import core_copy, demo_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = "test_efficientnet"
ARGS = ("fit", "finetune", "--model", TINY, "--weights", "random", "--dataset", "chronomid", "--image-size", "32")


@pytest.fixture(scope="module")
def chronomid(tmp_path_factory):
    return demo_store(tmp_path_factory, "chronomid")


def _metrics(store, run_id):
    from store.runs import run_metrics

    return {(m["split"], m["metric"]): m["value"] for m in run_metrics(store, run_id).to_pylist()
            if m["class"] is None}


@pytest.mark.slow
def test_finetune_writes_a_run_with_train_and_test_metrics_and_predictions(chronomid, tmp_path):
    from classifiers.fitting import FitRequest, fit
    from store.runs import run_predictions, run_row

    store = core_copy(chronomid, tmp_path / "store")
    request = FitRequest(model="finetune", backbone=TINY, weights="random", dataset="chronomid", image_size=32,
                         epochs=2, batch_size=32, progress=False, n_boot=50)
    outcome = fit(store, request)
    text = "\n".join(outcome.summary_lines())
    assert "test accuracy" in text and "train accuracy" in text and outcome.run_id in text
    row = run_row(store, outcome.run_id)
    assert row["model"] == "finetune" and row["unit"] == "scans" and row["classes"] == ["pth", "wild_type"]
    assert row["config"]["params"]["model"] == TINY and row["config"]["test_rule"] == "per_class"
    metrics = _metrics(store, outcome.run_id)
    for split in ("train", "val", "test"):
        assert 0.0 <= metrics[(split, "accuracy")] <= 1.0
    predictions = run_predictions(store, outcome.run_id).to_pylist()
    test = [p for p in predictions if p["split"] == "test"]
    train = [p for p in predictions if p["split"] == "train"]
    # ChronoMID profile: one held-out mouse per class, never seen in training or validation
    assert len({p["subject"] for p in test}) == 2
    seen = {p["subject"] for p in predictions if p["split"] in ("train", "val")}
    assert not seen & {p["subject"] for p in test}
    assert len(test) + len(train) + sum(p["split"] == "val" for p in predictions) == row["n_units"]
    assert all(abs(sum(dict(p["proba"]).values()) - 1) < 1e-5 for p in test)
    assert {p["y_pred"] for p in test} <= {"pth", "wild_type"}


def test_finetune_options_are_checked_before_anything_is_read(tmp_store):
    from classifiers.finetune import FinetuneModel
    from classifiers.fitting import FitRequest, fit
    from features.errors import ParameterError

    with pytest.raises(ParameterError, match="--model TIMM_NAME"):
        fit(tmp_store, FitRequest(model="finetune"))
    with pytest.raises(ParameterError, match="timm has no model"):
        fit(tmp_store, FitRequest(model="finetune", backbone="no_such_net", dataset="x"))
    with pytest.raises(ParameterError, match="'input' parameter of fit finetune"):
        FinetuneModel(model=TINY, input="video").settings()


def test_finetune_offline_without_weights_fails_fast(chronomid, tmp_path, cli):
    store = core_copy(chronomid, tmp_path / "store")
    began = time.perf_counter()
    result = cli("fit", "finetune", "--model", "efficientnet_b0", "--dataset", "chronomid", store=store.root,
                 env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf"),
                      "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"), "TORCH_HOME": str(tmp_path / "torch")})
    assert result.returncode == 2, result.stderr
    message = result.stderr + result.stdout
    assert "efficientnet_b0" in message and "weights import" in message and "--weights" in message
    assert time.perf_counter() - began < 60
    assert not (store.root / "checkpoints").exists()  # nothing was trained


def _start(store, epochs: int):
    from tests.conftest import REPO

    env = {**os.environ, "CHRONOFEAT_NO_BOOTSTRAP": "1", "OMP_NUM_THREADS": "1", "CHRONOFEAT_STORE": str(store.root)}
    return subprocess.Popen([sys.executable, str(REPO / "cli.py"), *ARGS, "--epochs", str(epochs)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _test_proba(store, run_id):
    from store.runs import run_predictions

    rows = run_predictions(store, run_id, split="test").to_pylist()
    return {p["key"]: dict(p["proba"]) for p in rows}


def _run_id(stdout: str) -> str:
    return next(line.split()[2] for line in stdout.splitlines() if line.startswith("saved: run "))


@pytest.mark.slow
def test_finetune_resumes_after_sigkill_and_ends_like_an_uninterrupted_run(chronomid, tmp_path):
    epochs = 6
    interrupted = core_copy(chronomid, tmp_path / "interrupted")
    proc = _start(interrupted, epochs)
    checkpoints = interrupted.root / "checkpoints" / "finetune"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not any(checkpoints.glob("[!.]*.pt")):
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted:\n" + proc.communicate()[1][-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    from store.checkpoints import load_checkpoint

    saved = [load_checkpoint(interrupted, "finetune", p.stem) for p in checkpoints.glob("[!.]*.pt")]
    assert len(saved) == 1 and 1 <= saved[0]["epoch"] < epochs and not saved[0]["finished"]

    resumed = _start(interrupted, epochs)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert f"resumed after epoch {saved[0]['epoch']}" in out, out  # from the checkpoint, not from scratch

    fresh = core_copy(chronomid, tmp_path / "fresh")
    whole = _start(fresh, epochs)
    out_whole, err_whole = whole.communicate(timeout=600)
    assert whole.returncode == 0, err_whole[-3000:]
    assert "resumed" not in out_whole
    a, b = _test_proba(interrupted, _run_id(out)), _test_proba(fresh, _run_id(out_whole))
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        assert np.allclose([a[key][c] for c in sorted(a[key])], [b[key][c] for c in sorted(b[key])], atol=1e-6)
    assert _metrics(interrupted, _run_id(out)) == pytest.approx(_metrics(fresh, _run_id(out_whole)), nan_ok=True)


def _squares(root, *, subjects: int = 24, per_subject: int = 6, side: int = 40, seed: int = 0) -> dict:
    """A PNG dataset with a manifest: every image is noise with a bright bar; half the subjects' images also
    hold an equally bright 8x8 square at a random place (class 'square', the others 'plain').
    Returns {relative path: (row, col)} of every square's top-left corner."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    lines = ["path,subject,label"]
    corners = {}
    for s in range(subjects):
        label = "square" if s % 2 else "plain"
        for k in range(per_subject):
            x = rng.normal(80, 20, (side, side))
            r, c = rng.integers(0, side - 3), rng.integers(0, side - 16)
            x[r:r + 3, c:c + 16] = 230  # a bright bar in every image: brightness alone does not tell the class
            while label == "square":
                r, c = rng.integers(2, side - 10, size=2)
                if (x[r - 2:r + 10, c - 2:c + 10] < 200).all():
                    x[r:r + 8, c:c + 8] = 230
                    corners[f"s{s:02d}/img{k}.png"] = (int(r), int(c))
                    break
            path = root / f"s{s:02d}" / f"img{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(path)
            lines.append(f"s{s:02d}/img{k}.png,subj{s:02d},{label}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return corners


@pytest.mark.slow
def test_finetune_learns_a_visible_class_signal_and_judges_it_on_unseen_subjects(tmp_path):
    from classifiers.finetune import FinetuneSettings, fit_finetune
    from store.ingest import ingest_dataset
    from store.layout import open_store
    from store.runs import run_predictions, run_row

    _squares(tmp_path / "squares")
    store = open_store(tmp_path / "store")
    ingest_dataset(store, "squares", root=tmp_path / "squares", progress=False)
    report = fit_finetune(store, FinetuneSettings(model="test_resnet", weights="random", epochs=6, image_size=32,
                                                  batch_size=16, lr=3e-3), dataset="squares", progress=False,
                          n_boot=0)
    metrics = _metrics(store, report.run_id)
    assert metrics[("test", "accuracy")] >= 0.9 and metrics[("test", "auc_macro")] >= 0.9, metrics
    test = run_predictions(store, report.run_id, split="test").to_pylist()
    # generic profile: 0.3 of each class's 12 subjects held out, all their images in the test set
    assert len({p["subject"] for p in test}) == 6 and len(test) == 36
    assert run_row(store, report.run_id)["config"]["test_rule"] == "fraction"


@pytest.mark.slow
def test_finetune_trains_on_the_multiview_composite_of_impc(tmp_path_factory, tmp_path):
    """The IMPC recipe: one composite per specimen, target level 1, the profile's 10 % held-out specimens."""
    from classifiers.finetune import FinetuneSettings, fit_finetune
    from store.runs import run_predictions, run_row

    store = core_copy(demo_store(tmp_path_factory, "impc"), tmp_path / "store")
    report = fit_finetune(store, FinetuneSettings(model="test_resnet", input="multiview", weights="random", epochs=2,
                                                  image_size=64, batch_size=16, augment=True),
                          dataset="impc", seeds=1, progress=False, n_boot=0)
    row = run_row(store, report.run_id)
    assert row["unit"] == "specimens" and row["target"] == "level1" and row["n_units"] == 300
    assert row["classes"] == ["abnormal", "normal"] and row["config"]["params"]["augment"] is True
    predictions = run_predictions(store, report.run_id).to_pylist()
    counts = {split: sum(p["split"] == split for p in predictions) for split in ("train", "val", "test")}
    assert sum(counts.values()) == 300 and 25 <= counts["test"] <= 35 and 40 <= counts["val"] <= 60, counts
    assert all(p["key"] and len(p["key"]) == 32 for p in predictions)  # specimen ids
