"""extractors.bovw and store.vocabulary: descriptors, honest vocabularies, histograms, SURF refusal."""

from __future__ import annotations

import csv

import numpy as np
import pyarrow.compute as pc
import pytest
from scipy import ndimage
from skimage import data

import extractors.bovw as bovw
import extractors.keypoints as keypoints
from extractors import build_from_options, create_extractor
from extractors.bovw import BoVW, bag_of_words, idf_weights, word_counts
from extractors.keypoints import (
    describe,
    descriptor_vectors,
    read_descriptors,
    to_uint8,
)
from extractors.runner import run_extraction
from features.errors import BackendUnavailableError, DatasetError, ParameterError
from features.splits import split_subjects, training_subjects
from store.subjects import dataset_subject_split, read_subject_list
from store.tables import read_table, table_exists, table_kv_metadata
from store.vocabulary import (
    list_vocabularies,
    load_vocabulary,
    vocabularies_table,
    vocabulary_bytes,
)


def _surf_available() -> bool:
    try:
        keypoints.create_detector("surf")
    except BackendUnavailableError:
        return False
    return True


# --- a small dataset on disk ------------------------------------------------------------------
def _textured(rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """A random image with blobs and bars: plenty of keypoints for every detector."""
    image = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 3) * 400
    for _ in range(6):
        y, x = rng.integers(10, size - 30, 2)
        image[y : y + rng.integers(8, 25), x : x + rng.integers(8, 25)] += rng.uniform(200, 500)
    return (image + 1000).astype(np.float32)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """8 subjects (4 'a', 4 'b') x 2 time points of textured NPY images, one blank image; ingested."""
    from store.ingest import ingest_dataset
    from store.layout import open_store

    root = tmp_path_factory.mktemp("toy_bovw")
    rng = np.random.default_rng(0)
    rows = []
    for s in range(8):
        for t in range(2):
            path = f"S{s}/t{t}.npy"
            (root / f"S{s}").mkdir(exist_ok=True)
            image = np.full((96, 96), 7.0, np.float32) if (s, t) == (0, 1) else _textured(rng)
            np.save(root / path, image)
            rows.append((path, f"patient-{s}", t, "a" if s % 2 else "b"))
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "subject", "time", "label"])
        writer.writerows(rows)
    store = open_store(tmp_path_factory.mktemp("store_bovw"))
    ingest_dataset(store, "toy", root=root, progress=False)
    return store


def _scans(store):
    return read_table(store, "scans").filter(pc.equal(read_table(store, "scans").column("dataset"), "toy"))


# --- descriptors --------------------------------------------------------------------------------
def test_to_uint8_uses_a_robust_window():
    image = np.linspace(-1000, 3000, 100 * 100, dtype=np.float32).reshape(100, 100)
    image[0, 0] = 1e9
    out = to_uint8(image)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert 120 <= out[50, 50] <= 135
    assert np.all(to_uint8(np.full((4, 4), 5.0)) == 0)


@pytest.mark.parametrize(
    ("name", "width", "binary_bits"),
    [("sift", 128, None), ("orb", 32, 256), ("kaze", 64, None), ("akaze", 61, 488), ("brisk", 64, 512)],
)
def test_descriptors_on_a_real_photograph(name, width, binary_bits):
    camera = data.camera().astype(np.float32) * 7 - 300  # not 8-bit: to_uint8 must window it
    raw = describe(camera, name, max_keypoints=300)
    assert 50 <= raw.shape[0] <= 300 and raw.shape[1] == width
    vectors = descriptor_vectors(raw, name)
    assert vectors.dtype == np.float32
    assert vectors.shape[1] == (binary_bits or width)
    if binary_bits:
        assert set(np.unique(vectors)) <= {0.0, 1.0}


def test_blank_image_has_no_keypoints_and_an_all_zero_histogram():
    raw = describe(np.zeros((64, 64), np.float32), "sift")
    assert raw.shape == (0, 128)
    counts = word_counts(descriptor_vectors(raw, "sift"), np.ones((5, 128), np.float32))
    assert np.all(bag_of_words(counts) == 0)


