"""RunRecorder writes one run whose runs row, metrics and predictions read back as recorded."""

from __future__ import annotations

from store.layout import open_store
from store.runs import RunRecorder, list_runs, load_model, run_metrics, run_predictions, run_row


def test_a_recorded_run_reads_back(tmp_path):
    store = open_store(tmp_path / "fs")
    run = RunRecorder(dataset="toy", model="xcnn", target="label", unit="pairs")
    run.add_metric(metric="accuracy", value=0.75, seed=0)
    run.add_metric(metric="f1", value=0.5, seed=0, cls="b", ci_low=0.2, ci_high=0.8)
    run.add_predictions(keys=["k1", "k2"], subjects=["s1", "s2"], y_true=["a", "b"], y_pred=["a", "a"],
                        proba=[{"a": 0.9, "b": 0.1}, {"a": 0.6, "b": 0.4}], seed=0)
    artifact = run.write(store, {"weights": [1, 2]}, config={"variant": "abs"}, seeds=[0], n_units=2, n_subjects=2,
                         classes=["a", "b"], feature_hashes={"diffstats_absolute": "abc"}, timings={"train": 1.5})

    row = run_row(store, run.run_id)
    assert row["model_artifact"] == artifact.sha256
    assert row["config"] == {"variant": "abs"}
    assert row["feature_tables"] == ["diffstats_absolute"] and row["feature_hashes"] == {"diffstats_absolute": "abc"}
    assert row["timings"]["train"] == 1.5 and row["timings"]["total"] >= 0
    assert list_runs(store).num_rows == 1
    metrics = run_metrics(store, run.run_id).to_pylist()
    assert {(m["metric"], m["class"], m["value"], m["member"]) for m in metrics} == {
        ("accuracy", None, 0.75, "xcnn"), ("f1", "b", 0.5, "xcnn")}
    predictions = run_predictions(store, run.run_id).to_pylist()
    assert [(p["key"], p["y_pred"], dict(p["proba"])["a"]) for p in predictions] == [("k1", "a", 0.9), ("k2", "a", 0.6)]
    assert load_model(store, run.run_id) == {"weights": [1, 2]}
