"""The Ray engine writes the table the local engine writes: same rows, keys, metadata, failures, resume.

Cost plan (CI: 2 cores, 24 GB, no GPU): one local Ray instance with 2 CPUs for the module (~10 s to
start, plus worker start-up on first use). Comparisons run on few units: diffstats and a tiny timm
CNN (random weights) on part of the chronomid demo, and diffstats + BoVW on a 12-image NPY dataset
with one unreadable file. Every extraction is run once with each engine into two copies of one store.
"""

from __future__ import annotations

import csv

import numpy as np
import pyarrow as pa
import pytest
from scipy import ndimage

ray = pytest.importorskip("ray", reason="the Ray engine needs the optional 'ray' extra")

from extractors.bovw import BoVW  # noqa: E402
from extractors.cnn import CNNEmbedding  # noqa: E402
from extractors.diffstats import DiffStats  # noqa: E402
from extractors.ray_engine import run_extraction_ray  # noqa: E402
from extractors.runner import run_extraction  # noqa: E402
from features.errors import InputError, ParameterError  # noqa: E402
from store.tables import read_table, table_exists, table_kv_metadata  # noqa: E402
from tests._demo_stores import core_copy, demo_store  # noqa: E402

TINY = "test_efficientnet"  # timm's 0.36 M-parameter test network


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance with 2 CPUs shared by the module (the engine uses it and leaves it running)."""
    # a small object store: CI containers often have a small /dev/shm (Ray then falls back to /tmp)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=512 * 2**20)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def chronomid(tmp_path_factory):
    return demo_store(tmp_path_factory, "chronomid")


def _sorted(store, table: str, key: str) -> pa.Table:
    return read_table(store, table).sort_by(key)


def _assert_same_rows(a: pa.Table, b: pa.Table, *, rtol: float = 1e-12) -> None:
    """Row-for-row equality of two tables sorted by key: every non-float column exactly, floats to ``rtol``.

    Why a tolerance at all: the driver's BLAS uses every core while Ray workers run with one thread
    (OMP_NUM_THREADS=1), so a dot product may be summed in another order and differ in the last bits
    (the local engine run with OMP_NUM_THREADS=1 gives the Ray values exactly).
    """
    assert a.schema == b.schema and a.num_rows == b.num_rows
    for name in a.column_names:
        kind = a.schema.field(name).type
        if (
            pa.types.is_floating(kind)
            or (pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind))
            and pa.types.is_floating(kind.value_type)
        ):
            x = np.array(a.column(name).to_pylist(), dtype=np.float64)
            y = np.array(b.column(name).to_pylist(), dtype=np.float64)
            np.testing.assert_allclose(y, x, rtol=rtol, atol=0, err_msg=name)
        else:
            assert a.column(name).equals(b.column(name)), name


def _same_metadata(local: dict, remote: dict, *, ignore: tuple[str, ...] = ()) -> None:
    assert set(remote) == set(local) | {"chronofeat.engine"}
    for name, value in local.items():
        if name not in ignore:
            assert remote[name] == value, name


def test_diffstats_on_ray_equals_local_row_for_row_and_resumes(ray_cluster, chronomid, tmp_path):
    local, remote = core_copy(chronomid, tmp_path / "local"), core_copy(chronomid, tmp_path / "ray")
    n = 20
    done = run_extraction(
        DiffStats(reference="absolute", workers=1), local, dataset="chronomid", limit=n, progress=False
    )
    first = run_extraction_ray(DiffStats(reference="absolute"), remote, dataset="chronomid", limit=n // 2,
                               block_rows=4, progress=False)
    second = run_extraction_ray(DiffStats(reference="absolute"), remote, dataset="chronomid", limit=n // 2,
                                block_rows=7, progress=False)
    assert done.written == n and first.written == n // 2 and second.written == n // 2
    assert (second.units, second.skipped) == (done.units, n // 2)  # resumed: the first half was not recomputed
    a, b = _sorted(local, "diffstats_absolute", "pair_id"), _sorted(remote, "diffstats_absolute", "pair_id")
    assert a.num_rows == n
    _assert_same_rows(a, b)  # per-pair computations: block boundaries cannot change a value
    firsts = np.array(a.column("shift_confidence").to_pylist()) == 1.0
    assert firsts.any() and not firsts.all()  # both first-time-point and registered pairs were compared

    meta_local, meta_ray = (
        table_kv_metadata(local, "diffstats_absolute"),
        table_kv_metadata(remote, "diffstats_absolute"),
    )
    _same_metadata(meta_local, meta_ray)
    assert '"engine":"ray"' in meta_ray["chronofeat.engine"] and '"cluster_cpus":2' in meta_ray["chronofeat.engine"]

    # rows of both engines mix in one table: the local engine resumes what Ray started, and vice versa
    more = run_extraction(
        DiffStats(reference="absolute", workers=1), remote, dataset="chronomid", limit=3, progress=False
    )
    assert more.written == 3 and more.skipped == n


def test_cnn_on_ray_equals_local_within_float_noise(ray_cluster, chronomid, tmp_path):
    local, remote = core_copy(chronomid, tmp_path / "local"), core_copy(chronomid, tmp_path / "ray")

    def extractor():
        return CNNEmbedding(model=TINY, weights="random", device="cpu", batch_size=4, workers=0)

    table = extractor().table_name()
    run_extraction(extractor(), local, dataset="chronomid", limit=10, progress=False)
    summary = run_extraction_ray(extractor(), remote, dataset="chronomid", limit=10, block_rows=3, progress=False)
    assert summary.table == table and summary.key == "scan_id" and summary.written == 10 and summary.failed == 0
    a, b = _sorted(local, table, "scan_id"), _sorted(remote, table, "scan_id")
    assert a.schema == b.schema and a.num_rows == 10
    assert a.column("scan_id").equals(b.column("scan_id")) and a.column("source_sha256").equals(
        b.column("source_sha256")
    )
    ea = np.stack(a.column("embedding").to_numpy(zero_copy_only=False))
    eb = np.stack(b.column("embedding").to_numpy(zero_copy_only=False))
    assert ea.shape == (10, 256) and np.abs(ea).max() > 0
    # eval mode: batch composition (4 per batch locally, Ray blocks of 3) changes only the summation order
    np.testing.assert_allclose(eb, ea, rtol=1e-5, atol=1e-6 * float(np.abs(ea).max()))

    meta_local, meta_ray = table_kv_metadata(local, table), table_kv_metadata(remote, table)
    _same_metadata(meta_local, meta_ray, ignore=("chronofeat.run",))
    assert '"inference":"cpu actors [fp32]"' in meta_ray["chronofeat.engine"]


def _field(rng, shape) -> np.ndarray:
    """A smooth random scene with blobs: enough structure for SIFT keypoints and registration."""
    scene = ndimage.gaussian_filter(rng.normal(size=shape), 4.0) * 400.0 + 1000.0
    for _ in range(6):
        y, x = rng.integers(10, shape[0] - 10), rng.integers(10, shape[1] - 10)
        scene[y - 4 : y + 4, x - 4 : x + 4] += rng.uniform(100, 300)
    return scene


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """4 subjects x 3 weeks of 96x112 NPY images (manifest layout) ingested into two stores; then one
    comparison file is overwritten with bytes that are no image, so it fails in both."""
    from store.ingest import ingest_dataset
    from store.layout import open_store

    root = tmp_path_factory.mktemp("toy_ray")
    rng = np.random.default_rng(3)
    rows = []
    for s in range(4):
        base = _field(rng, (96, 112))
        for week in range(3):
            moved = ndimage.shift(base, (rng.integers(-3, 4), rng.integers(-3, 4)), order=1, mode="nearest")
            path = f"s{s}/week{week}.npy"
            (root / f"s{s}").mkdir(exist_ok=True)
            np.save(root / path, (moved + rng.normal(0, 2.0, moved.shape)).astype(np.float32))
            rows.append((path, f"subject-{s}", week, "a" if s % 2 else "b"))
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "subject", "time", "label"])
        writer.writerows(rows)
    local = open_store(tmp_path_factory.mktemp("toy_store_local"))
    ingest_dataset(local, "toy", root=root, progress=False)
    stores = [local, core_copy(local, tmp_path_factory.mktemp("toy_store_ray"))]  # same secret: same subjects
    (root / "s1" / "week2.npy").write_bytes(b"not an image at all")
    return stores


def test_failures_and_bovw_on_ray_match_local(ray_cluster, toy):
    local, remote = toy
    done = run_extraction(DiffStats(reference="absolute", workers=1), local, dataset="toy", progress=False)
    summary = run_extraction_ray(DiffStats(reference="absolute"), remote, dataset="toy", block_rows=2, progress=False)
    assert (summary.written, summary.failed) == (done.written, done.failed) == (11, 1)
    _assert_same_rows(_sorted(local, "diffstats_absolute", "pair_id"), _sorted(remote, "diffstats_absolute", "pair_id"))
    fail_local = read_table(local, "failures").select(["key", "dataset", "path", "stage", "error_class", "message"])
    fail_ray = read_table(remote, "failures").select(["key", "dataset", "path", "stage", "error_class", "message"])
    assert fail_local.to_pylist() == fail_ray.to_pylist() and fail_ray.column("path").to_pylist() == ["s1/week2.npy"]

    # BoVW: the keypoint-descriptor table is filled on Ray first, then the vocabulary is fitted once
    def bovw():
        return BoVW(descriptor="sift", vocab_size=8, sample_per_image=50, workers=1, progress=False)

    done = run_extraction(bovw(), local, dataset="toy", progress=False)
    summary = run_extraction_ray(bovw(), remote, dataset="toy", block_rows=3, progress=False)
    assert summary.table == done.table == bovw().table_name() and summary.written == done.written == 11
    for table in ("sift_descriptors", summary.table):
        assert table_exists(remote, table)
        _assert_same_rows(_sorted(local, table, "scan_id"), _sorted(remote, table, "scan_id"))
    assert table_kv_metadata(remote, "sift_descriptors")["chronofeat.engine"].startswith('{"address":"local"')
    _same_metadata(table_kv_metadata(local, summary.table), table_kv_metadata(remote, summary.table))


class _Refusing(DiffStats):
    """A DiffStats whose computation refuses its input, as an extractor does for a unit it cannot use."""

    def transform(self, store, pending):
        raise InputError("pair refused on purpose by the test")


def test_an_error_raised_in_a_ray_task_reaches_the_caller_as_itself(ray_cluster, toy):
    _, remote = toy
    with pytest.raises(InputError, match="refused on purpose"):
        run_extraction_ray(_Refusing(reference="relative"), remote, dataset="toy", limit=3, progress=False)
    assert not table_exists(remote, "diffstats_relative")


def test_nothing_to_do_answers_without_starting_ray(chronomid, tmp_path, monkeypatch):
    import extractors.ray_engine as engine

    store = core_copy(chronomid, tmp_path / "store")
    run_extraction(DiffStats(reference="absolute", workers=1), store, dataset="chronomid", limit=2, progress=False)

    class Finished(DiffStats):  # a run limited to what is already stored has nothing pending
        def units(self, store, dataset):
            return super().units(store, dataset).slice(0, 2)

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started for a run with nothing to do")

    monkeypatch.setattr(engine, "_ray_session", no_ray)
    summary = run_extraction_ray(Finished(reference="absolute"), store, dataset="chronomid")
    assert (summary.written, summary.skipped, summary.units) == (0, 2, 2)
    with pytest.raises(ParameterError, match="block_rows"):
        engine._block_rows(10, 2, 0)
