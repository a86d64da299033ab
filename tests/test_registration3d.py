"""features.registration3d, features.volume_stats and extractors.diffstats3d: longitudinal 3-D pairs."""

from __future__ import annotations

import numpy as np
import pytest

from features.errors import InputError, ParameterError
from features.phantom3d import smooth_phantom
from features.registration3d import (
    difference_volume,
    euler_angles_deg,
    grid_centre,
    identity_metric,
    motion_error,
    register_rigid,
    register_volume,
    rigid_matrix,
)
from features.stats import difference_statistics, statistic_names
from features.volume_stats import slab_bounds, slab_names, volume_statistics

SHAPE = (40, 56, 56)


def _moved_pair(shape, spacing, rotation_deg, shift_voxels, seed=3):
    """(fixed, moving, true matrix): the phantom and the phantom moved by a known rigid motion."""
    shift_mm = np.asarray(shift_voxels, np.float64) * np.asarray(spacing, np.float64)
    truth = rigid_matrix(rotation_deg, shift_mm, grid_centre(shape, spacing))
    fixed = smooth_phantom(shape, spacing, seed=seed)
    moving = smooth_phantom(shape, spacing, seed=seed, motion=truth)
    return fixed, moving, truth


@pytest.mark.parametrize(("spacing", "rotation", "shift"), [
    ((1.0, 1.0, 1.0), (3.0, 0.0, 0.0), (0.0, 2.5, 0.0)),  # 3 degrees about z, 2.5 voxels along y
    ((2.5, 0.8, 0.8), (0.0, 0.0, 3.0), (1.5, -2.5, 1.0)),  # anisotropic voxels, rotation about x
    ((1.2, 1.0, 1.0), (-2.0, 2.5, 1.5), (-1.0, 2.0, -2.5)),  # every axis at once
])
def test_known_rigid_motion_is_recovered_within_half_a_voxel_and_half_a_degree(spacing, rotation, shift):
    fixed, moving, truth = _moved_pair(SHAPE, spacing, rotation, shift)
    before = motion_error(np.eye(4), truth, shape=SHAPE, spacing=spacing)
    assert before[0] > 2.0 and before[1] > 2.5  # the motion is real: unregistered it is off by voxels
    found = register_rigid(fixed, moving, spacing_fixed=spacing)
    voxels, degrees = motion_error(found.transform.matrix, truth, shape=SHAPE, spacing=spacing)
    assert voxels < 0.5 and degrees < 0.5
    assert found.transform.rotation_deg == pytest.approx(rotation, abs=0.5)
    assert np.asarray(found.transform.shift_mm) / np.asarray(spacing) == pytest.approx(shift, abs=0.5)
    assert found.metric < -0.99 and found.metric_name == "correlation" and found.iterations > 0
    # resampled onto the fixed grid, the moved phantom lies on the fixed one again
    diff, mask = difference_volume(found, fixed)
    assert mask.mean() > 0.85
    unregistered = np.abs(moving - fixed)[mask].mean()
    assert np.abs(diff)[mask].mean() < 0.1 * unregistered


def test_mattes_metric_and_affine_also_recover_the_motion():
    spacing = (1.5, 1.0, 1.0)
    fixed, moving, truth = _moved_pair(SHAPE, spacing, (0.0, 3.0, 0.0), (1.0, 0.0, 2.0))
    for options in ({"metric": "mattes", "samples": 40_000}, {"transform": "affine"}):
        found = register_volume(fixed, moving, spacing_fixed=spacing, **options)
        voxels, degrees = motion_error(found.transform.matrix, truth, shape=SHAPE, spacing=spacing)
        assert voxels < 0.5 and degrees < 0.5, options
    assert found.transform.kind == "affine"


def test_equal_volumes_give_the_identity_and_a_zero_difference():
    spacing = (2.0, 1.0, 1.0)
    fixed = smooth_phantom(SHAPE, spacing, seed=5)
    found = register_volume(fixed, fixed.copy(), spacing_fixed=spacing)
    assert found.transform.matrix == pytest.approx(np.eye(4), abs=1e-3)
    assert found.transform.angle_deg < 0.01 and found.metric == pytest.approx(-1.0, abs=1e-6)
    diff, mask = difference_volume(found, fixed)
    assert mask.all()
    assert np.abs(diff).max() < 1e-3 * np.abs(fixed).max()
    absolute, _ = difference_volume(found, fixed, absolute=True)
    assert (absolute >= 0).all()
    assert identity_metric(fixed, fixed, spacing=spacing) == pytest.approx(-1.0)


