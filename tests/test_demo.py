"""The four synthetic demo datasets: deterministic, laid out as specified, real DICOM, real signal.

Every dataset is generated once per module into one store (and once more into a second store for the
determinism check); the tests read the files back with pydicom directly.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import re
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
)
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import store.demo as demo
from features.errors import DatasetError
from store.demo import COMPLETE_MARKER, DEMO_NAMES, DEMO_NOTICE, ensure_demo, is_demo
from store.demo import impc as impc_module
from store.layout import open_store


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    """All four demos generated once (~35 s): every test that takes this store is marked slow."""
    store = open_store(tmp_path_factory.mktemp("demo_store"))
    for name in DEMO_NAMES:
        ensure_demo(store, name, progress=False)
    return store


def _root(store, name: str) -> Path:
    return store.datasets_dir / name


def _manifest(root: Path) -> list[dict[str, str]]:
    with open(root / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _digests(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _headers(root: Path, rows: list[dict[str, str]]) -> dict[str, pydicom.Dataset]:
    return {row["path"]: pydicom.dcmread(root / row["path"], stop_before_pixels=True) for row in rows}


def _date(value: str) -> dt.date:
    return dt.datetime.strptime(value, "%Y%m%d").date()


def _check_files_and_phi(root: Path, rows: list[dict[str, str]], headers: dict[str, pydicom.Dataset]) -> None:
    """Manifest covers every .dcm file; PatientIDs never appear in paths or the manifest text."""
    on_disk = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.dcm"))
    assert sorted(row["path"] for row in rows) == on_disk
    manifest_text = (root / "manifest.csv").read_text()
    ids = {ds.PatientID for ds in headers.values()}
    for patient_id in ids:
        assert patient_id not in manifest_text
        assert not any(patient_id in path for path in on_disk)
    sop_uids = [ds.SOPInstanceUID for ds in headers.values()]
    assert len(set(sop_uids)) == len(sop_uids)


def _check_dicom(path: Path, *, sop_class: str, modality: str, photometric: str = "MONOCHROME2") -> pydicom.Dataset:
    """One file read back in full: Part-10 preamble, file meta, identity tags and 16-bit pixels."""
    assert path.read_bytes()[128:132] == b"DICM"
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.file_meta.MediaStorageSOPClassUID == sop_class == ds.SOPClassUID
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.Modality == modality
    assert ds.PhotometricInterpretation == photometric
    assert str(ds.PatientName).startswith("Synthetic^")
    assert re.fullmatch(r"[A-Z]{3,4}-\d{4}-[A-Z]{3}", ds.PatientID)
    assert re.fullmatch(r"\d{8}", ds.PatientBirthDate)
    assert _date(ds.PatientBirthDate) < _date(ds.StudyDate)
    assert ds.BitsAllocated == 16 and ds.PixelRepresentation == 0 and ds.SamplesPerPixel == 1
    assert "WindowCenter" in ds and "WindowWidth" in ds
    pixels = ds.pixel_array
    assert pixels.dtype == np.uint16 and pixels.shape == (ds.Rows, ds.Columns)
    assert pixels.std() > 0
    return ds


# ---------------------------------------------------------------- public API, determinism, resumption


def test_public_names_and_notices():
    assert DEMO_NAMES == ("crmo", "chronomid", "impc", "spine", "tibia3d")
    assert all(is_demo(name) for name in DEMO_NAMES)
    assert not is_demo("my_study") and not is_demo("CRMO")
    for name in DEMO_NAMES:
        notice = DEMO_NOTICE[name]
        assert "SYNTHETIC" in notice and name in notice and "\n" not in notice


def test_unknown_name_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="not a built-in demo dataset"):
        ensure_demo(open_store(tmp_path), "knees")


@pytest.mark.slow
def test_generation_is_deterministic_and_redoes_interrupted_runs(demo_store, tmp_path):
    other = open_store(tmp_path / "second")
    # Leftovers of interrupted generations: a partial temp folder and a final folder without marker.
    (other.datasets_dir / ".crmo.partial" / "P001").mkdir(parents=True)
    (other.datasets_dir / ".crmo.partial" / "P001" / "stale.dcm").write_bytes(b"half a file")
    (other.datasets_dir / "spine" / "S001").mkdir(parents=True)
    (other.datasets_dir / "spine" / "S001" / "junk.dcm").write_bytes(b"junk")
    for name in DEMO_NAMES:
        first = _digests(_root(demo_store, name))
        root = ensure_demo(other, name, progress=False)
        assert root == other.datasets_dir / name
        assert _digests(root) == first, f"demo {name!r} is not byte-identical across generations"
        assert (root / COMPLETE_MARKER).is_file()
    assert not (other.datasets_dir / ".crmo.partial").exists()


@pytest.mark.slow
def test_complete_dataset_is_returned_without_regenerating(demo_store, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a complete demo must not be generated again")

    monkeypatch.setattr(demo, "_generate", refuse)
    for name in DEMO_NAMES:
        assert ensure_demo(demo_store, name) == _root(demo_store, name)


# ---------------------------------------------------------------- crmo


@pytest.mark.slow
def test_crmo_layout_pairs_and_tags(demo_store):
    root = _root(demo_store, "crmo")
    rows = _manifest(root)
    headers = _headers(root, rows)
    _check_files_and_phi(root, rows, headers)

    studies = defaultdict(set)
    for path in headers:
        patient, study, _ = path.split("/")
        studies[patient].add(study)
    assert len(studies) == 45
    assert Counter(len(s) for s in studies.values()) == {3: 30, 2: 15}
    assert set(Counter(path.rsplit("/", 1)[0] for path in headers).values()) == {3}  # 3 slices per study

    with open(root / "pairs.csv", newline="") as handle:
        pairs = list(csv.DictReader(handle))
    assert list(pairs[0]) == ["reference_path", "comparison_path", "label"]
    assert Counter(p["label"] for p in pairs) == {"improved": 30, "persisted": 30, "regressed": 30}
    for pair in pairs:
        ref, cmp_ = headers[pair["reference_path"]], headers[pair["comparison_path"]]
        assert ref.PatientID == cmp_.PatientID
        assert ref.InstanceNumber == cmp_.InstanceNumber
        assert ref.StudyInstanceUID != cmp_.StudyInstanceUID
        gap = (_date(cmp_.StudyDate) - _date(ref.StudyDate)).days
        assert 90 <= gap <= 300  # months apart, before -> after

    for path, ds in headers.items():
        assert ds.SeriesDescription and ds.StudyDescription
        assert int(ds.InstanceNumber) == int(path[-5])
    ds = _check_dicom(root / pairs[0]["reference_path"], sop_class=MRImageStorage, modality="MR")
    assert (ds.Rows, ds.Columns) == (224, 224)
    slice_locations = [float(headers[f"P001/study_1/slice_{k}.dcm"].SliceLocation) for k in (1, 2, 3)]
    assert slice_locations == sorted(slice_locations)


@pytest.mark.slow
def test_crmo_lesion_change_orders_the_labels(demo_store):
    root = _root(demo_store, "crmo")
    with open(root / "pairs.csv", newline="") as handle:
        pairs = list(csv.DictReader(handle))

    def lesion_area(rel: str) -> int:
        return int((pydicom.dcmread(root / rel).pixel_array > 480).sum())  # well above muscle and noise

    change = defaultdict(list)
    for pair in pairs:
        ratio = (lesion_area(pair["comparison_path"]) + 20) / (lesion_area(pair["reference_path"]) + 20)
        change[pair["label"]].append(np.log(ratio))
    medians = {label: float(np.median(v)) for label, v in change.items()}
    assert medians["improved"] < medians["persisted"] < medians["regressed"]
    predicted_right = int(np.sum(np.asarray(change["improved"]) < -0.25))
    predicted_right += int(np.sum(np.abs(np.asarray(change["persisted"])) <= 0.25))
    predicted_right += int(np.sum(np.asarray(change["regressed"]) > 0.25))
    assert predicted_right / len(pairs) > 0.7


# ---------------------------------------------------------------- chronomid


@pytest.mark.slow
def test_chronomid_layout_weeks_and_tags(demo_store):
    root = _root(demo_store, "chronomid")
    rows = _manifest(root)
    headers = _headers(root, rows)
    _check_files_and_phi(root, rows, headers)

    label_of, weeks, slices, shapes = {}, defaultdict(set), defaultdict(int), set()
    for row in rows:
        mouse, week_dir, _ = row["path"].split("/")
        assert label_of.setdefault(mouse, row["label"]) == row["label"]
        weeks[mouse].add(int(week_dir.split("_")[1]))
        slices[(mouse, week_dir)] += 1
        ds = headers[row["path"]]
        shapes.add((int(ds.Rows), int(ds.Columns)))
    assert Counter(label_of.values()) == {"wild_type": 5, "pth": 5}
    full = {0, 1, 3, 4, 5, 6, 7, 8}
    short = [m for m, w in weeks.items() if w != full]
    assert len(short) == 1 and weeks[short[0]] == full - {8} and label_of[short[0]] == "pth"
    assert all(2 not in w for w in weeks.values())
    assert set(slices.values()) <= set(range(8, 13)) and len(set(slices.values())) > 2
    assert all(96 <= r <= 128 and 96 <= c <= 128 for r, c in shapes)
    assert len(shapes) > 10 and any(r != c for r, c in shapes)

    for mouse in weeks:
        first = _date(headers[f"{mouse}/week_0/slice_01.dcm"].StudyDate)
        for week in weeks[mouse]:
            ds = headers[f"{mouse}/week_{week}/slice_01.dcm"]
            assert _date(ds.StudyDate) == first + dt.timedelta(days=7 * week)
    for row in rows:
        ds = headers[row["path"]]
        assert int(ds.InstanceNumber) == int(row["path"][-6:-4])
        assert float(ds.RescaleIntercept) == -1024.0 and float(ds.RescaleSlope) == 1.0
    _check_dicom(root / rows[0]["path"], sop_class=CTImageStorage, modality="CT")


@pytest.mark.slow
def test_chronomid_pth_gains_bone_after_treatment(demo_store):
    root = _root(demo_store, "chronomid")
    bone = defaultdict(list)
    label_of = {}
    for row in _manifest(root):
        mouse, week_dir, _ = row["path"].split("/")
        week = int(week_dir.split("_")[1])
        if week not in (0, 1, 6, 7, 8):
            continue
        ds = pydicom.dcmread(root / row["path"])
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        bone[(mouse, week >= 6)].append(float((hu > 1000).sum()))  # cortical bone area in pixels
        label_of[mouse] = row["label"]
    ratio = {m: np.mean(bone[(m, True)]) / np.mean(bone[(m, False)]) for m in label_of}
    pth = [r for m, r in ratio.items() if label_of[m] == "pth"]
    wild = [r for m, r in ratio.items() if label_of[m] == "wild_type"]
    assert min(pth) > max(wild)
    assert min(pth) > 1.2 and max(wild) < 1.1


# ---------------------------------------------------------------- impc


def _check_impc_specimen(items: list[dict[str, str]], headers: dict[str, pydicom.Dataset]) -> bool:
    """One specimen's images: both views, one identity, study and label set; True when a view repeats."""
    views = Counter(headers[r["path"]].ViewPosition for r in items)
    assert set(views) == {"DV", "LAT"}
    for r in items:
        assert r["path"].split("/")[1].startswith(headers[r["path"]].ViewPosition + "_")
    assert len({headers[r["path"]].PatientID for r in items}) == 1
    assert len({headers[r["path"]].StudyDate for r in items}) == 1
    assert len({headers[r["path"]].StudyInstanceUID for r in items}) == 1
    assert len({(r["label"], r["labels"], r["level2"], r["level3"]) for r in items}) == 1
    return max(views.values()) > 1


