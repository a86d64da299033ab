"""Features of a trained network are never judged on subjects it trained on (issue 16, classifiers.leakage)."""

from __future__ import annotations

import json
import re

import pytest

from classifiers.leakage import NetworkSource, leak_message
from tests._demo_stores import core_copy, demo_store
from tests.conftest import run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_leak_message_names_table_artifact_count_and_remedies(tmp_path):
    source = NetworkSource("siamese_abcdef123456", "abcdef123456", "siamese", "spine", tmp_path / "a.json",
                           train=frozenset("abcd"), val=frozenset("e"), test=frozenset("xyz"))
    text = leak_message(source, frozenset("abexy"), rule="0.3 of the subjects", unseen=3)
    assert "'siamese_abcdef123456'" in text and "abcdef123456" in text
    assert "trained on 3 of the 5 held-out test subjects (2 in its training set, 1 in its validation set)" in text
    assert "--test-subjects FILE" in text and "train siamese --dataset spine" in text and str(tmp_path) in text


def test_network_subjects_come_from_the_description_or_the_network_file(tmp_store):
    from extractors.nets import SiameseNet, network_to_bytes
    from extractors.siamese import network_subjects, store_network
    from features.errors import ParameterError, WeightsError
    from store.artifacts import save_artifact

    model = SiameseNet(embed_dim=4, hidden=8, n_aux=0)
    sides = {"train": ["a", "b"], "val": ["c"], "test": ["d"]}
    config = {"family": "siamese", "arch": {"embed_dim": 4, "hidden": 8, "n_aux": 0}, "dataset": "spine"}
    stored = store_network(tmp_store, config, model, {"family": "siamese"}, subjects=sides)
    assert stored.meta["subjects"] == sides and stored.meta["dataset"] == "spine"
    expected = {side: frozenset(v) for side, v in sides.items()}
    assert network_subjects(stored) == expected
    older = save_artifact(tmp_store, "networks", network_to_bytes({**config, "subjects": sides, "v": 0}, model),
                          suffix=".pt", meta={"family": "siamese"})  # stored before descriptions listed subjects
    assert "subjects" not in older.meta and network_subjects(older) == expected
    bare = save_artifact(tmp_store, "networks", network_to_bytes({**config, "v": 1}, model), suffix=".pt",
                         meta={"family": "siamese"})
    with pytest.raises(WeightsError, match="does not record which subjects"):
        network_subjects(bare)
    with pytest.raises(ParameterError, match="store_network needs the network's subjects"):
        store_network(tmp_store, config, model, {"family": "siamese"})


# --- end to end on the spine demo ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def leak_store(tmp_path_factory):
    """A spine store with a small Siamese network (32 px, 16-d) and its extracted feature table."""
    store = core_copy(demo_store(tmp_path_factory, "spine"), tmp_path_factory.mktemp("leakage") / "store")
    trained = run_cli("train", "siamese", "--dataset", "spine", "--epochs", "1", "--image-size", "32",
                      "--embedding-dim", "16", "--device", "cpu", store=store)
    assert trained.returncode == 0, trained.stderr
    short = re.search(r"network artifact: ([0-9a-f]{12})", trained.stdout).group(1)
    extracted = run_cli("extract", "--extractor", "siamese", "--artifact", short, "--dataset", "spine",
                        "--device", "cpu", store=store)
    assert extracted.returncode == 0, extracted.stderr
    from store.artifacts import find_artifact

    artifact = find_artifact(store, "networks", short)
    return store, short, {side: set(v) for side, v in artifact.meta["subjects"].items()}, artifact


def _run_count(store) -> int:
    from store.runs import list_runs
    from store.tables import table_exists

    return list_runs(store).num_rows if table_exists(store, "runs") else 0


def _test_subjects_of_last_run(store) -> set:
    from store.runs import list_runs, run_predictions

    run_id = list_runs(store).column("run_id").to_pylist()[-1]
    predictions = run_predictions(store, run_id, split="test")
    return set(predictions.column("subject").to_pylist())