def test_registration_is_deterministic_and_differs_across_grids():
    spacing = (1.0, 1.0, 1.0)
    fixed, moving, _ = _moved_pair((32, 40, 40), spacing, (2.0, 0.0, 0.0), (0.0, 1.5, 0.0))
    a = register_volume(fixed, moving, spacing_fixed=spacing)
    b = register_volume(fixed, moving, spacing_fixed=spacing)
    assert np.array_equal(a.transform.matrix, b.transform.matrix) and a.metric == b.metric
    assert np.array_equal(a.resampled, b.resampled)
    # a moving volume on another grid (other shape and spacing) is resampled onto the fixed grid
    smaller = moving[::2, ::2, ::2]
    c = register_volume(fixed, smaller, spacing_fixed=spacing, spacing_moving=(2.0, 2.0, 2.0))
    assert c.resampled.shape == fixed.shape


def test_euler_angles_and_rigid_matrix_match_simpleitk():
    import SimpleITK as sitk

    itk = sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.1, -0.2, 0.3, (4.0, 5.0, 6.0))
    matrix = rigid_matrix(np.degrees([0.3, -0.2, 0.1]), (0, 0, 0), (3.0, 2.0, 1.0))
    assert euler_angles_deg(matrix) == pytest.approx(np.degrees([0.3, -0.2, 0.1]))
    point = np.array([7.0, 8.0, 9.0])  # (x, y, z)
    moved = matrix @ np.append(point[::-1], 1.0)
    expected = np.asarray(itk.TransformPoint(point)) - np.array([4.0, 5.0, 6.0])
    assert moved[:3][::-1] == pytest.approx(expected)


def test_bad_inputs_and_options_are_named():
    volume = np.zeros((8, 8, 8), np.float32)
    with pytest.raises(InputError, match="moving volume has shape"):
        register_volume(volume, np.zeros((8, 8)), spacing_fixed=(1, 1, 1))
    with pytest.raises(InputError, match="spacing"):
        register_volume(volume, volume, spacing_fixed=(1, 0, 1))
    with pytest.raises(ParameterError, match="'transform' parameter of register_volume"):
        register_volume(volume, volume, spacing_fixed=(1, 1, 1), transform="bspline")
    with pytest.raises(ParameterError, match="'smoothing' parameter"):
        register_volume(volume, volume, spacing_fixed=(1, 1, 1), shrink=(2, 1), smoothing=(1.0,))


# --- statistics ---------------------------------------------------------------------------------------------
def test_one_slice_volume_statistics_equal_the_2d_ones():
    rng = np.random.default_rng(0)
    reference = rng.normal(100, 5, (1, 64, 64))
    comparison = reference + rng.normal(0, 3, reference.shape)
    comparison[0, 20:30, 20:30] += 40
    mask = np.ones(reference.shape, bool)
    mask[0, :, :4] = False
    flat = volume_statistics(comparison - reference, reference, comparison, mask=mask, n_slabs=0)
    plane = difference_statistics((comparison - reference)[0], reference[0], comparison[0], mask=mask[0])
    assert list(flat.values) == statistic_names()
    assert flat.values == pytest.approx(plane.values, rel=1e-5, abs=1e-6)
    assert flat.histogram == pytest.approx(plane.histogram)


def test_slab_statistics_locate_the_change_along_z():
    rng = np.random.default_rng(1)
    reference = rng.normal(50, 2, (24, 32, 32)).astype(np.float32)
    comparison = reference + rng.normal(0, 2, reference.shape).astype(np.float32)
    comparison[19:23, 8:24, 8:24] += 30  # a change in the last slab only
    stats = volume_statistics(comparison - reference, reference, comparison, n_slabs=4)
    assert list(stats.values) == slab_names(4)
    assert slab_bounds(24, 4) == [(0, 6), (6, 12), (12, 18), (18, 24)]
    means = [stats.values[f"slab{i}_diff_mean"] for i in range(4)]
    assert means[3] == pytest.approx(5.0, abs=0.3) and max(abs(m) for m in means[:3]) < 0.2
    assert stats.values["slab3_frac_above_3sigma"] > 0.1 > stats.values["slab0_frac_above_3sigma"]
    assert stats.values["diff_mean"] == pytest.approx(np.mean(means), rel=1e-6)
    with pytest.raises(ParameterError, match="n_slabs"):
        volume_statistics(comparison - reference, reference, comparison, n_slabs=25)
    empty = np.zeros(reference.shape, bool)
    empty[:12] = True
    with pytest.raises(InputError, match="no voxel covered"):
        volume_statistics(comparison - reference, reference, comparison, mask=empty, n_slabs=4)


# --- the extractor on the volumetric demo ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def tibia3d(tmp_path_factory):
    """The tibia3d demo (8 subjects x 3 sessions of 40x48x48 volumes with known motion), ingested once."""
    from tests._demo_stores import demo_store

    return demo_store(tmp_path_factory, "tibia3d")


