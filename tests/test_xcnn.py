"""ChronoMID networks (seed 000): Table 1 architectures, difference channels, ``fit xcnn`` on the demo."""

from __future__ import annotations

from dataclasses import replace

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


def _inputs(n_subjects: int = 10, per_subject: int = 6):
    """Fake units: ``n_subjects`` subjects alternating between two classes, ``per_subject`` units each."""
    from classifiers.xcnn import _Inputs

    subjects = np.repeat([f"m{i:02d}" for i in range(n_subjects)], per_subject).astype(object)
    y = np.repeat(np.arange(n_subjects) % 2, per_subject)
    labels = np.array(["pth", "wild_type"], dtype=object)[y]
    n = len(y)
    return _Inputs(np.array([f"k{i}" for i in range(n)], dtype=object), np.zeros((n, 1, 8, 8), np.float32), None,
                   np.zeros(n, np.float32), subjects, labels, y)


def test_the_validation_split_is_subject_grouped_and_disjoint_from_test():
    from classifiers.xcnn import _seed_rows

    inputs = _inputs()
    test = frozenset({"m00", "m01"})
    rows = _seed_rows(inputs, test, seed=0, val_fraction=0.1)
    sides = {name: set(inputs.subjects[getattr(rows, name)].tolist()) for name in ("train", "val", "test")}
    assert sides["test"] == test
    assert not (sides["train"] & sides["val"]) and not (sides["val"] & sides["test"])
    assert not (sides["train"] & sides["test"])
    assert len(sides["val"]) == 2 and sorted(inputs.labels[rows.val][::6]) == ["pth", "wild_type"]  # one per class
    assert sorted(np.concatenate([rows.train, rows.val, rows.test]).tolist()) == list(range(len(inputs.y)))
    assert _seed_rows(inputs, test, seed=0, val_fraction=0.1).val_subjects == rows.val_subjects  # deterministic
    assert len({_seed_rows(inputs, test, seed=s, val_fraction=0.1).val_subjects for s in range(6)}) > 1  # seeded


def test_a_class_with_one_training_subject_is_not_validated():
    from classifiers.xcnn import _seed_rows

    rows = _seed_rows(_inputs(n_subjects=4), frozenset({"m00", "m01"}), seed=0, val_fraction=0.1)
    assert len(rows.val) == 0 and len(rows.train) == 12


def _result(label: str, balanced: list[float], accuracy: list[float] | None = None):
    from classifiers.xcnn_table import XcnnResult, XcnnSeed

    accuracy = accuracy or balanced
    seeds = [XcnnSeed(seed=i, accuracy=a, balanced_accuracy=b, train_accuracy=0.9, val_accuracy=0.8,
                      seconds_per_epoch=1.5, epochs_run=12 + i, best_epoch=8, n_train=400, n_val=150, n_test=150)
             for i, (a, b) in enumerate(zip(accuracy, balanced, strict=True))]
    return XcnnResult(label, "xcnn", "absolute", False, 73_682, 1_642_450, seeds, run_id="r1")


def test_table_1_has_the_papers_columns_and_every_seed():
    from classifiers.xcnn_table import format_table1

    good = _result("X-CNN, abs. diff.", [0.70, 0.80, 0.90], [0.71, 0.79, 0.92])
    bad = _result("CNN", [0.50, 0.62, 0.55])
    text = format_table1([good, bad], epochs=30, image_size=32, patience=6)
    header, row_good, row_bad = text.splitlines()[:3]
    for column in ("Accuracy %", "Bal. acc. %", "per seed", ">chance", "s/epoch", "Parameters", "@501x763"):
        assert column in header
    assert "80.7 ± 10.6" in row_good and "80.0 ± 10.0" in row_good and "70 80 90" in row_good
    assert " yes " in row_good and " NO " in row_bad  # 50 % balanced on seed 0 is not better than chance
    assert "73,682" in row_good and "1,642,450" in row_good and "1.50" in row_good
    assert "seeds 0, 1, 2" in text and "32x32" in text and "patience 6" in text
    assert good.accuracy == pytest.approx(0.8067, abs=1e-3) and good.above_chance and not bad.above_chance
    single = format_table1([_result("X", [0.75])], epochs=5, image_size=64)
    assert "75.00" in single and "±" not in single.splitlines()[1]