@pytest.mark.slow
def test_fit_refuses_a_test_rule_that_holds_trained_subjects(leak_store):
    from store.subjects import dataset_subject_split

    store, short, subjects, _ = leak_store
    runs_before = _run_count(store)
    test = set(dataset_subject_split(store, "spine", test_fraction=0.3, seed=0).test)
    leaked_train, leaked_val = test & subjects["train"], test & subjects["val"]
    assert leaked_train  # the issue: most subjects trained the network, so a 30 % test set holds some of them
    result = run_cli("fit", "logistic", "--dataset", "spine", "--features", f"siamese_{short}", "--test-subjects",
                     "0.3", store=store)
    assert result.returncode == 2, result.stdout + result.stderr
    message = " ".join(result.stderr.split())
    assert f"Feature table 'siamese_{short}'" in message and f"network artifact {short}" in message
    assert (f"trained on {len(leaked_train | leaked_val)} of the {len(test)} held-out test subjects "
            f"({len(leaked_train)} in its training set, {len(leaked_val)} in its validation set)") in message
    assert "--test-subjects FILE" in message and "retrain" in message
    assert _run_count(store) == runs_before  # nothing was fitted or written


@pytest.mark.slow
def test_fit_on_the_networks_held_out_subjects_runs_and_never_tests_a_trained_subject(leak_store, tmp_path):
    store, short, subjects, artifact = leak_store
    listed = tmp_path / "held_out.txt"
    listed.write_text("\n".join(sorted(subjects["test"])) + "\n")
    result = run_cli("fit", "logistic", "--dataset", "spine", "--features", f"siamese_{short}", "--test-subjects",
                     str(listed), store=store)
    assert result.returncode == 0, result.stderr
    tested = _test_subjects_of_last_run(store)
    assert tested == subjects["test"] and not tested & (subjects["train"] | subjects["val"])
    description = json.loads(artifact.path.with_suffix(".json").read_text())
    assert set(description["subjects"]["test"]) == tested  # the file the refusal points at lists them


@pytest.mark.slow
def test_default_rule_draws_the_test_set_from_the_networks_held_out_subjects(leak_store):
    store, short, subjects, _ = leak_store
    result = run_cli("fit", "logistic", "--dataset", "spine", "--features", f"siamese_{short}", "--seeds", "2",
                     store=store)
    assert result.returncode == 0, result.stderr
    assert f"held-out test: the {len(subjects['test'])} subjects that network siamese {short}" in result.stdout
    assert _test_subjects_of_last_run(store) == subjects["test"]


@pytest.mark.slow
def test_a_listed_trained_subject_is_refused(leak_store, tmp_path):
    store, short, subjects, _ = leak_store
    listed = tmp_path / "mixed.txt"
    listed.write_text("\n".join(sorted(subjects["test"]) + [sorted(subjects["train"])[0]]) + "\n")
    result = run_cli("fit", "logistic", "--dataset", "spine", "--features", f"siamese_{short}", "--test-subjects",
                     str(listed), store=store)
    assert result.returncode == 2
    assert "(1 in its training set, 0 in its validation set)" in " ".join(result.stderr.split())


@pytest.mark.slow
def test_cae_artifacts_record_their_subjects_and_tables_their_artifact(leak_store):
    from extractors import build_from_options
    from extractors.cae import train_cae
    from extractors.runner import run_extraction
    from extractors.siamese import network_subjects
    from store.tables import table_kv_metadata

    store = leak_store[0]
    result = train_cae(store, "spine", epochs=1, image_size=32, device="cpu", progress=False)
    sides = network_subjects(result.artifact)
    assert len(sides["train"] | sides["val"] | sides["test"]) == 40
    assert not sides["train"] & sides["test"] and not sides["val"] & sides["test"]
    extractor = build_from_options("cae", {"extractor": "cae", "artifact": result.artifact.short, "device": "cpu"})
    summary = run_extraction(extractor, store, dataset="spine", progress=False)
    meta = table_kv_metadata(store, summary.table)
    assert meta["chronofeat.network_artifact"] == result.artifact.sha256
    assert json.loads(meta["chronofeat.network_subjects"]) == {s: len(v) for s, v in sides.items()}
    refused = run_cli("fit", "logistic", "--dataset", "spine", "--features", summary.table, "--test-subjects", "0.3",
                      store=store)
    assert refused.returncode == 2 and f"cae network artifact {result.artifact.short}" in refused.stderr


@pytest.mark.slow
def test_without_a_test_set_fit_says_cross_validation_holds_trained_subjects(leak_store):
    store, short, _, _ = leak_store
    result = run_cli("fit", "logistic", "--dataset", "spine", "--features", f"siamese_{short}", "--test-subjects",
                     "0", store=store)
    assert result.returncode == 0, result.stderr
    assert "cross-validation folds hold subjects the network" in " ".join(result.stdout.split())