def _check_impc_levels(r: dict[str, str]) -> None:
    """A specimen's label columns agree: labels = level2 + level3, level 3 under its level-2 parents."""
    assert r["label"] == r["level1"] in ("normal", "abnormal")
    level2 = r["level2"].split(";") if r["level2"] else []
    level3 = r["level3"].split(";") if r["level3"] else []
    assert r["labels"] == ";".join(level2 + level3)
    if r["level1"] == "normal":
        assert not level2 and not level3
        return
    assert set(level2) <= set(impc_module.LEVEL2) and set(level3) <= set(impc_module.LEVEL3)
    assert {impc_module.LEVEL3_PARENT[name] for name in level3} == set(level2)


@pytest.mark.slow
def test_impc_specimens_views_and_labels(demo_store):
    root = _root(demo_store, "impc")
    rows = _manifest(root)
    assert list(rows[0]) == ["path", "label", "labels", "level1", "level2", "level3"]
    headers = _headers(root, rows)
    _check_files_and_phi(root, rows, headers)

    by_specimen = defaultdict(list)
    for row in rows:
        by_specimen[row["path"].split("/")[0]].append(row)
    assert len(by_specimen) == 300
    n_multi = sum(_check_impc_specimen(items, headers) for items in by_specimen.values())
    assert 10 <= n_multi <= 100

    specimens = [items[0] for items in by_specimen.values()]
    abnormal = [r for r in specimens if r["level1"] == "abnormal"]
    assert 0.3 <= len(abnormal) / len(specimens) <= 0.4
    for r in specimens:
        _check_impc_levels(r)
    # Level-2 combinations in the proportions of the paper's Table 2 (1651 abnormal specimens there).
    combos = Counter(frozenset(r["level2"].split(";")) for r in abnormal)
    for combo, count in impc_module.TABLE2_COMBINATIONS:
        assert abs(combos[frozenset(combo)] - len(abnormal) * count / 1651) < 1.0
    level3_counts = Counter(name for r in abnormal for name in r["level3"].split(";"))
    assert set(level3_counts) == set(impc_module.LEVEL3) and min(level3_counts.values()) >= 8

    ds = _check_dicom(
        root / rows[0]["path"],
        sop_class=DigitalXRayImageStorageForPresentation,
        modality="DX",
        photometric="MONOCHROME1",
    )
    assert ds.PresentationLUTShape == "INVERSE" and (ds.Rows, ds.Columns) == (128, 96)


