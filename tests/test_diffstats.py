"""features.stats and extractors.diffstats: difference-image statistics per pair."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage import data

from extractors import build_from_options, create_extractor
from extractors.diffstats import DiffStats, pair_statistics
from features.errors import ParameterError
from features.stats import (
    difference_statistics,
    noise_sigma,
    sigma_column,
    statistic_names,
)


@pytest.fixture(scope="module")
def smooth():
    """A real photograph, lightly smoothed so that its own noise is negligible against what we add."""
    return ndimage.gaussian_filter(data.camera().astype(np.float64), 1.5)


def test_statistic_names_and_sigma_columns():
    names = statistic_names((1, 2, 3))
    assert names[:3] == ["diff_mean", "diff_std", "diff_skew"]
    assert [n for n in names if n.startswith("diff_p")] == [
        "diff_p01", "diff_p05", "diff_p25", "diff_p50", "diff_p75", "diff_p95", "diff_p99"]
    assert {"diff_mean_abs", "noise_sigma", "frac_above_1sigma", "frac_above_2sigma", "frac_above_3sigma",
            "diff_entropy", "ssim"} <= set(names)
    assert sigma_column(1.5) == "frac_above_1p5sigma"


def test_noise_sigma_recovers_known_noise_and_ignores_flat_padding(smooth):
    rng = np.random.default_rng(0)
    noisy = smooth + rng.normal(0, 6.0, smooth.shape)
    assert noise_sigma(noisy) == pytest.approx(6.0, rel=0.12)
    padded = np.pad(noisy, 200, constant_values=noisy.min())  # mostly flat canvas
    assert noise_sigma(padded) == pytest.approx(6.0, rel=0.12)
    assert noise_sigma(np.full((20, 20), 3.0)) == 0.0


def test_no_change_gives_gaussian_tails_and_real_change_shows_up(smooth):
    rng = np.random.default_rng(1)
    sigma = 4.0
    reference = smooth + rng.normal(0, sigma, smooth.shape)
    same = smooth + rng.normal(0, sigma, smooth.shape)
    stats = difference_statistics(same - reference, reference, same)
    v = stats.values
    assert abs(v["diff_mean"]) < 0.1
    assert v["noise_sigma"] == pytest.approx(sigma * np.sqrt(2), rel=0.15)
    assert v["frac_above_1sigma"] == pytest.approx(0.317, abs=0.06)  # Gaussian two-sided tails
    assert v["frac_above_3sigma"] < 0.01
    assert stats.histogram.shape == (32,) and stats.histogram.sum() == pytest.approx(1.0)
    assert 0.5 < v["ssim"] < 0.99  # noise alone lowers SSIM, it does not destroy it

    changed = same.copy()
    changed[100:260, 100:260] += 10 * sigma  # about 10% of the pixels gain 10 sigma
    after = difference_statistics(changed - reference, reference, changed)
    w = after.values
    assert w["frac_above_3sigma"] == pytest.approx(160 * 160 / smooth.size, abs=0.01)
    assert w["diff_mean"] == pytest.approx(10 * sigma * 160 * 160 / smooth.size, rel=0.05)
    assert w["diff_p99"] > 30 and abs(w["diff_p50"]) < 0.3 * w["noise_sigma"]
    assert w["diff_skew"] > 1.5 and abs(v["diff_skew"]) < 0.1  # a one-sided change skews, noise does not


def test_mask_limits_the_statistics_to_real_pixels():
    diff = np.zeros((50, 50))
    diff[:, :10] = 1000.0  # "padding" region of a wildly different value
    ref = np.random.default_rng(2).normal(0, 1, (50, 50))
    mask = np.ones((50, 50), bool)
    mask[:, :10] = False
    stats = difference_statistics(diff, ref, ref, mask=mask)
    assert stats.values["diff_mean"] == 0.0 and stats.values["diff_p99"] == 0.0


def test_pair_statistics_registers_before_subtracting(smooth):
    rng = np.random.default_rng(3)
    reference = (smooth + rng.normal(0, 2, smooth.shape)).astype(np.float32)
    comparison = ndimage.shift(smooth, (4.0, -6.0), order=1, mode="nearest") + rng.normal(0, 2, smooth.shape)
    registered, hist = pair_statistics(reference, comparison, register=True)
    plain, _ = pair_statistics(reference, comparison, register=False)
    assert (registered["shift_dy"], registered["shift_dx"]) == pytest.approx((4.0, -6.0), abs=0.25)
    assert registered["shift_confidence"] > 0.99
    assert registered["diff_mean_abs"] < plain["diff_mean_abs"] / 3
    assert registered["frac_above_3sigma"] < 0.02 < plain["frac_above_3sigma"]
    assert plain["shift_dy"] == 0.0 and 0.0 <= plain["shift_confidence"] < registered["shift_confidence"]
    assert hist.dtype == np.float32


def test_pair_statistics_of_different_sizes_use_only_shared_pixels(smooth):
    reference = smooth[20:480, 10:500]
    comparison = smooth[0:500, 30:470]
    values, _ = pair_statistics(reference, comparison)
    assert values["diff_mean_abs"] < 1e-3  # same photograph: no change where both have pixels


def test_first_time_point_statistics_describe_the_uniform_minimum_image(smooth):
    values, hist = pair_statistics(smooth, smooth, is_first=True)
    assert values["diff_mean"] == pytest.approx(smooth.min(), abs=1e-4)
    assert values["diff_std"] == 0.0 and values["diff_skew"] == 0.0
    assert values["diff_p01"] == values["diff_p99"]
    assert (values["shift_dy"], values["shift_dx"], values["shift_confidence"]) == (0.0, 0.0, 1.0)
    assert values["ssim"] == 1.0 and values["diff_entropy"] == 0.0
    assert hist.max() == 1.0
    assert all(np.isfinite(v) for v in values.values())


def test_parameters_are_validated_with_sklearn_wording():
    with pytest.raises(ParameterError, match=r"The 'reference' parameter of DiffStats must be a str among"):
        create_extractor("diffstats", reference="given")
    with pytest.raises(ParameterError, match=r"'n_bins' parameter of DiffStats must be an int in \[2, 4096\]. Got 1"):
        create_extractor("diffstats", n_bins=1)
    with pytest.raises(ParameterError, match="k_sigmas"):
        create_extractor("diffstats", k_sigmas=(1, -2))


def test_table_names_carry_the_reference_mode():
    assert DiffStats().table_name() == "diffstats_absolute"
    assert DiffStats(reference="relative").table_name() == "diffstats_relative"
    assert DiffStats(reference="relative", workers=1).table_name() == "diffstats_relative"
    other = DiffStats(reference="relative", n_bins=64).table_name()
    assert other.startswith("diffstats_relative_") and len(other) == len("diffstats_relative_") + 8
    schema = DiffStats(k_sigmas=(1, 2.5)).output_schema()
    assert schema.names[:2] == ["pair_id", "source_sha256"]
    assert "frac_above_2p5sigma" in schema.names
    assert str(schema.field("diff_histogram").type) == "fixed_size_list<item: float>[32]"


def test_cli_alias_reads_reference_and_rejects_foreign_options():
    assert build_from_options("diffstats", {"reference": None, "dataset": "x"}).table_name() == "diffstats_absolute"
    built = build_from_options("diffstats", {"reference": "relative", "workers": 2})
    assert built.table_name() == "diffstats_relative" and built.workers == 2
    with pytest.raises(ParameterError, match="--vocab-size"):
        build_from_options("diffstats", {"reference": "absolute", "vocab_size": 50})


# --- the extractor on a store -------------------------------------------------------------------------
def _scene(rng, size=(90, 110)):
    image = ndimage.gaussian_filter(rng.normal(0, 1, size), 2.5) * 300 + 500
    return image


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """4 subjects x 3 weeks: 'grow' subjects gain a bright patch each week, 'stable' ones only move.

    Every week the subject is shifted by a known amount and the operator crop changes the size.
    """
    import csv

    from store.ingest import ingest_dataset
    from store.layout import open_store

    root = tmp_path_factory.mktemp("toy_diffstats")
    rng = np.random.default_rng(5)
    rows, truth = [], {}
    for s in range(4):
        label = "grow" if s % 2 else "stable"
        base = _scene(rng, (120, 140))
        for week in range(3):
            scene = base.copy()
            if label == "grow":
                scene[50:50 + 8 * week, 60:60 + 8 * week] += 150.0
            shift = (0.0, 0.0) if week == 0 else (float(rng.integers(-4, 5)), float(rng.integers(-4, 5)))
            moved = ndimage.shift(scene, shift, order=1, mode="nearest")
            crop = moved[10:110 - week * 3, 10:130 - week * 2]  # sizes differ from week to week
            noisy = crop + rng.normal(0, 3.0, crop.shape)
            path = f"{label}{s}/week{week}.npy"
            (root / f"{label}{s}").mkdir(exist_ok=True)
            np.save(root / path, noisy.astype(np.float32))
            rows.append((path, f"mouse-{s}", week, label))
            truth[path] = noisy
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "subject", "time", "label"])
        writer.writerows(rows)
    store = open_store(tmp_path_factory.mktemp("store_diffstats"))
    ingest_dataset(store, "toy", root=root, progress=False)
    return store, truth


def _joined(store, table):
    from store.sql import query

    return query(
        store,
        f"""SELECT d.*, p.time_index, p.label, r.path AS ref_path, c.path AS cmp_path
            FROM {table} d JOIN pairs p USING (pair_id)
            JOIN scans r ON r.scan_id = p.reference_scan_id JOIN scans c ON c.scan_id = p.comparison_scan_id
            ORDER BY p.subject, p.time_index""",
    ).to_pylist()


def test_diffstats_table_on_a_longitudinal_dataset(toy):
    from extractors.runner import run_extraction
    from store.tables import table_kv_metadata

    store, truth = toy
    summary = run_extraction(create_extractor("diffstats", workers=1), store, dataset="toy", progress=False)
    assert summary.table == "diffstats_absolute" and summary.written == 12 and summary.failed == 0
    rows = _joined(store, "diffstats_absolute")
    for row in rows:
        values = [v for k, v in row.items() if isinstance(v, float)]
        assert all(np.isfinite(values)), row
        assert len(row["diff_histogram"]) == 32 and sum(row["diff_histogram"]) == pytest.approx(1.0, rel=1e-5)
        if row["time_index"] == 0:  # first week: ChronoMID's uniform difference image at the minimum
            assert row["ref_path"] == row["cmp_path"]
            assert row["diff_mean"] == pytest.approx(float(truth[row["cmp_path"]].min()), abs=1e-3)
            assert row["diff_std"] == 0.0 and row["shift_confidence"] == 1.0
        elif row["label"] == "stable":
            assert row["shift_confidence"] > 0.98  # only noise differs once registered
        else:
            assert 0.7 < row["shift_confidence"] < 0.98  # the new bright patch is real disagreement
    late = [r for r in rows if r["time_index"] == 2]
    grow = [r for r in late if r["label"] == "grow"]
    stable = [r for r in late if r["label"] == "stable"]
    assert min(r["diff_mean"] for r in grow) > 5 * max(abs(r["diff_mean"]) for r in stable)
    assert min(r["frac_above_3sigma"] for r in grow) > 0.015 > max(r["frac_above_3sigma"] for r in stable)
    metadata = table_kv_metadata(store, "diffstats_absolute")
    assert '"reference":"absolute"' in metadata["chronofeat.params"] and "workers" not in metadata["chronofeat.params"]
    again = run_extraction(create_extractor("diffstats", workers=1), store, dataset="toy", progress=False)
    assert again.written == 0 and again.skipped == 12


def test_relative_reference_in_parallel_matches_absolute_where_they_coincide(toy):
    from extractors.runner import run_extraction

    store, _ = toy
    run_extraction(build_from_options("diffstats", {"reference": "relative", "workers": 2}), store, dataset="toy",
                   progress=False)
    from store.tables import table_exists

    if not table_exists(store, "diffstats_absolute"):
        run_extraction(create_extractor("diffstats", workers=1), store, dataset="toy", progress=False)
    relative = {(r["ref_path"], r["cmp_path"]): r for r in _joined(store, "diffstats_relative")}
    absolute = {(r["ref_path"], r["cmp_path"]): r for r in _joined(store, "diffstats_absolute")}
    assert len(relative) == 12
    # week 1 vs week 0 is both the absolute and the relative pair: same numbers, whatever the worker count
    shared = set(relative) & set(absolute)
    assert len(shared) == 8  # 4 first weeks + 4 week-1 pairs
    for key in shared:
        for name in ("shift_dy", "shift_dx", "diff_mean", "diff_p95", "frac_above_2sigma", "ssim"):
            assert relative[key][name] == pytest.approx(absolute[key][name], rel=1e-9, abs=1e-12)
    week2 = [r for r in relative.values() if r["time_index"] == 2]
    assert all(r["ref_path"].endswith("week1.npy") for r in week2)