def _demo_truth(store, volumes):
    """{volume_id: true 4x4 (z, y, x) grid-mm motion from the subject's first session} from ground_truth.json."""
    import json

    from store.pseudonym import subject_key
    from store.secret import load_secret

    truth = json.loads((store.root / "datasets" / "tibia3d" / "ground_truth.json").read_text())
    secret = load_secret(store)
    names = {subject_key(secret, ident): sub for sub in truth["subjects"] for ident in (sub, sub.removeprefix("sub-"))}
    times: dict[str, list[int]] = {}
    for row in volumes:
        times.setdefault(row["subject"], []).append(row["time_index"])
    out = {}
    for row in volumes:
        session = f"ses-{sorted(times[row['subject']]).index(row['time_index']) + 1:02d}"
        world = np.asarray(truth["subjects"][names[row["subject"]]]["sessions"][session]["baseline_to_session"])
        affine, (sz, sy, sx) = np.asarray(row["affine"], np.float64).reshape(4, 4), row["spacing"]
        grid_to_voxel = np.array([[0, 0, 1 / sx, 0], [0, 1 / sy, 0, 0], [1 / sz, 0, 0, 0], [0, 0, 0, 1]])
        to_world = affine @ grid_to_voxel
        out[row["volume_id"]] = np.linalg.inv(to_world) @ world @ to_world
    return out


@pytest.mark.slow
def test_diffstats_on_3d_pairs_recovers_the_demo_motion_and_stores_quality(tibia3d, tmp_path):
    import pyarrow.compute as pc

    from extractors import build_from_options, create_extractor
    from extractors.diffstats import DiffStats
    from extractors.diffstats3d import REGISTRATION_COLUMNS
    from extractors.runner import run_extraction
    from store.tables import read_table
    from store.volumes import read_volume_pairs, read_volumes

    extractor = build_from_options("diffstats", {"reference": "absolute"})
    assert extractor.for_dataset(tibia3d, "tibia3d").table_name() == "diffstats3d_absolute"
    with pytest.raises(ParameterError, match="holds 3-D pairs"):
        DiffStats(rigid=True).for_dataset(tibia3d, "tibia3d")
    with pytest.raises(ParameterError, match="'registration' parameter of DiffStats3D"):
        create_extractor("diffstats3d", registration="bspline")
    summary = run_extraction(extractor, tibia3d, dataset="tibia3d", progress=False)
    assert summary.failed == 0
    table = read_table(tibia3d, "diffstats3d_absolute")
    pairs = read_volume_pairs(tibia3d, "tibia3d", "absolute")
    assert table.num_rows == pairs.num_rows == 24
    assert set(table.column("pair_id").to_pylist()) == set(pairs.column("pair_id").to_pylist())
    assert {*REGISTRATION_COLUMNS, "reg_iterations", "reg_transform", "diff_mean", "slab3_ssim"} <= set(
        table.column_names)
    rows = {r["pair_id"]: r for r in table.to_pylist()}
    truth = _demo_truth(tibia3d, read_volumes(tibia3d, "tibia3d").to_pylist())
    spacing = read_volumes(tibia3d, "tibia3d").column("spacing")[0].as_py()
    errors = []
    for pair in pairs.to_pylist():
        row = rows[pair["pair_id"]]
        matrix = np.vstack([np.asarray(row["reg_transform"], np.float64).reshape(3, 4), [0, 0, 0, 1]])
        if pair["reference_volume_id"] == pair["comparison_volume_id"]:
            assert row["reg_iterations"] == 0 and row["reg_angle_deg"] == 0.0 and row["ssim"] == 1.0
            continue
        assert row["reg_iterations"] > 0 and row["reg_metric"] < -0.9
        errors.append(motion_error(matrix, truth[pair["comparison_volume_id"]], shape=(40, 48, 48), spacing=spacing))
    errors = np.asarray(errors)
    assert len(errors) == 16 and errors[:, 0].max() < 0.5 and errors[:, 1].max() < 0.5, errors
    # the motion was real: several pairs moved by over 2 degrees or 1.5 voxels
    assert (pc.max(table.column("reg_angle_deg")).as_py()) > 2.0
    # a rerun finds every row done
    assert run_extraction(extractor, tibia3d, dataset="tibia3d", progress=False).written == 0


@pytest.mark.slow
def test_fit_on_3d_pair_statistics_runs_with_subject_grouped_folds(tibia3d):
    from classifiers.fitting import FitRequest, fit
    from extractors.diffstats3d import DiffStats3D
    from extractors.runner import run_extraction
    from store.runs import run_predictions

    run_extraction(DiffStats3D(reference="absolute"), tibia3d, dataset="tibia3d", progress=False)  # no-op if done
    result = fit(tibia3d, FitRequest(model="logistic", dataset="tibia3d", features="diffstats3d_absolute", folds=4,
                                     test_subjects="0", seeds=1, progress=False, n_boot=50))
    predictions = run_predictions(tibia3d, result.run_id).to_pylist()
    assert len(predictions) == 24 and {p["split"] for p in predictions} == {"cv"}
    folds_of = {}
    for row in predictions:
        folds_of.setdefault(row["subject"], set()).add(row["fold"])
    assert len(folds_of) == 8 and all(len(f) == 1 for f in folds_of.values())  # a subject stays in one fold
    assert {p["y_true"] for p in predictions} == {"growing", "stable"}