def _impc_features(root: Path) -> tuple[dict[str, np.ndarray], list[dict[str, str]]]:
    """First DV and first LAT image of each specimen: inverted, z-scored, 32x24 pixels."""
    first: dict[tuple[str, str], np.ndarray] = {}
    meta: dict[str, dict[str, str]] = {}
    for row in _manifest(root):
        specimen, name = row["path"].split("/")
        view = name.split("_")[0]
        if (specimen, view) in first:
            continue
        image = pydicom.dcmread(root / row["path"]).pixel_array.astype(np.float32)
        image = image.max() - image  # MONOCHROME1: make bone bright
        image = (image - image.mean()) / (image.std() + 1e-6)
        first[(specimen, view)] = cv2.resize(image, (24, 32), interpolation=cv2.INTER_AREA).ravel()
        meta[specimen] = row
    keys = sorted(meta)
    features = {view: np.array([first[(k, view)] for k in keys]) for view in ("DV", "LAT")}
    features["both"] = np.hstack([features["DV"], features["LAT"]])
    return features, [meta[k] for k in keys]


def _cv_auc(x: np.ndarray, y: np.ndarray) -> float:
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=2000))
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    scores = cross_val_predict(model, x, y, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, scores))


@pytest.mark.slow
def test_impc_abnormalities_are_visible_and_view_specific(demo_store):
    features, meta = _impc_features(_root(demo_store, "impc"))
    abnormal = np.array([r["level1"] == "abnormal" for r in meta], dtype=int)
    assert _cv_auc(features["both"], abnormal) > 0.7

    def has(name: str) -> np.ndarray:
        return np.array([name in r["labels"].split(";") for r in meta], dtype=int)

    # Kyphosis shows in the lateral view, rib fusion/missing ribs in the dorsoventral one.
    assert _cv_auc(features["LAT"], has("Thoracic")) > _cv_auc(features["DV"], has("Thoracic")) + 0.2
    assert _cv_auc(features["DV"], has("Ribs")) > _cv_auc(features["LAT"], has("Ribs")) + 0.05


