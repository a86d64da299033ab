"""Logical feature names (issue 17): variants of one feature, resolution, ambiguity, random weights, ``features``.

Real CPU extractions of timm's tiny ``test_efficientnet`` on the crmo demo give the variants: ``--precision
bf16 --weights random`` and a "pretrained" one (weights the test writes and imports, which ``--weights hub``
then uses — pretrained downloads cannot work offline). The Inception-v3 tables the crmo profile asks for are
written through the real part writer with the extractor's own metadata (``extraction_metadata``), holding
the tiny network's real embeddings.
"""

from __future__ import annotations

import csv
import io
import json
import shutil

import pytest

from classifiers.planning import describe_plan, plan_fit
from extractors import create_extractor
from extractors.runner import extraction_metadata, run_extraction
from features.errors import AmbiguousNameError, TableNotFoundError
from features.sets import parse_feature_set
from store.feature_catalog import FeatureCatalog, features_overview, logical_name_of
from store.provenance import params_hash
from store.tables import read_table, write_part
from store.weights import import_weights
from tests._demo_stores import core_copy, demo_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY = "test_efficientnet"


def _tiny(**params):
    return create_extractor("cnn", model=TINY, device="cpu", batch_size=32, precision="bf16", **params)


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    """crmo with two real bf16 extractions of the tiny network: random weights, and imported ("pretrained")."""
    import timm
    import torch

    store = core_copy(demo_store(tmp_path_factory, "crmo"), tmp_path_factory.mktemp("catalog"))
    run_extraction(_tiny(weights="random"), store, dataset="crmo", progress=False)
    torch.manual_seed(3)
    checkpoint = tmp_path_factory.mktemp("weights") / "tiny.pth"
    torch.save(timm.create_model(TINY, pretrained=False).state_dict(), checkpoint)
    record = import_weights(store, TINY, checkpoint)
    run_extraction(_tiny(), store, dataset="crmo", progress=False)  # weights='hub' -> the import
    return store, record


def _store_with(source, dest, tables):
    """A store with ``source``'s core tables, artifacts and only the feature ``tables`` (copied folders)."""
    store = core_copy(source, dest, artifacts=True)
    for name in tables:
        shutil.copytree(source.table_dir(name), store.table_dir(name))
    return store


def _write_like(store, extractor, rows, dataset="crmo"):
    """``rows`` written as ``extractor``'s table with the metadata its extraction writes (the real writer)."""
    name = extractor.table_name()
    write_part(store, name, rows, metadata=extraction_metadata(extractor, dataset))
    return name


# --- logical names from stored metadata -------------------------------------------------------------
def _cnn_meta(extractor) -> dict:
    return {"chronofeat.producer": "extractor:cnn", "chronofeat.params": json.dumps(extractor.config())}


@pytest.mark.parametrize("params, table, logical", [
    ({"precision": "bf16"}, "test_efficientnet_bf16", TINY),
    ({"precision": "bf16", "weights": "random"}, "test_efficientnet_random_bf16", TINY),
    ({"precision": "fp32", "weights": "random", "input": "difference", "reference": "given"},
     "test_efficientnet_diff_given_random", "test_efficientnet_diff_given"),
    ({"precision": "fp16", "input": "multiview", "views": "DV"}, "test_efficientnet_specimen_dv_fp16",
     "test_efficientnet_specimen_dv"),
    ({"precision": "fp32", "weights": "ab" * 32}, None, TINY),  # an imported id: name + hash
    ({"precision": "bf16", "intensity": "percentile"}, None, TINY),  # unnamed setting: name + hash
])
def test_cnn_tables_drop_weights_precision_and_hash_from_their_logical_name(params, table, logical):
    extractor = create_extractor("cnn", model=TINY, device="cpu", **{"weights": "hub", **params})
    name = extractor.table_name()
    if table is not None:
        assert name == table
    else:
        assert name != logical and name.startswith(f"{TINY}_")
    assert logical_name_of(name, _cnn_meta(extractor)) == logical