def test_held_out_accuracy_by_week_is_pooled_over_seeds():
    from classifiers.xcnn_table import format_by_time, format_table1

    result = _result("X-CNN, abs. diff.", [0.7, 0.8])
    result.seeds[0].by_time = {0: [3, 10], 4: [10, 10]}
    result.seeds[1].by_time = {0: [7, 10], 5: [9, 10]}
    header, weeks, row = format_by_time([result])[:3]
    assert "pooled over seeds" in header and weeks.split() == ["0", "4", "5"]
    assert row.split()[-9:] == ["50", "[", "20]", "100", "[", "10]", "90", "[", "10]"]
    assert format_by_time([_result("X", [0.7])]) == []  # nothing recorded, nothing printed
    averaged = format_table1([result], epochs=5, image_size=32, inits=3)
    assert "probabilities of 3 networks" in averaged
    assert "networks" not in format_table1([result], epochs=5, image_size=32)


def test_learning_curves_are_printed_and_plotted(tmp_path):
    from classifiers.xcnn_table import curve_image, format_curves

    result = _result("X-CNN, abs. diff.", [0.8])
    result.seeds[0].history = [{"epoch": e, "loss": 0.7 - 0.1 * e, "val_loss": 0.7 - 0.05 * e,
                                "val_accuracy": 0.5 + 0.1 * e, "seconds": 1.0} for e in range(3)]
    result.seeds[0].best_epoch = 2
    lines = format_curves([result])
    assert "0.50/0.60/70*" in lines[1] and "0.70/0.70/50 " in lines[1]
    images = curve_image(tmp_path, {"variant": "X-CNN", "history": {"0": result.seeds[0].history}})
    assert images and (tmp_path / images[0][0]).stat().st_size > 1000
    assert curve_image(tmp_path, {"history": {}}) == []


def _difference_inputs(seed: int, *, n_subjects: int, per_subject: int):
    """Fake 32x32 units whose class shows only in the difference channel (a brighter square)."""
    rng = np.random.default_rng(seed)
    inputs = _inputs(n_subjects=n_subjects, per_subject=per_subject)
    n = len(inputs.y)
    inputs.images = rng.normal(size=(n, 1, 32, 32)).astype(np.float32)
    inputs.diffs = rng.normal(scale=0.3, size=(n, 1, 32, 32)).astype(np.float32)
    inputs.diffs[inputs.y == 1, :, 8:24, 8:24] += 1.0
    return inputs


def _toy_dataset():
    from classifiers.xcnn import _Dataset

    data = _Dataset("toy", None, ["pth", "wild_type"], None, None, {}, {0: frozenset({"m00", "m01"})})
    data.recipe = type("R", (), {"canvas": (32, 32)})()
    return data


def test_training_with_validation_learns_and_keeps_the_best_epoch(tmp_store):
    """The real training path (fit_minibatches, validation on held-out subjects, early stopping) on a
    class visible only in the difference channel, where whole subjects are held out."""
    from classifiers.xcnn import _Settings, _train_seed, _Variant

    inputs = _difference_inputs(0, n_subjects=10, per_subject=24)
    settings = _Settings(epochs=8, image_size=32, batch_size=32, lr=1e-3, patience=3, val_fraction=0.2)
    variant = _Variant("X-CNN, abs. diff.", "xcnn", "absolute", False, settings)
    data = _toy_dataset()
    trained = _train_seed(None, data, variant, inputs, 0, device=torch.device("cpu"), progress=False)
    history = trained.outcome.history
    assert {"loss", "l2", "val_loss", "val_accuracy", "seconds"} <= set(history[0])
    assert history[-1]["loss"] < history[0]["loss"]
    best = min(history, key=lambda h: h["val_loss"])
    assert trained.outcome.best_epoch == int(best["epoch"])
    assert trained.outcome.val_accuracy == pytest.approx(best["val_accuracy"])  # the kept weights are the best
    assert best["val_accuracy"] > 0.85
    test_accuracy = float((trained.proba["test"].argmax(1) == inputs.y[trained.rows.test]).mean())
    assert test_accuracy > 0.85 and trained.outcome.train_accuracy > 0.85
    # the final network is trained afresh on train+val for the epochs validation chose, and is what is judged
    assert trained.outcome.refit_epochs == trained.outcome.best_epoch + 1
    unrefitted = _train_seed(None, data, replace(variant, settings=replace(settings, refit=False)), inputs, 0,
                             device=torch.device("cpu"), progress=False)
    assert unrefitted.outcome.refit_epochs == 0 and unrefitted.outcome.best_epoch == trained.outcome.best_epoch
    assert not np.allclose(unrefitted.proba["test"], trained.proba["test"])
    assert np.allclose(unrefitted.proba["val"], trained.proba["val"])  # val figures come from the validated net