# ---------------------------------------------------------------- spine


@pytest.mark.slow
def test_spine_subjects_levels_visits_and_grades(demo_store):
    root = _root(demo_store, "spine")
    rows = _manifest(root)
    assert list(rows[0]) == ["path", "label", "level"]
    headers = _headers(root, rows)
    _check_files_and_phi(root, rows, headers)

    visits = defaultdict(set)
    grade = {}
    for row in rows:
        subject, visit, name = row["path"].split("/")
        assert name == f"{row['level']}.dcm"
        assert headers[row["path"]].SeriesDescription.endswith(row["level"])
        visits[subject].add(visit)
        grade[(subject, int(visit.split("_")[1]), row["level"])] = int(row["label"].split("_")[1])
    assert len(visits) == 40 and {len(v) for v in visits.values()} == {2, 3}
    levels = ("T12", "L1", "L2", "L3", "L4", "L5", "S1")
    assert Counter(r["level"] for r in rows) == {level: len(rows) // 7 for level in levels}

    counts = Counter(r["label"] for r in rows)
    assert set(counts) == {"grade_1", "grade_2", "grade_3", "grade_4"}
    assert min(counts.values()) >= 0.1 * len(rows)
    worsened = 0
    for (subject, visit, level), g in grade.items():
        if (subject, visit + 1, level) in grade:
            assert grade[(subject, visit + 1, level)] >= g  # discs do not heal
            worsened += grade[(subject, visit + 1, level)] > g
    assert worsened >= 50

    for subject, names in visits.items():
        dates = [_date(headers[f"{subject}/visit_{v}/L3.dcm"].StudyDate) for v in range(1, len(names) + 1)]
        assert all((b - a).days >= 3 * 365 for a, b in zip(dates, dates[1:], strict=False))
    ds = _check_dicom(root / rows[0]["path"], sop_class=MRImageStorage, modality="MR")
    assert (ds.Rows, ds.Columns) == (64, 64)


@pytest.mark.slow
def test_spine_same_subject_crops_look_alike(demo_store):
    root = _root(demo_store, "spine")
    rows = _manifest(root)
    descriptor = {}
    for row in rows:
        image = pydicom.dcmread(root / row["path"]).pixel_array.astype(np.float32)
        histogram, _ = np.histogram(image[16:48, 12:52], bins=24, range=(0, 1200))
        descriptor[row["path"]] = histogram / histogram.sum()
    same, different, hits, queries = [], [], 0, 0
    for row in rows:
        subject, visit, _ = row["path"].split("/")
        others = [
            (float(np.abs(descriptor[row["path"]] - descriptor[o["path"]]).sum()), o["path"].startswith(subject + "/"))
            for o in rows
            if o["level"] == row["level"] and o["path"].split("/")[1] != visit
        ]
        same += [d for d, s in others if s]
        different += [d for d, s in others if not s]
        hits += min(others)[1]
        queries += 1
    assert np.mean(same) < 0.8 * np.mean(different)
    assert hits / queries > 0.12  # chance is about 1/40