def test_handcrafted_trained_and_unknown_tables_get_logical_names():
    tfidf = create_extractor("bovw", descriptor="sift", vocab_size=50, tfidf=True)
    meta = {"chronofeat.producer": "extractor:bovw", "chronofeat.params_hash": params_hash(tfidf.config())}
    assert tfidf.table_name().startswith("sift_bovw50_")
    assert logical_name_of(tfidf.table_name(), meta) == "sift_bovw50"
    assert logical_name_of("sift_bovw50", {**meta, "chronofeat.params_hash": "0" * 12}) == "sift_bovw50"
    diffstats = create_extractor("diffstats", reference="relative", n_bins=16)
    meta = {"chronofeat.producer": "extractor:diffstats", "chronofeat.params_hash": params_hash(diffstats.config())}
    assert diffstats.table_name() != "diffstats_relative"
    assert logical_name_of(diffstats.table_name(), meta) == "diffstats_relative"
    assert logical_name_of("siamese_0123456789ab", {"chronofeat.producer": "extractor:siamese"}) == "siamese"
    assert logical_name_of("cae_0123456789ab", {"chronofeat.producer": "extractor:cae"},
                           key="specimen_id") == "cae_multiview"
    assert logical_name_of("my_features_1a2b3c4d", {}) == "my_features_1a2b3c4d"  # no metadata: its own name


# --- resolution on real extractions ---------------------------------------------------------------------
def test_logical_name_picks_the_non_random_variant_and_says_which(variants):
    store, record = variants
    catalog = FeatureCatalog(store, "crmo")
    assert sorted(v.table for v in catalog.logical()[TINY]) == ["test_efficientnet_bf16",
                                                               "test_efficientnet_random_bf16"]
    found = catalog.resolve(TINY)
    assert (found.table, found.variant.weights, found.variant.precision) == ("test_efficientnet_bf16", "pretrained",
                                                                              "bf16")
    assert found.sentence("diff") == (
        "test_efficientnet:diff -> table test_efficientnet_bf16 (pretrained, bf16, covers 360/360 scans); "
        "not chosen: test_efficientnet_random_bf16 (random weights, named only)")
    assert record.sha256[:12] in found.variant.weights_source and found.variant.weights_source.startswith("imported")
    # exact table names keep working, random weights included when named
    exact, _ = catalog.resolve_set(parse_feature_set("test_efficientnet_random_bf16:diff"))
    assert str(exact) == "test_efficientnet_random_bf16:diff"
    assert catalog.resolve("test_efficientnet_random_bf16").sentence() == (
        "test_efficientnet_random_bf16 -> table test_efficientnet_random_bf16 (exact table name; random weights, "
        "bf16, covers 360/360 scans)")
    plan = plan_fit(store, "logistic", dataset="crmo", features=f"{TINY}:diff+time")
    assert str(plan.members[0].feature_set) == "test_efficientnet_bf16:diff+time"
    assert plan.resolutions == [found.sentence("diff")]
    assert f"features: {found.sentence('diff')}" in describe_plan(plan)


def test_random_weights_are_never_picked_implicitly(variants, tmp_path, cli):
    store, _ = variants
    only_random = _store_with(store, tmp_path / "random", ["test_efficientnet_random_bf16"])
    with pytest.raises(TableNotFoundError) as info:
        FeatureCatalog(only_random, "crmo").resolve(TINY)
    assert "only random-weights tables (test_efficientnet_random_bf16)" in str(info.value)
    # the crmo default asks for inception_v3: a random-weights Inception table is left out, and said
    embedding = read_table(store, "test_efficientnet_bf16")
    name = _write_like(only_random, create_extractor("cnn", model="inception_v3", device="cpu", weights="random"),
                       embedding)
    assert name == "inception_v3_random"
    fit = cli("fit", "ensemble", "--dataset", "crmo", "--folds", "3", store=only_random)
    assert fit.returncode == 2, fit.stdout + fit.stderr
    assert "inception_v3_random has random weights, used only when named" in fit.stderr
    named = cli("fit", "logistic", "--dataset", "crmo", "--folds", "3", "--features", "inception_v3_random:diff",
                store=only_random)
    assert named.returncode == 0, named.stderr
    assert ("features: inception_v3_random:diff -> table inception_v3_random (exact table name; random weights, "
            "fp32, covers 360/360 scans)") in named.stdout


