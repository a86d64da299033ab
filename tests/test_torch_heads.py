"""Torch heads: ``mlp`` as a registered scikit-learn model, ``hierarchical`` levels, the IMPC protocol."""

from __future__ import annotations

import io

import joblib
import numpy as np
import pytest

from classifiers._registry import create_model, list_models
from classifiers.torch_heads import (
    HierarchicalClassifier,
    format_level_table,
    hierarchical_targets,
)
from features.errors import EvaluationError, ParameterError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _grouped_data(n_subjects=60, per_subject=4, seed=0):
    rng = np.random.default_rng(seed)
    subjects = np.repeat(np.arange(n_subjects), per_subject)
    y = np.repeat(rng.integers(0, 3, n_subjects), per_subject)
    centres = rng.normal(size=(3, 16)) * 1.5
    X = centres[y] + rng.normal(size=(len(y), 16))
    return X.astype(np.float32), np.array(["a", "b", "c"])[y], subjects


def test_mlp_is_registered_and_learns():
    assert {"mlp", "hierarchical"} <= set(list_models())
    X, y, groups = _grouped_data()
    model = create_model("mlp", random_state=0, max_epochs=60, device="cpu")
    model.fit(X[:180], y[:180], groups=groups[:180])
    assert list(model.classes_) == ["a", "b", "c"]
    proba = model.predict_proba(X[180:])
    assert proba.shape == (60, 3) and np.allclose(proba.sum(axis=1), 1, atol=1e-5)
    assert (model.predict(X[180:]) == y[180:]).mean() > 0.8
    estimator = model.pipeline_[-1]
    assert estimator.epochs_run_ <= 60 and estimator.best_epoch_ < estimator.epochs_run_
    again = create_model("mlp", random_state=0, max_epochs=60, device="cpu").fit(X[:180], y[:180], groups=groups[:180])
    assert np.array_equal(again.predict_proba(X[180:]), proba)  # seeded: repeatable
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    buffer.seek(0)
    assert np.allclose(joblib.load(buffer).predict_proba(X[180:]), proba)


def test_mlp_inside_a_voting_ensemble_and_multilabel():
    from classifiers.ensemble import VotingEnsemble

    X, y, groups = _grouped_data(seed=1)
    members = [("mlp", create_model("mlp", random_state=0, max_epochs=40, device="cpu"), (0, 8)),
               ("logistic", create_model("logistic"), (8, 16))]
    ensemble = VotingEnsemble(members=members).fit(X[:180], y[:180], groups=groups[:180])
    assert ensemble.predict_proba(X[180:]).shape == (60, 3)
    assert (ensemble.predict(X[180:]) == y[180:]).mean() > 0.7
    Y = np.stack([y == "a", y == "b"], axis=1).astype(int)
    multi = create_model("mlp", random_state=0, max_epochs=30, device="cpu").fit(X[:180], Y[:180], groups=groups[:180])
    assert multi.predict_proba(X[180:]).shape == (60, 2)


def test_mlp_parameters_are_validated():
    with pytest.raises(ParameterError, match="'dropout' parameter of MLP"):
        create_model("mlp", dropout=1.5)
    with pytest.raises(ParameterError, match="'hidden'"):
        create_model("mlp", hidden=())


def _hierarchy(n=360, seed=1):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, 10)).astype(np.float32)
    abnormal = (Z[:, 0] > 0.2).astype(int)
    level2 = np.stack([(Z[:, 1] > 0) & (abnormal == 1), (Z[:, 2] > 0.4) & (abnormal == 1)], 1).astype(int)
    level3 = np.stack([(Z[:, 3] > 0) & (level2[:, 0] == 1), (Z[:, 4] > 0) & (level2[:, 1] == 1),
                       (Z[:, 5] > 0) & (level2[:, 0] == 1)], 1).astype(int)
    return Z, np.hstack([abnormal[:, None], level2, level3])


def test_hierarchical_levels_feed_on_the_level_above():
    from sklearn.metrics import roc_auc_score

    Z, Y = _hierarchy()
    model = HierarchicalClassifier(levels=(1, 2, 3), random_state=0, device="cpu", max_epochs=150)
    model.fit(Z[:270], Y[:270], groups=np.arange(270))
    assert len(model.levels_) == 3
    # level 2's block takes level 1's hidden features, level 3's takes level 2's
    assert model.levels_[1].block[0].in_features == model.hidden[0][-1]
    assert model.levels_[2].block[0].in_features == model.hidden[1][-1]
    assert not any(p.requires_grad for level in model.levels_ for p in level.module.parameters())  # frozen in turn
    proba = model.predict_proba(Z[270:])
    assert proba.shape == (90, 6) and ((proba >= 0) & (proba <= 1)).all()
    truth = Y[270:]
    assert roc_auc_score(truth[:, 0], proba[:, 0]) > 0.9
    abnormal = truth[:, 0] == 1
    assert roc_auc_score(truth[abnormal, 1], proba[abnormal, 1]) > 0.75
    predicted = model.predict(Z[270:])
    assert not predicted[predicted[:, 0] == 0, 1:].any()  # no sub-class without level 1
    with pytest.raises(EvaluationError, match="columns"):
        HierarchicalClassifier(levels=(1, 3), hidden=((8,), (8,))).fit(Z, Y)