def test_histograms_are_l1_normalised_and_tfidf_reweights():
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], np.float32)
    vectors = np.array([[0.1, 0.2], [9.0, 1.0], [9.5, -0.5], [10.2, 0.1]], np.float32)
    counts = word_counts(vectors, centers)
    np.testing.assert_array_equal(counts, [1, 3, 0])
    np.testing.assert_allclose(bag_of_words(counts), [0.25, 0.75, 0.0])
    idf = idf_weights([np.array([0, 1]), np.array([1]), np.array([1, 2])], 3)
    assert idf[1] < idf[0] == idf[2]  # a word in every image is the least informative
    weighted = bag_of_words(counts, idf)
    assert weighted.sum() == pytest.approx(1.0) and weighted[0] > 0.25


# --- the subject split ----------------------------------------------------------------------------
def test_split_is_stratified_deterministic_and_ignores_row_order():
    import pyarrow as pa

    subjects = [f"m{i}" for i in range(10)]
    labels = ["wild_type"] * 5 + ["pth"] * 5
    table = pa.table({"subject": subjects * 3, "label": labels * 3})
    split = split_subjects(table)  # ChronoMID: one mouse per class held out
    assert len(split.test) == 2
    assert {labels[subjects.index(s)] for s in split.test} == {"wild_type", "pth"}
    assert set(split.train) | set(split.test) == set(subjects) and not set(split.train) & set(split.test)
    shuffled = table.take(np.random.default_rng(0).permutation(table.num_rows))
    assert split_subjects(shuffled) == split
    assert training_subjects(table) == split.train
    assert split_subjects(table, seed=1).test != split.test or split_subjects(table, seed=2).test != split.test
    assert len(split_subjects(table, test_fraction=0.4).test) == 4


def test_vocabulary_bytes_are_reproducible():
    centers = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    idf = np.ones(5, np.float32)
    assert vocabulary_bytes(centers, idf) == vocabulary_bytes(centers.copy(), idf.copy())
    assert vocabulary_bytes(centers, idf) != vocabulary_bytes(centers, idf * 2)


# --- parameters and names ---------------------------------------------------------------------------
def test_table_names_and_parameter_validation():
    assert BoVW().table_name() == "sift_bovw50"
    assert BoVW(descriptor="orb", vocab_size=500, workers=2).table_name() == "orb_bovw500"
    assert BoVW(descriptor="kaze", vocab_size=50, tfidf=True).table_name().startswith("kaze_bovw50_")
    assert str(BoVW(vocab_size=7).output_schema().field("histogram").type) == "fixed_size_list<item: float>[7]"
    with pytest.raises(
        ParameterError, match=r"^The 'vocab_size' parameter of BoVW must be an int in \[2, inf\)\. Got 1 instead\.$"
    ):
        create_extractor("bovw", vocab_size=1)
    with pytest.raises(ParameterError, match="descriptor"):
        create_extractor("bovw", descriptor="harris")
    with pytest.raises(ParameterError, match="exactly one source of training subjects"):
        create_extractor("bovw", vocab_split=None)
    with pytest.raises(ParameterError, match="exactly one source of training subjects"):
        create_extractor("bovw", vocab_subjects=("x",), vocab_split="train")


def test_cli_aliases_build_bovw(tmp_path):
    built = build_from_options(
        "orb_bovw", {"vocab_size": 500, "vocab_subjects": None, "vocab_split": None, "workers": 2}
    )
    assert built.table_name() == "orb_bovw500" and built.workers == 2 and built.vocab_split == "train"
    assert build_from_options("kaze_bovw", {}).table_name() == "kaze_bovw50"
    listing = tmp_path / "subjects.txt"
    listing.write_text("# training subjects\nabc\n\ndef  # second\nabc\n")
    assert read_subject_list(listing) == ("abc", "def")
    built = build_from_options("sift_bovw", {"vocab_subjects": str(listing)})
    assert built.vocab_subjects == ("abc", "def") and built.vocab_split is None
    with pytest.raises(ParameterError, match="give one"):
        build_from_options("sift_bovw", {"vocab_subjects": str(listing), "vocab_split": "train"})
    with pytest.raises(ParameterError, match="--reference"):
        build_from_options("sift_bovw", {"reference": "absolute"})