@pytest.mark.slow  # two more extractions and a fit in a subprocess (~20 s)
def test_most_units_win_and_a_tie_is_an_error_listing_the_tables(variants, tmp_path, cli):
    store, record = variants
    copy = _store_with(store, tmp_path / "tie", ["test_efficientnet_bf16"])
    by_id = _tiny(weights=record.sha256)  # the same import named by its id: variant 'imported:<id>'
    run_extraction(by_id, copy, dataset="crmo", limit=100, progress=False)
    found = FeatureCatalog(copy, "crmo").resolve(TINY)
    assert found.table == "test_efficientnet_bf16"
    assert f"not chosen: {by_id.table_name()} (covers 100/360)" in found.sentence()
    run_extraction(by_id, copy, dataset="crmo", progress=False)
    with pytest.raises(AmbiguousNameError) as info:
        FeatureCatalog(copy, "crmo").resolve(TINY)
    message = str(info.value)
    assert f"Feature name '{TINY}' is ambiguous for dataset 'crmo': 2 tables cover equally many units" in message
    assert "test_efficientnet_bf16 (pretrained, bf16" in message
    assert f"{by_id.table_name()} (imported:{record.sha256[:12]}, bf16" in message and "Name the table" in message
    fit = cli("fit", "logistic", "--dataset", "crmo", "--features", f"{TINY}:diff", store=copy)
    assert fit.returncode == 2 and "is ambiguous" in fit.stderr and by_id.table_name() in fit.stderr


def test_fit_ensemble_crmo_finds_the_bf16_inception_table_and_says_so(variants, tmp_path, cli):
    store, _ = variants
    copy = _store_with(store, tmp_path / "fit", [])
    embedding = read_table(store, "test_efficientnet_bf16")
    for weights in ("hub", "random"):
        _write_like(copy, create_extractor("cnn", model="inception_v3", device="cpu", precision="bf16",
                                           weights=weights), embedding)
    fit = cli("fit", "ensemble", "--dataset", "crmo", "--folds", "3", store=copy)
    assert fit.returncode == 0, fit.stderr
    assert ("features: inception_v3:diff -> table inception_v3_bf16 (pretrained, bf16, covers 360/360 scans); "
            "not chosen: inception_v3_random_bf16 (random weights, named only)") in fit.stdout
    assert "on inception_v3_bf16:diff  [profile default]" in fit.stdout
    assert "NOTE: left out member svm_rbf" in fit.stdout  # no BoVW table here


def test_features_command_lists_variants_rows_and_the_default(variants, cli):
    store, _ = variants
    listed = cli("features", "--dataset", "crmo", "--format", "csv", "--max-rows", "0", store=store)
    assert listed.returncode == 0, listed.stderr
    rows = {r["table"]: r for r in csv.DictReader(io.StringIO(listed.stdout))}
    assert set(rows) == {"test_efficientnet_bf16", "test_efficientnet_random_bf16"}
    assert {r["feature"] for r in rows.values()} == {TINY}
    pretrained, random = rows["test_efficientnet_bf16"], rows["test_efficientnet_random_bf16"]
    assert (pretrained["weights"], pretrained["precision"], pretrained["rows"], pretrained["default"]) == (
        "pretrained", "bf16", "crmo=360", "yes")
    assert (random["weights"], random["default"]) == ("random", "never (random)")
    assert "weights imported" in pretrained["provenance"] and "extractor:cnn" in pretrained["provenance"]
    text = features_overview(store, dataset="chronomid")
    assert text.num_rows == 0  # no table has rows for another dataset