def test_hierarchical_targets_and_table_layout():
    Y, names = hierarchical_targets(["normal", "abnormal", "abnormal"], [[], ["Spine"], ["Spine", "Ribcage"]],
                                    [[], ["Lumbar"], ["Ribs", "Lumbar"]])
    assert names == [
        ("Level_1", "Binary"),
        ("Level_2", "Ribcage"),
        ("Level_2", "Spine"),
        ("Level_3", "Lumbar"),
        ("Level_3", "Ribs"),
    ]
    assert Y.tolist() == [[0, 0, 0, 0, 0], [1, 0, 1, 1, 0], [1, 1, 1, 1, 1]]
    aucs = np.array([[0.9, 0.8, np.nan, 0.7, 0.6], [0.95, 0.7, 0.9, 0.5, 0.8]])
    text = format_level_table(names, aucs, title="t")
    assert "Level_1" in text and "0.925" in text and "0.050" in text  # mean 0.925 ± 0.025 std -> printed
    spine = next(line for line in text.splitlines() if " Spine " in line)
    assert "0.900" in spine and spine.split()[-1] == "1"  # one seed had no defined AUC for Spine


@pytest.fixture(scope="module")
def impc_with_features(tmp_path_factory):
    from extractors import build_from_options
    from extractors.cae import train_cae
    from extractors.runner import run_extraction
    from store.ingest import ingest_dataset
    from store.layout import open_store

    store = open_store(tmp_path_factory.mktemp("impc") / "store")
    ingest_dataset(store, "impc", progress=False)
    net = train_cae(store, "impc", epochs=1, image_size=32, base=8, depth=2, latent_channels=2, device="cpu",
                    progress=False)
    summary = run_extraction(build_from_options("cae", {"artifact": net.artifact.short, "device": "cpu"}), store,
                             dataset="impc", progress=False)
    return store, summary.table


def test_fit_hierarchical_on_impc(impc_with_features):
    from classifiers.torch_heads import fit_hierarchical
    from store.runs import run_metrics, run_predictions, run_row

    store, table = impc_with_features
    report = fit_hierarchical(store, dataset="impc", features=table, seeds=2, device="cpu", max_epochs=40)
    run_id, names, aucs = report.run_id, report.names, report.aucs
    lines = report.summary_lines()
    assert names[0] == ("Level_1", "Binary") and {n[0] for n in names} == {"Level_1", "Level_2", "Level_3"}
    assert aucs.shape == (2, len(names))
    assert np.isfinite(aucs[:, 0]).all() and (aucs[np.isfinite(aucs)] <= 1).all()
    text = "\n".join(lines)
    assert "Mean AUC" in text and "Level_3" in text and "over 2 seeds" in text
    metrics = run_metrics(store, run_id).to_pylist()
    assert {m["seed"] for m in metrics} == {0, 1} and any(m["class"] == "Level_1:Binary" for m in metrics)
    assert {m["split"] for m in metrics} == {"train", "test"}  # training specimens' AUCs recorded too
    train = [m for m in metrics if m["split"] == "train" and m["class"] == "Level_1:Binary"]
    assert len(train) == 2 and report.train_aucs.shape == aucs.shape
    assert "training specimens" in text
    predictions = run_predictions(store, run_id)
    assert predictions.num_rows > 0 and set(predictions.column("split").to_pylist()) == {"test"}
    row = run_row(store, run_id)
    assert row["model"] == "hierarchical" and row["feature_tables"] == [table] and row["seeds"] == [0, 1]
    assert row["members"] == ["hierarchical"] and row["unit"] == "specimens"


@pytest.mark.slow
def test_hierarchical_through_fit_defaults_to_the_embedding_table_and_five_seeds(impc_with_features):
    from classifiers.fitting import FitRequest, fit

    store, table = impc_with_features
    report = fit(store, FitRequest(model="hierarchical", dataset="impc", device="cpu"))
    lines = report.summary_lines()
    assert report.aucs.shape[0] == 5 and "over 5 seeds" in "\n".join(lines)  # the paper's 5 seeds
    assert lines[0].startswith("note: no --features given: using") and table in lines[0]
    report = fit(store, FitRequest(model="hierarchical", dataset="impc", features=table, seeds=1, device="cpu"))
    assert report.aucs.shape[0] == 1 and any("Mean AUC" in line for line in report.summary_lines())
    with pytest.raises(ParameterError, match="fraction"):
        fit(store, FitRequest(model="hierarchical", dataset="impc", features=table, test_subjects="per-class"))


@pytest.mark.slow
def test_hierarchical_without_any_embedding_table_says_what_to_extract(tmp_path_factory, cli):
    from tests._demo_stores import core_copy, demo_store

    bare = core_copy(demo_store(tmp_path_factory, "impc"), tmp_path_factory.mktemp("bare") / "store")
    done = cli("fit", "hierarchical", "--dataset", "impc", store=bare)
    assert done.returncode == 2
    assert "--features TABLE" in done.stderr and "extract --extractor efficientnet --input multiview" in done.stderr
    shown = cli("fit", "--help")
    assert "hierarchical" in shown.stdout and "--compare-views" in shown.stdout
