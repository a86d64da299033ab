"""Volumes (issue 18): NIfTI / BIDS input, DICOM series assembly, the volumes tables, slice policies, the demo."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from extractors.base import ExtractedBatch, Extractor
from extractors.runner import run_extraction
from extractors.slices import with_slices
from features.errors import DatasetError, DecodeError, ParameterError
from features.slices import maximum_projection, parse_slice_policy, projection_axis
from store.demo.volume_writer import write_dicom_series, write_nifti
from store.failures import open_failures
from store.ingest import ingest_dataset
from store.layout import open_store
from store.nifti import read_nifti
from store.pixels import PixelReader
from store.pseudonym import Pseudonymizer
from store.secret import load_secret
from store.tables import read_table, table_kv_metadata
from store.units import scan_units
from store.volumes import VolumeReader, load_volume, read_volume_pairs, read_volumes

_PATIENT = {"PatientID": "VOL-PAT-0042", "PatientName": "Doe^Volume", "PatientBirthDate": "19600101",
            "StudyDate": "20240105", "Modality": "CT"}


def _oblique_affine(spacing=(1.5, 0.8, 0.7), degrees=12.0) -> np.ndarray:
    """A right-handed RAS affine: in-plane rotation about z, anisotropic voxels, an origin off zero."""
    angle = np.radians(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([spacing[2], spacing[1], spacing[0]])
    affine[:3, 3] = [-20.5, 13.25, -7.0]
    return affine


def _volume(seed: int, shape=(6, 10, 12)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4000, size=shape).astype(np.uint16)


def _bids(root: Path, volumes: dict[tuple[int, int], np.ndarray], affine: np.ndarray, *, dates=True) -> Path:
    """A BIDS tree: ``volumes[(subject, session)]``, labels a/b by subject parity, dated sessions 2 weeks apart."""
    lines = ["participant_id\tlabel"]
    for subject in sorted({s for s, _ in volumes}):
        name = f"sub-{subject:02d}"
        lines.append(f"{name}\t{'a' if subject % 2 else 'b'}")
        sessions = ["session_id\tacq_time"]
        for (s, session), array in sorted(volumes.items()):
            if s != subject:
                continue
            ses = f"ses-{session:02d}"
            write_nifti(root / name / ses / "anat" / f"{name}_{ses}_T1w.nii.gz", array, affine)
            (root / name / ses / "anat" / f"{name}_{ses}_T1w.json").write_text('{"RepetitionTime": 2.0}')
            sessions.append(f"{ses}\t2023-01-{2 + 14 * (session - 1):02d}T10:00:00")
        if dates:
            (root / name / f"{name}_sessions.tsv").write_text("\n".join(sessions) + "\n")
    (root / "participants.tsv").write_text("\n".join(lines) + "\n")
    (root / "dataset_description.json").write_text('{"Name": "test", "BIDSVersion": "1.8.0"}')
    return root


@pytest.fixture()
def store(tmp_path):
    return open_store(tmp_path / "store")


# ------------------------------------------------------------------------------------------ input


def test_nifti_and_dicom_series_of_one_volume_give_the_same_voxels_and_affine(tmp_path, store):
    array, affine = _volume(1), _oblique_affine()
    _bids(tmp_path / "bids", {(1, 1): array}, affine)
    write_dicom_series(tmp_path / "dcm" / "series", array, affine, _PATIENT, uid_parts=("test", 1))
    ingest_dataset(store, "nii", root=tmp_path / "bids", progress=False)
    ingest_dataset(store, "dcm", root=tmp_path / "dcm", progress=False)
    (nii_row,), (dcm_row,) = read_volumes(store, "nii").to_pylist(), read_volumes(store, "dcm").to_pylist()
    assert (nii_row["source_kind"], dcm_row["source_kind"]) == ("nifti", "dicom")
    assert nii_row["shape"] == dcm_row["shape"] == [6, 10, 12]
    np.testing.assert_allclose(nii_row["spacing"], [1.5, 0.8, 0.7], atol=1e-6)
    np.testing.assert_allclose(dcm_row["spacing"], [1.5, 0.8, 0.7], atol=1e-6)
    reader = VolumeReader(store)
    nii, dcm = reader.load(nii_row["volume_id"]), reader.load(dcm_row["volume_id"])
    assert nii.array.dtype == dcm.array.dtype == np.uint16
    np.testing.assert_array_equal(nii.array, array)
    np.testing.assert_array_equal(dcm.array, array)
    np.testing.assert_allclose(nii.affine, affine, atol=1e-5)
    np.testing.assert_allclose(dcm.affine, affine, atol=1e-5)
    np.testing.assert_allclose(nii.spacing, dcm.spacing, atol=1e-6)
    # every slice is a scan row linked to its volume, in k order, with the same pixels as the volume's slice
    for dataset, row, volume in (("nii", nii_row, nii), ("dcm", dcm_row, dcm)):
        scans = [s for s in scan_units(store, dataset).to_pylist() if s["volume_id"] == row["volume_id"]]
        assert sorted(s["volume_slice"] for s in scans) == list(range(6))
        pixels = PixelReader(store, dataset)
        for scan in scans:
            np.testing.assert_array_equal(pixels.read(scan["path"], scan["frame"]), volume.array[scan["volume_slice"]])


def test_a_shuffled_series_is_ordered_along_the_normal(tmp_path, store):
    array, affine = _volume(2), _oblique_affine(degrees=-25.0)
    order = [3, 0, 5, 1, 4, 2]  # file IM0000 holds slice 3, ...; InstanceNumber follows the files, not space
    write_dicom_series(tmp_path / "dcm" / "s", array, affine, _PATIENT, uid_parts=("test", 2), order=order)
    summary = ingest_dataset(store, "shuffled", root=tmp_path / "dcm", progress=False)
    assert summary.failed == 0
    (row,) = read_volumes(store, "shuffled").to_pylist()
    np.testing.assert_array_equal(load_volume(store, row["volume_id"]).array, array)
    by_file = {s["path"].rsplit("/", 1)[-1]: s["volume_slice"] for s in scan_units(store, "shuffled").to_pylist()}
    assert by_file == {f"IM{number:04d}.dcm": k for number, k in enumerate(order)}


def test_a_gapped_series_is_reported_not_guessed(tmp_path, store):
    array, affine = _volume(3, shape=(8, 10, 12)), _oblique_affine()
    order = [5, 2, 7, 0, 6, 1, 4, 3]
    write_dicom_series(tmp_path / "dcm" / "s", array, affine, _PATIENT, uid_parts=("test", 3), order=order, skip=(4,))
    summary = ingest_dataset(store, "gapped", root=tmp_path / "dcm", progress=False)
    assert summary.failed == 1 and summary.exit_code == 1
    failures = open_failures(store, dataset="gapped").to_pylist()
    assert [f["stage"] for f in failures] == ["ingest:volume"]
    assert "1 missing slice(s)" in failures[0]["message"] and "VOL-PAT-0042" not in failures[0]["message"]
    with pytest.raises(DatasetError, match="no 'volumes' table|no volumes"):
        read_volumes(store, "gapped")
    scans = scan_units(store, "gapped").to_pylist()
    assert len(scans) == 7 and all(s["volume_id"] is None for s in scans)
    # still ordered along the normal: 0, 1, 2, 3, 5, 6, 7 ranked 0..6
    by_file = {s["path"].rsplit("/", 1)[-1]: s["volume_slice"] for s in scans}
    kept = sorted(k for k in order if k != 4)
    assert by_file == {f"IM{n:04d}.dcm": kept.index(k) for n, k in enumerate(order) if k != 4}
    # the missing slice comes back: the failure is resolved and the volume is built
    write_dicom_series(tmp_path / "dcm" / "s", array, affine, _PATIENT, uid_parts=("test", 3), order=order)
    again = ingest_dataset(store, "gapped", root=tmp_path / "dcm", progress=False)
    assert again.failed == 0 and open_failures(store, dataset="gapped").num_rows == 0
    (row,) = read_volumes(store, "gapped").to_pylist()
    np.testing.assert_array_equal(load_volume(store, row["volume_id"]).array, array)


def test_an_enhanced_multiframe_file_is_one_volume_ordered_by_its_frame_positions(tmp_path, store):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from tests._ingest_samples import write_dicom

    array = _volume(6, shape=(5, 8, 9))
    where = [2, 0, 4, 1, 3]  # frame f lies at slice where[f]
    frames = np.stack([array[k] for k in where])

    def item(**values):
        ds = Dataset()
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        return ds

    per_frame = Sequence([
        item(PlanePositionSequence=Sequence([item(ImagePositionPatient=[-10.0, 5.0, 2.0 * k])])) for k in where
    ])
    shared = Sequence([item(
        PlaneOrientationSequence=Sequence([item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])]),
        PixelMeasuresSequence=Sequence([item(PixelSpacing=[0.5, 0.25], SliceThickness=2.0)]),
    )])
    write_dicom(tmp_path / "mf" / "enhanced.dcm", frames, attributes={
        "PerFrameFunctionalGroupsSequence": per_frame, "SharedFunctionalGroupsSequence": shared})
    summary = ingest_dataset(store, "mf", root=tmp_path / "mf", progress=False)
    assert summary.failed == 0
    (row,) = read_volumes(store, "mf").to_pylist()
    assert row["shape"] == [5, 8, 9] and row["slice_frames"] == [1, 3, 0, 4, 2]
    np.testing.assert_allclose(row["spacing"], [2.0, 0.5, 0.25])
    volume = load_volume(store, row["volume_id"])
    np.testing.assert_array_equal(volume.array, array)
    # LPS (-10, 5, 0) is RAS (10, -5, 0); i runs along -x in RAS (LPS +x), j along -y, k along +z
    np.testing.assert_allclose(volume.affine[:3], [[-0.25, 0, 0, 10.0], [0, -0.5, 0, -5.0], [0, 0, 2.0, 0.0]])


def test_a_duplicated_slice_is_reported(tmp_path, store):
    array, affine = _volume(4), _oblique_affine()
    write_dicom_series(tmp_path / "dcm" / "s", array, affine, _PATIENT, uid_parts=("test", 4),
                       order=[0, 1, 2, 2, 3, 4, 5])
    summary = ingest_dataset(store, "dup", root=tmp_path / "dcm", progress=False)
    (failure,) = open_failures(store, dataset="dup").to_pylist()
    assert summary.failed == 1 and "duplicated slice position" in failure["message"]


def test_bids_tree_subjects_times_labels_and_no_header_text(tmp_path, store):
    affine = _oblique_affine()
    volumes = {(s, t): _volume(10 * s + t) for s in (1, 2) for t in (1, 2, 3)}
    root = _bids(tmp_path / "bids", volumes, affine)
    # free text in the NIfTI header must never reach the store
    import nibabel as nib

    path = root / "sub-01" / "ses-01" / "anat" / "sub-01_ses-01_T1w.nii.gz"
    image = nib.load(path)
    image.header["descrip"] = b"Doe^John MRN 12345"
    image.header["aux_file"] = b"Doe-aux"
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), image.affine, image.header), path)
    summary = ingest_dataset(store, "legs", root=root, progress=False)
    assert summary.failed == 0 and summary.scans_rows == 6 * 6  # 6 volumes x 6 slices; sidecars are no inputs
    rows = read_volumes(store, "legs").to_pylist()
    assert len(rows) == 6 and {r["label"] for r in rows} == {"a", "b"}
    assert sorted({(r["time_index"], r["days_from_baseline"]) for r in rows}) == [(0, 0), (2, 14), (4, 28)]
    assert len({r["subject"] for r in rows}) == 2 and not any(r["subject"].startswith("sub-") for r in rows)
    pairs = read_volume_pairs(store, "legs")
    assert pairs.num_rows == 12  # per subject and mode: self pair + 2 comparisons
    assert set(pairs.column("source_sha256").to_pylist()) and None not in pairs.column("source_sha256").to_pylist()
    for table in ("scans", "volumes", "volume_pairs", "pairs", "failures", "datasets"):
        if table == "failures":
            continue
        text = json.dumps(read_table(store, table).to_pylist(), default=str)
        for secret in ("Doe", "12345", "2023-01", "sub-01"):
            assert secret not in text, (table, secret)


def test_nifti_files_listed_in_a_manifest_are_volumes(tmp_path, store):
    affine = _oblique_affine()
    write_nifti(tmp_path / "data" / "a0.nii", _volume(7), affine)
    write_nifti(tmp_path / "data" / "a1.nii.gz", _volume(8), affine)
    (tmp_path / "data" / "manifest.csv").write_text(
        "path,subject,date,label\na0.nii,P-77,2024-01-01,x\na1.nii.gz,P-77,2024-01-22,y\n")
    summary = ingest_dataset(store, "man", root=tmp_path / "data", progress=False)
    assert (summary.failed, summary.scans_rows) == (0, 12)
    rows = read_volumes(store, "man").to_pylist()
    assert [(r["time_index"], r["label"]) for r in rows] == [(0, "x"), (3, "y")]
    assert read_volume_pairs(store, "man", "relative").num_rows == 2  # self pair + week 3 vs week 0


def test_a_4d_nifti_is_refused_with_advice(tmp_path):
    import nibabel as nib

    path = tmp_path / "four.nii"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 2), np.int16), np.eye(4)), path)
    with open(path, "rb") as handle, pytest.raises(DecodeError, match="4-D NIfTI.*Split it"):
        read_nifti(handle, name="four.nii")


# ------------------------------------------------------------------------------------------ slice policies


class _MeanMax(Extractor):
    """A scan extractor for the tests: the mean and max of each image."""

    name = "test_meanmax"

    def units(self, store, dataset):
        return scan_units(store, dataset)

    def output_schema(self):
        return pa.schema([("scan_id", pa.string()), ("source_sha256", pa.string()), ("mean", pa.float32()),
                          ("max", pa.float32())])

    def transform(self, store, pending) -> Iterator[ExtractedBatch]:
        reader = PixelReader(store, pending.column("dataset")[0].as_py())
        rows = []
        for unit in pending.to_pylist():
            pixels = reader.read(unit["path"], unit["frame"])
            rows.append({"scan_id": unit["scan_id"], "source_sha256": unit["source_sha256"],
                         "mean": float(pixels.mean()), "max": float(pixels.max())})
        yield ExtractedBatch(pa.Table.from_pylist(rows, schema=self.output_schema()))


def test_policies_parse_and_refuse_nonsense():
    assert parse_slice_policy(None).kind == "all"
    assert parse_slice_policy("every:4").spec == "every:4" and parse_slice_policy("every:4").tag == "every4"
    assert parse_slice_policy("central:5").keeps(17, 40) and not parse_slice_policy("central:5").keeps(22, 40)
    assert [k for k in range(40) if parse_slice_policy("central:5").keeps(k, 40)] == [17, 18, 19, 20, 21]
    assert parse_slice_policy("mip:axial").tag == "mip_axial"
    for bad in ("every:0", "central", "mip:oblique", "half"):
        with pytest.raises(ParameterError, match="'slices' parameter"):
            parse_slice_policy(bad)
    affine = _oblique_affine()
    assert projection_axis(affine, "axial") == 0 and projection_axis(affine, "k") == 0
    assert projection_axis(np.diag([1.0, 1.0, 1.0, 1.0])[[0, 2, 1, 3]], "axial") == 1  # j points up (coronal slices)
    volume = _volume(5)
    np.testing.assert_array_equal(maximum_projection(volume, affine, "axial"), volume.max(axis=0))


def test_every_central_and_mip_give_the_expected_rows(tmp_path, store):
    affine = _oblique_affine()
    volumes = {(s, t): _volume(10 * s + t, shape=(10, 8, 9)) for s in (1, 2) for t in (1, 2)}
    _bids(tmp_path / "bids", volumes, affine)
    ingest_dataset(store, "legs", root=tmp_path / "bids", progress=False)
    every = with_slices(_MeanMax(), "every:4")
    assert every.table_name() == "test_meanmax_every4" and every.config()["slices"] == "every:4"
    assert run_extraction(every, store, dataset="legs", progress=False).written == 4 * 3  # slices 0, 4, 8
    assert run_extraction(with_slices(_MeanMax(), "central:5"), store, dataset="legs", progress=False).written == 4 * 5
    mip = with_slices(_MeanMax(), "mip:axial")
    assert run_extraction(mip, store, dataset="legs", progress=False).written == 4
    assert json.loads(table_kv_metadata(store, "test_meanmax_mip_axial")["chronofeat.params"])["slices"] == "mip:axial"
    maxima = sorted(read_table(store, "test_meanmax_mip_axial").column("max").to_pylist())
    assert maxima == sorted(float(v.max()) for v in volumes.values())
    means = sorted(read_table(store, "test_meanmax_mip_axial").column("mean").to_pylist())
    np.testing.assert_allclose(means, sorted(float(v.max(axis=0).mean()) for v in volumes.values()), rtol=1e-5)
    # a rerun computes nothing; stable unit ids
    assert run_extraction(mip, store, dataset="legs", progress=False).written == 0
    with pytest.raises(ParameterError, match="pairs"):
        with_slices(_PairsOnly(), "mip:axial")


@pytest.mark.slow
def test_cli_extract_slices_every_k_on_slice_pairs_and_refuses_a_bad_policy(tmp_path, store, capsys):
    import cli

    volumes = {(s, t): _volume(10 * s + t, shape=(8, 8, 9)) for s in (1, 2) for t in (1, 2)}
    _bids(tmp_path / "bids", volumes, _oblique_affine())
    assert cli.main(["ingest", "--dataset", "legs", "--root", str(tmp_path / "bids"), "--store", str(store.root)]) == 0
    code = cli.main(["extract", "--dataset", "legs", "--extractor", "diffstats", "--reference", "absolute",
                     "--slices", "every:4", "--store", str(store.root)])
    assert code == 0
    table = read_table(store, "diffstats_absolute_every4")
    # per subject: slices 0 and 4 of (ses-01 self pair, ses-02 vs ses-01) -> 4 pairs; 2 subjects
    assert table.num_rows == 8
    assert json.loads(table_kv_metadata(store, "diffstats_absolute_every4")["chronofeat.params"])["slices"] == "every:4"
    assert cli.main(["extract", "--dataset", "legs", "--extractor", "diffstats", "--slices", "every:0",
                     "--store", str(store.root)]) == 2
    assert "'slices' parameter" in capsys.readouterr().err


class _PairsOnly(_MeanMax):
    name = "test_pairs"

    def key_column(self):
        return "pair_id"


# ------------------------------------------------------------------------------------------ demo


def test_tibia3d_demo_ingests_and_its_ground_truth_motion_holds(tmp_path):
    from scipy.ndimage import affine_transform

    store = open_store(tmp_path / "store")
    summary = ingest_dataset(store, "tibia3d", progress=False)
    assert (summary.failed, summary.scans_rows) == (0, 24 * 40)
    volumes = read_volumes(store, "tibia3d")
    assert volumes.num_rows == 24 and read_volume_pairs(store, "tibia3d").num_rows == 48
    truth = json.loads((store.datasets_dir / "tibia3d" / "ground_truth.json").read_text())
    # the stable subject that moved most between ses-01 and ses-02
    def moved_by(name):
        session = truth["subjects"][name]["sessions"]["ses-02"]
        return np.abs(session["rotation_deg"]).sum() + np.abs(session["translation_mm"]).sum()

    name = max((n for n, t in truth["subjects"].items() if t["label"] == "stable"), key=moved_by)
    subject = Pseudonymizer(load_secret(store)).subject(name)
    rows = sorted((r for r in volumes.to_pylist() if r["subject"] == subject), key=lambda r: r["time_index"])
    first, second = rows[:2]
    reader = VolumeReader(store)
    a, b = reader.load(first["volume_id"]), reader.load(second["volume_id"])
    np.testing.assert_allclose(a.affine, truth["affine"], atol=1e-5)
    # the recorded motion of ses-02 maps it back onto ses-01 (to noise level); no motion does not
    motion = np.asarray(truth["subjects"][name]["sessions"]["ses-02"]["baseline_to_session"])
    swap = np.eye(4)[[2, 1, 0, 3]]  # (i, j, k) <-> (z, y, x)
    voxel = swap @ np.linalg.inv(a.affine) @ motion @ a.affine @ swap
    moved = affine_transform(b.array.astype(np.float32), voxel[:3, :3], voxel[:3, 3], order=1)
    inner = (slice(4, -4), slice(6, -6), slice(6, -6))
    residual = np.abs(moved - a.array)[inner]
    unmoved = float(np.abs(b.array.astype(np.float32) - a.array)[inner].mean())
    # median: the noise of two scans (sigma 30 each -> median |diff| ~ 29); mean: edges add interpolation error
    assert float(np.median(residual)) < 35.0 and float(residual.mean()) < 0.3 * unmoved, (residual.mean(), unmoved)