# --- the extractor on a store -------------------------------------------------------------------------
def test_vocabulary_never_sees_held_out_subjects(toy, monkeypatch):
    store = toy
    scans = _scans(store)
    subject_of = dict(zip(scans.column("scan_id").to_pylist(), scans.column("subject").to_pylist(), strict=True))
    split = dataset_subject_split(store, "toy")
    assert len(split.test) == 2 and len(split.train) == 6  # one held-out subject per label

    seen: dict = {}
    real_sample, real_fit = bovw.sample_training_descriptors, bovw.fit_centers

    def spy_sample(*args, **kwargs):
        sampled, scan_ids = real_sample(*args, **kwargs)
        seen["scan_ids"], seen["sampled"] = scan_ids, sampled
        return sampled, scan_ids

    def spy_fit(vectors, *args, **kwargs):
        seen["fitted"] = np.array(vectors, copy=True)
        return real_fit(vectors, *args, **kwargs)

    monkeypatch.setattr(bovw, "sample_training_descriptors", spy_sample)
    monkeypatch.setattr(bovw, "fit_centers", spy_fit)
    extractor = create_extractor("bovw", descriptor="orb", vocab_size=8, workers=1, progress=False)
    summary = run_extraction(extractor, store, dataset="toy", progress=False)

    # 1. the descriptors sampled for the fit come from every training scan and from no held-out one
    sampled_subjects = {subject_of[k] for k in seen["scan_ids"]}
    assert sampled_subjects == set(split.train) and not sampled_subjects & set(split.test)
    # 2. what k-means received is exactly those samples, nothing added
    expected = np.concatenate([descriptor_vectors(raw, "orb") for raw in seen["sampled"]])
    np.testing.assert_array_equal(seen["fitted"], expected)
    # 3. content check: no vector k-means saw is a descriptor of a held-out subject's image
    #    (every scan, held-out ones included, is described in orb_descriptors for its histogram)
    held_out = {
        k: sha
        for k, sha in zip(scans.column("scan_id").to_pylist(), scans.column("pixel_sha256").to_pylist(), strict=True)
        if subject_of[k] in split.test
    }
    held_out_rows = {row.tobytes() for _, raw in read_descriptors(store, "orb_descriptors", "orb", held_out)
                     for row in descriptor_vectors(raw, "orb")}
    assert len(held_out_rows) > 100
    assert not any(row.tobytes() in held_out_rows for row in seen["fitted"])
    vocabulary = extractor.vocabulary_
    assert set(vocabulary.subjects) == set(split.train) and not set(vocabulary.subjects) & set(split.test)
    assert vocabulary.meta["n_images"] == len(seen["scan_ids"])

    # ...yet the histogram table covers every scan, held-out subjects included.
    assert summary.table == "orb_bovw8" and summary.written == scans.num_rows and summary.failed == 0
    table = read_table(store, "orb_bovw8")
    assert set(table.column("scan_id").to_pylist()) == set(scans.column("scan_id").to_pylist())


def test_histogram_table_rows_provenance_and_listing(toy):
    store = toy
    extractor = create_extractor("bovw", descriptor="sift", vocab_size=6, tfidf=True, workers=1, progress=False)
    run_extraction(extractor, store, dataset="toy", progress=False)
    name = extractor.table_name()
    table = read_table(store, name)
    assert table.schema.names == ["scan_id", "source_sha256", "histogram", "n_keypoints"]
    histograms = np.asarray(table.column("histogram").to_pylist(), np.float32)
    keypoints = np.asarray(table.column("n_keypoints").to_pylist())
    blank = keypoints == 0
    assert blank.sum() == 1  # the flat image: zero keypoints, all-zero histogram, no failure
    assert np.all(histograms[blank] == 0)
    np.testing.assert_allclose(histograms[~blank].sum(axis=1), 1.0, rtol=1e-5)
    assert np.all(keypoints[~blank] > 20)

    sha = table_kv_metadata(store, name)["chronofeat.vocabulary"]
    assert sha == extractor.vocabulary_.sha256
    assert load_vocabulary(store, sha[:10]).vocab_size == 6
    rows = [r for r in list_vocabularies(store) if r["sha256"] == sha[:12]]
    assert rows and rows[0]["descriptor"] == "sift" and rows[0]["vocab_size"] == 6
    assert rows[0]["n_subjects"] == 6 and "test set" in rows[0]["subject_rule"]
    listing = vocabularies_table(store)  # what 'cli.py vocab list' prints
    assert listing.num_rows == len(list_vocabularies(store))
    assert {"sha256", "descriptor", "vocab_size", "n_subjects", "subjects"} <= set(listing.column_names)