def test_augmentation_turns_and_mirrors_scan_and_difference_alike():
    """Training batches draw one of the 8 quarter-turn/mirror transforms from the epoch's generator and the
    loss sees the scan and its difference image transformed the same way; ``augment=False`` never does."""
    from classifiers.xcnn import _Settings, _Variant, _VariantTraining
    from extractors.training import Batch

    inputs = _difference_inputs(2, n_subjects=4, per_subject=4)
    settings = _Settings(epochs=1, image_size=32, batch_size=8, lr=1e-3, patience=0, val_fraction=0.2)
    cpu = torch.device("cpu")
    run = _VariantTraining(_Variant("X", "xcnn", "absolute", False, settings), inputs, 2, cpu)
    batches = [Batch(np.arange(8), 0, np.random.default_rng(i)) for i in range(40)]
    drawn = {run.inputs(b)[1:] for b in batches}
    assert len(drawn) == 8
    plain = _VariantTraining(_Variant("X", "xcnn", "absolute", False, replace(settings, augment=False)), inputs, 2,
                             cpu)
    assert {plain.inputs(b)[1:] for b in batches} == {(0, False)}
    run.model.eval()
    idx = torch.arange(8)
    turned = (torch.flip(torch.rot90(t[idx], 3, (2, 3)), (3,)) for t in (run.images, run.diffs))
    expected = torch.nn.functional.cross_entropy(run.model(*turned, None), run.y[idx])
    assert run.loss((idx, 3, True)).terms["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert run.loss((idx, 0, False)).terms["loss"].item() != pytest.approx(expected.item(), rel=1e-3)


def test_several_initialisations_average_their_probabilities():
    """``inits`` networks per seed: network 1 is the one-network run's, network 2 starts elsewhere, and the
    seed's probabilities are their mean on every split."""
    from classifiers.xcnn import _seed_rows, _Settings, _train_init, _train_seed, _Variant

    inputs = _difference_inputs(1, n_subjects=8, per_subject=12)
    settings = _Settings(epochs=3, image_size=32, batch_size=32, lr=1e-3, patience=0, val_fraction=0.2)
    data = _toy_dataset()
    cpu = torch.device("cpu")
    one = _train_seed(None, data, _Variant("X", "xcnn", "absolute", False, settings), inputs, 0, device=cpu,
                      progress=False)
    variant = _Variant("X", "xcnn", "absolute", False, replace(settings, inits=2))
    two = _train_seed(None, data, variant, inputs, 0, device=cpu, progress=False)
    rows = _seed_rows(inputs, frozenset({"m00", "m01"}), seed=0, val_fraction=0.2)
    second = _train_init(None, data, variant, inputs, rows, 0, 1, device=cpu, progress=False).proba
    assert not np.allclose(second["test"], one.proba["test"])
    for split in ("train", "val", "test"):
        assert np.allclose(two.proba[split], (one.proba[split] + second[split]) / 2, atol=1e-6)
    # the seed's curve is the first network's
    assert [h["val_loss"] for h in two.outcome.history] == [h["val_loss"] for h in one.outcome.history]


@pytest.mark.slow
def test_fit_xcnn_on_the_chronomid_demo_writes_runs(tmp_store):
    from classifiers.xcnn import fit_xcnn
    from store.ingest import ingest_dataset
    from store.runs import list_runs, run_metrics, run_predictions, run_row
    from store.sql import query

    ingest_dataset(tmp_store, "chronomid", progress=False)
    report = fit_xcnn(tmp_store, dataset="chronomid", reference="absolute", timestamps=False, epochs=2,
                      image_size=40, seeds=[0, 1], device="cpu", n_boot=0, progress=False)
    results = report.results
    assert [r.label for r in results] == ["CNN", "X-CNN, abs. diff."]
    text = "\n".join(report.summary_lines())
    assert "Accuracy %" in text and "X-CNN, abs. diff." in text and "s/epoch" in text and "40x40" in text
    assert "learning curves" in text and "wall time" in text and "held-out accuracy % by week" in text
    runs = list_runs(tmp_store).to_pylist()
    assert {r["model"] for r in runs} == {"xcnn"} and len(runs) == 2
    labels = {
        r["subject"]: r["label"]
        for r in query(tmp_store, "SELECT subject, any_value(label) AS label FROM scans GROUP BY 1").to_pylist()
    }
    for result in results:
        assert [s.seed for s in result.seeds] == [0, 1]
        assert result.parameters > 0 and result.seconds_per_epoch > 0
        metrics = run_metrics(tmp_store, result.run_id).to_pylist()
        overall = {(r["split"], r["seed"], r["metric"]): r["value"] for r in metrics if r["class"] is None}
        for seed in (0, 1):
            assert {(split, seed, "accuracy") for split in ("train", "val", "test")} <= set(overall)
            assert overall[("test", seed, "accuracy")] == pytest.approx(result.seeds[seed].accuracy)
        row = run_row(tmp_store, result.run_id)
        assert row["config"]["params"]["image_size"] == 40
        config = row["config"]
        assert set(config["history"]) == {"0", "1"} and "val_loss" in config["history"]["0"][0]
        for seed in ("0", "1"):
            split = config["splits"][seed]
            assert len(split["test_subjects"]) == 2 and len(split["val_subjects"]) == 2
            assert not set(split["val_subjects"]) & set(split["test_subjects"])
            assert sorted(labels[s] for s in split["test_subjects"]) == ["pth", "wild_type"]
            assert sorted(labels[s] for s in split["val_subjects"]) == ["pth", "wild_type"]
            by_time = split["test_by_time"]
            assert sum(n for _, n in by_time.values()) == split["units"]["test"]
            assert all(0 <= correct <= n for correct, n in by_time.values())
        predictions = run_predictions(tmp_store, result.run_id)
        assert predictions.num_rows == sum(s.n_test for s in result.seeds)
    pairs_run = next(r for r in results if r.arch == "xcnn")
    keys = set(run_predictions(tmp_store, pairs_run.run_id).column("key").to_pylist())
    assert keys <= set(
        query(tmp_store, "SELECT pair_id FROM pairs WHERE reference_mode = 'absolute'").column(0).to_pylist()
    )


def test_xcnn_is_a_registered_model_with_checked_parameters():
    from classifiers._registry import create_model, list_models

    assert "xcnn" in list_models()
    with pytest.raises(ParameterError, match="'epochs' parameter of fit xcnn"):
        create_model("xcnn", epochs=0).validate_params()
    with pytest.raises(ParameterError, match="'reference'"):
        create_model("xcnn", reference="sideways").validate_params()
    with pytest.raises(ParameterError, match="'image_size' parameter of fit xcnn"):
        create_model("xcnn", image_size=8).validate_params()
    with pytest.raises(ParameterError, match="'patience'"):
        create_model("xcnn", patience=-1).validate_params()
    with pytest.raises(ParameterError, match=r"The 'inits' parameter of fit xcnn must be an int in \[1, inf\)\. Got 0"):
        create_model("xcnn", inits=0).validate_params()


def test_fit_xcnn_through_the_fit_dispatch_applies_its_defaults(monkeypatch, tmp_store):
    import classifiers.xcnn as xcnn
    from classifiers.fitting import FitRequest, fit

    calls = []
    monkeypatch.setattr(xcnn, "fit_xcnn", lambda store, **options: calls.append(options) or "report")
    assert fit(tmp_store, FitRequest(model="xcnn")) == "report"
    assert calls[-1] == {"dataset": "chronomid", "reference": None, "timestamps": None, "epochs": 30, "seeds": [0],
                         "device": "auto", "image_size": 32, "batch_size": 16, "lr": 1e-3, "patience": 12,
                         "inits": 1, "augment": True, "n_boot": 1000, "progress": True}
    fit(tmp_store, FitRequest(model="xcnn", dataset="mice", reference="relative", timestamps=True, epochs=3,
                              device="cpu", seeds=3, image_size=48, patience=2, augment=False))
    assert {k: calls[-1][k] for k in ("dataset", "reference", "timestamps", "epochs", "device", "seeds",
                                      "image_size", "patience", "augment")} == {
        "dataset": "mice", "reference": "relative", "timestamps": True, "epochs": 3, "device": "cpu",
        "seeds": [0, 1, 2], "image_size": 48, "patience": 2, "augment": False}
    with pytest.raises(ParameterError, match="'epochs'"):
        fit(tmp_store, FitRequest(model="xcnn", epochs=-1))


def test_the_cli_passes_image_size_and_patience_to_the_request():
    from classifiers.request import FitRequest
    from cli import build_parser

    args = build_parser().parse_args(["fit", "xcnn", "--image-size", "48", "--patience", "3", "--seeds", "2",
                                      "--inits", "3"])
    request = FitRequest.from_options(vars(args))
    assert (request.image_size, request.patience, request.seeds, request.inits) == (48, 3, 2, 3)
    assert request.augment is None  # the model's default: on for xcnn, off for feature models
    paper = FitRequest.from_options(vars(build_parser().parse_args(["fit", "xcnn", "--no-augment"])))
    assert paper.augment is False
