"""ChronoMID networks (seed 000): Table 1 architectures, difference channels, ``fit xcnn`` on the demo."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from classifiers._xcnn_nets import (
    XCNN_VARIANTS,
    build_xcnn,
    count_parameters,
    l2_penalty,
)
from classifiers.xcnn import select_variants
from features.errors import ParameterError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(
    "arch, timestamps, paper",
    [("baseline", False, 863_883), ("baseline", True, 863_947), ("xcnn", False, 1_643_323), ("xcnn", True, 1_643_387)],
)
def test_parameter_counts_match_table_1_at_the_paper_canvas(arch, timestamps, paper):
    model = build_xcnn(arch, image_shape=(501, 763), n_classes=2, timestamps=timestamps)
    assert abs(count_parameters(model) - paper) / paper < 0.003


def test_timestamp_adds_one_input_to_the_first_dense_layer():
    plain = build_xcnn("xcnn", image_shape=(64, 64), n_classes=2, timestamps=False)
    timed = build_xcnn("xcnn", image_shape=(64, 64), n_classes=2, timestamps=True)
    assert count_parameters(timed) - count_parameters(plain) == 64


def test_forward_shapes_and_l2_term():
    x = torch.randn(4, 1, 48, 64)
    for arch in ("baseline", "xcnn"):
        model = build_xcnn(arch, image_shape=(48, 64), n_classes=3, timestamps=True).eval()
        out = model(x, x if arch == "xcnn" else None, torch.arange(4.0))
        assert out.shape == (4, 3)
        assert float(l2_penalty(model).detach()) > 0


def test_the_xcnn_reads_the_difference_channel():
    """A class visible only in the difference image: the X-CNN learns it, the image-only CNN cannot."""
    rng = np.random.default_rng(0)
    n = 256
    y = rng.integers(0, 2, n)
    images = rng.normal(size=(n, 1, 32, 32)).astype(np.float32)
    diffs = rng.normal(scale=0.3, size=(n, 1, 32, 32)).astype(np.float32)
    diffs[y == 1, :, 8:24, 8:24] += 1.0
    x, d, t = torch.from_numpy(images), torch.from_numpy(diffs), torch.from_numpy(y)
    accuracy = {}
    for arch in ("baseline", "xcnn"):
        torch.manual_seed(0)
        model = build_xcnn(arch, image_shape=(32, 32), n_classes=2, timestamps=False)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(6):
            model.train()
            for start in range(0, 192, 32):
                idx = slice(start, start + 32)
                loss = torch.nn.functional.cross_entropy(model(x[idx], d[idx]), t[idx]) + l2_penalty(model)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        model.eval()
        with torch.no_grad():
            accuracy[arch] = float((model(x[192:], d[192:]).argmax(1) == t[192:]).float().mean())
    assert accuracy["xcnn"] > 0.85
    assert accuracy["baseline"] < 0.7


def test_variant_selection():
    assert [v[0] for v in select_variants(None, None)] == [v[0] for v in XCNN_VARIANTS]
    labels = [v[0] for v in select_variants("absolute", False)]
    assert labels == ["CNN", "X-CNN, abs. diff."]
    assert all(v[3] for v in select_variants(None, True))
    with pytest.raises(ParameterError):
        select_variants("sideways", None)


def test_fit_xcnn_on_the_chronomid_demo_writes_runs(tmp_store):
    from classifiers.xcnn import fit_xcnn
    from store.ingest import ingest_dataset
    from store.runs import list_runs, run_metrics, run_predictions
    from store.sql import query

    ingest_dataset(tmp_store, "chronomid", progress=False)
    report = fit_xcnn(tmp_store, dataset="chronomid", reference="absolute", timestamps=False, epochs=1,
                      image_size=32, device="cpu", progress=False)
    results = report.results
    assert [r.label for r in results] == ["CNN", "X-CNN, abs. diff."]
    text = "\n".join(report.summary_lines())
    assert "Accuracy %" in text and "X-CNN, abs. diff." in text and "s/epoch" in text
    runs = list_runs(tmp_store).to_pylist()
    assert {r["model"] for r in runs} == {"xcnn"} and len(runs) == 2
    test_subjects = query(tmp_store, "SELECT DISTINCT subject FROM predictions").column(0).to_pylist()
    assert len(test_subjects) == 2  # one mouse per class, as in ChronoMID
    for result in results:
        assert 0.0 <= result.accuracy <= 1.0 and result.parameters > 0 and result.seconds_per_epoch > 0
        metrics = {
            r["metric"]: r["value"] for r in run_metrics(tmp_store, result.run_id).to_pylist() if r["class"] is None
        }
        assert metrics["accuracy"] == pytest.approx(result.accuracy)
        predictions = run_predictions(tmp_store, result.run_id)
        assert predictions.num_rows == result.n_test
    labels = {
        r["subject"]: r["label"]
        for r in query(tmp_store, "SELECT subject, any_value(label) AS label FROM scans GROUP BY 1").to_pylist()
    }
    assert sorted(labels[s] for s in test_subjects) == ["pth", "wild_type"]
    pairs_run = next(r for r in results if r.arch == "xcnn")
    keys = set(run_predictions(tmp_store, pairs_run.run_id).column("key").to_pylist())
    assert keys <= set(
        query(tmp_store, "SELECT pair_id FROM pairs WHERE reference_mode = 'absolute'").column(0).to_pylist()
    )


def test_xcnn_is_a_registered_model_with_checked_parameters():
    from classifiers._registry import create_model, list_models

    assert "xcnn" in list_models()
    with pytest.raises(ParameterError, match="'epochs' parameter of fit xcnn"):
        create_model("xcnn", epochs=0)
    with pytest.raises(ParameterError, match="'reference'"):
        create_model("xcnn", reference="sideways")


def test_fit_xcnn_through_the_fit_dispatch_applies_its_defaults(monkeypatch, tmp_store):
    import classifiers.xcnn as xcnn
    from classifiers.fitting import FitRequest, fit

    calls = []
    monkeypatch.setattr(xcnn, "fit_xcnn", lambda store, **options: calls.append(options) or "report")
    assert fit(tmp_store, FitRequest(model="xcnn")) == "report"
    assert calls[-1] == {"dataset": "chronomid", "reference": None, "timestamps": None, "epochs": 10, "seed": 0,
                         "device": "auto", "image_size": 64, "batch_size": 32, "lr": 1e-3, "progress": True}
    fit(tmp_store, FitRequest(model="xcnn", dataset="mice", reference="relative", timestamps=True, epochs=3,
                              device="cpu"))
    assert {k: calls[-1][k] for k in ("dataset", "reference", "timestamps", "epochs", "device")} == {
        "dataset": "mice", "reference": "relative", "timestamps": True, "epochs": 3, "device": "cpu"}
    with pytest.raises(ParameterError, match="'epochs'"):
        fit(tmp_store, FitRequest(model="xcnn", epochs=-1))