def test_resumed_run_reuses_descriptors_and_vocabulary(toy, monkeypatch):
    store = toy
    first = create_extractor("bovw", descriptor="kaze", vocab_size=5, workers=1, progress=False)
    partial = run_extraction(first, store, dataset="toy", limit=5, progress=False)
    assert partial.written == 5
    assert read_table(store, "kaze_descriptors").num_rows == 16  # every scan described once, up front
    monkeypatch.setattr(bovw, "fit_centers", lambda *a, **k: pytest.fail("refitted"))
    monkeypatch.setattr(keypoints, "_describe_task", lambda *a, **k: pytest.fail("described again"))
    second = create_extractor("bovw", descriptor="kaze", vocab_size=5, workers=2, progress=False)
    rest = run_extraction(second, store, dataset="toy", progress=False)
    assert rest.skipped == 5 and rest.written == 11
    assert second.vocabulary_.sha256 == first.vocabulary_.sha256
    assert table_kv_metadata(store, "kaze_bovw5")["chronofeat.descriptor_table"] == "kaze_descriptors"


def test_descriptor_table_is_the_same_with_two_worker_processes(toy):
    from extractors.keypoints import KeypointDescriptors

    store = toy
    extractor = KeypointDescriptors(descriptor="brisk", max_keypoints=200, workers=2, progress=False)
    summary = run_extraction(extractor, store, dataset="toy", progress=False)
    assert summary.written == 16 and summary.table.startswith("brisk_descriptors_")
    scans = _scans(store)
    wanted = dict(zip(scans.column("scan_id").to_pylist(), scans.column("pixel_sha256").to_pylist(), strict=True))
    stored = dict(read_descriptors(store, summary.table, "brisk", wanted))
    assert len(stored) == 16
    from store.pixels import PixelReader

    reader = PixelReader(store, "toy")
    for scan_id, path in zip(scans.column("scan_id").to_pylist(), scans.column("path").to_pylist(), strict=True):
        np.testing.assert_array_equal(stored[scan_id], describe(reader.read(path), "brisk", max_keypoints=200))


def test_explicit_subject_list(toy, tmp_path):
    store = toy
    scans = _scans(store)
    chosen = sorted(set(scans.column("subject").to_pylist()))[:3]
    listing = tmp_path / "train.txt"
    listing.write_text("\n".join(chosen) + "\n")
    extractor = build_from_options("orb_bovw", {"vocab_size": 4, "vocab_subjects": str(listing), "workers": 1})
    extractor.set_params(progress=False)
    run_extraction(extractor, store, dataset="toy", progress=False)
    assert set(extractor.vocabulary_.subjects) == set(chosen)
    assert extractor.vocabulary_.meta["subject_rule"] == "explicit subject list"
    unknown = create_extractor("bovw", descriptor="orb", vocab_size=4, vocab_subjects=("nobody",), vocab_split=None,
                               progress=False)
    with pytest.raises(DatasetError, match="not subjects of dataset 'toy'"):
        run_extraction(unknown, store, dataset="toy", progress=False)


@pytest.mark.skipif(_surf_available(), reason="this OpenCV has nonfree SURF; the refusal cannot happen")
def test_surf_without_nonfree_fails_before_any_work(toy, monkeypatch):
    store = toy
    monkeypatch.setattr(keypoints, "_read_pixels", lambda *a: pytest.fail("pixels were read"))
    extractor = build_from_options("surf_bovw", {"vocab_size": 50})
    with pytest.raises(BackendUnavailableError) as caught:
        run_extraction(extractor, store, dataset="toy", progress=False)
    message = str(caught.value)
    assert "nonfree" in message and "OPENCV_ENABLE_NONFREE=ON" in message and "sift" in message
    assert not table_exists(store, "surf_bovw50") and not table_exists(store, "surf_descriptors")
    assert not list_vocabularies(store) or all(r["descriptor"] != "surf" for r in list_vocabularies(store))


@pytest.mark.skipif(not _surf_available(), reason="needs an OpenCV built with nonfree modules (SURF)")
def test_surf_with_nonfree_describes_images():
    raw = describe(data.camera(), "surf", max_keypoints=200)
    assert raw.shape[1] in (64, 128) and raw.shape[0] > 50
