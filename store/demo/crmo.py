"""Synthetic stand-in for the CRMO poster's data: before/after knee MRI pairs (seed 002).

45 fake patients, each scanned 2 or 3 times months apart; each study holds 3 coronal STIR-like slices
of the knee (femur, tibia, fibula, marrow, muscle, fat) with a bright marrow lesion. Between two
consecutive studies the lesion shrinks a lot (``improved``), stays about the same (``persisted``) or
grows (``regressed``). ``pairs.csv`` lists 90 before/after image pairs, 30 per class. Nuisance: the
leg moves and rotates a little between studies, the receiver gain and a coil shading change, the
slices sit at slightly different depths, and the noise is Rician.

Files: ``P001/study_1/slice_1.dcm`` ... (MR Image Storage, 224x224, 12 bits stored), ``manifest.csv``
(``path,label``; scans carry no label of their own here) and ``pairs.csv``
(``reference_path,comparison_path,label``).
"""

from __future__ import annotations

import csv
import datetime as _dt
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.uid import MRImageStorage
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

from store.demo import dicom_writer as dicom
from store.demo.drawing import sample, soft

__all__ = ["generate", "N_PATIENTS", "N_PAIRS", "LABELS", "SLICES_PER_STUDY", "IMAGE_SHAPE"]

N_PATIENTS = 45
N_THREE_STUDIES = 30  # the other 15 patients have two studies
SLICES_PER_STUDY = 3
IMAGE_SHAPE = (224, 224)
LABELS = ("improved", "persisted", "regressed")
N_PAIRS = 90
_EXTRA_PAIRS_PER_LABEL = 5  # study transitions that contribute a second (outer-slice) image pair
_SEED = 2002
_PIXEL_MM = 0.9
_SLICE_GAP = 4.0  # pixels of depth between adjacent slices (used for the lesion's 3-D extent)
_SLICE_MM = 4.0

# Lesion radius / intensity multipliers per transition label: ranges chosen so that the classes overlap
# a little once noise, gain and slice position are added, but stay clearly separable.
_RADIUS_FACTOR = {"improved": (0.35, 0.55), "persisted": (0.88, 1.12), "regressed": (1.6, 2.1)}
_INTENSITY_FACTOR = {"improved": (0.6, 0.8), "persisted": (0.92, 1.08), "regressed": (1.0, 1.15)}


@dataclass
class _Patient(dicom.DemoPerson):
    radii: list[float]
    intensities: list[float]
    anatomy: dict[str, float]
    muscle_texture: np.ndarray
    marrow_texture: np.ndarray


def generate(root: Path, *, progress: bool = True) -> None:
    """Write the whole crmo demo (DICOM files, ``manifest.csv``, ``pairs.csv``) into ``root``."""
    rng = np.random.default_rng(_SEED)
    patients, pairs = _plan(rng)
    manifest: list[tuple[str, str]] = []
    for patient in tqdm(patients, desc="demo crmo", unit="patient", disable=not progress, leave=False):
        for study, day in enumerate(patient.dates):
            pose = _study_pose(rng)
            for k in range(SLICES_PER_STUDY):
                z = (k - 1) * _SLICE_GAP + pose["dz"]
                image = _render(patient, study, z, pose, rng)
                rel = _image_path(patient.index, study, k)
                _write(root / rel, image, patient, study, day, k, z)
                manifest.append((rel, ""))
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "label"])
        writer.writerows(manifest)
    with open(root / "pairs.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["reference_path", "comparison_path", "label"])
        for patient_index, study, slice_index, label in pairs:
            writer.writerow(
                [
                    _image_path(patient_index, study, slice_index),
                    _image_path(patient_index, study + 1, slice_index),
                    label,
                ]
            )


def _image_path(patient_index: int, study: int, slice_index: int) -> str:
    return f"P{patient_index:03d}/study_{study + 1}/slice_{slice_index + 1}.dcm"


def _plan(rng: np.random.Generator) -> tuple[list[_Patient], list[tuple[int, int, int, str]]]:
    """Patients with their lesion trajectories, and the labelled pairs (patient, study, slice, label)."""
    n_studies = np.array([3] * N_THREE_STUDIES + [2] * (N_PATIENTS - N_THREE_STUDIES))
    rng.shuffle(n_studies)
    steps = [(p, s) for p in range(N_PATIENTS) for s in range(n_studies[p] - 1)]
    per_label = len(steps) // len(LABELS)
    step_labels = np.array([lab for lab in LABELS for _ in range(per_label)])
    rng.shuffle(step_labels)
    label_of = {step: str(lab) for step, lab in zip(steps, step_labels, strict=False)}  # a remainder stays unlabelled

    pairs: list[tuple[int, int, int, str]] = [(p, s, 1, label_of[(p, s)]) for p, s in steps]
    for lab in LABELS:
        candidates = [step for step in steps if label_of[step] == lab]
        chosen = rng.choice(len(candidates), size=_EXTRA_PAIRS_PER_LABEL, replace=False)
        for c in sorted(chosen):
            p, s = candidates[c]
            pairs.append((p, s, int(rng.choice([0, 2])), lab))
    pairs.sort()

    patients = []
    for p in range(N_PATIENTS):
        labels = [label_of[(p, s)] for s in range(n_studies[p] - 1)]
        patients.append(_make_patient(p + 1, labels, rng))
    return patients, [(p + 1, s, k, lab) for p, s, k, lab in pairs]


def _make_patient(index: int, labels: list[str], rng: np.random.Generator) -> _Patient:
    radius_steps = [rng.uniform(*_RADIUS_FACTOR[lab]) for lab in labels]
    cumulative = np.cumprod([1.0, *radius_steps])
    low, high = max(5.0, 4.0 / cumulative.min()), min(24.0, 26.0 / cumulative.max())
    r0 = rng.uniform(low, high) if low < high else math.sqrt(low * high)
    radii = list(r0 * cumulative)
    intensity = [rng.uniform(620.0, 850.0)]
    for lab in labels:
        intensity.append(float(np.clip(intensity[-1] * rng.uniform(*_INTENSITY_FACTOR[lab]), 330.0, 950.0)))

    baseline = _dt.date(2015, 1, 5) + _dt.timedelta(days=int(rng.integers(0, 4 * 365)))
    dates = [baseline]
    for _ in labels:
        dates.append(dates[-1] + _dt.timedelta(days=int(rng.integers(120, 271))))
    birth = baseline - _dt.timedelta(days=int(rng.integers(7 * 365, 15 * 365)))
    letters = "".join(rng.choice(list("ABCDEFGHJKLMNPQRSTUVWXYZ"), size=3))

    femur_site = bool(rng.random() < 0.55)
    anatomy = {
        "xc": rng.uniform(-6, 6),
        "yj": rng.uniform(-10, 10),
        "leg": rng.uniform(74, 88),
        "fat": rng.uniform(4, 8),
        "fs": rng.uniform(14, 18),
        "fc": rng.uniform(32, 37),
        "ts": rng.uniform(13, 17),
        "tp": rng.uniform(32, 37),
        "ct": rng.uniform(2.4, 3.4),
        "muscle": rng.uniform(230, 280),
        "marrow": rng.uniform(110, 150),
        "femur_site": float(femur_site),
    }
    width = anatomy["fc"] if femur_site else anatomy["tp"]
    anatomy["lx"] = anatomy["xc"] + rng.uniform(-0.35, 0.35) * width
    anatomy["ly"] = anatomy["yj"] + (-rng.uniform(20, 34) if femur_site else rng.uniform(16, 30))

    field = IMAGE_SHAPE[0] + 64
    muscle = gaussian_filter(rng.standard_normal((field, field)), sigma=(6.0, 1.6))
    marrow = gaussian_filter(rng.standard_normal((field, field)), sigma=2.5)
    return _Patient(
        **dicom.person_fields(index, f"CRMO-{index:04d}-{letters}", f"Synthetic^Patient{index:04d}", birth, dates, rng),
        radii=radii,
        intensities=intensity,
        anatomy=anatomy,
        muscle_texture=(muscle / muscle.std()).astype(np.float32),
        marrow_texture=(marrow / marrow.std()).astype(np.float32),
    )


def _study_pose(rng: np.random.Generator) -> dict[str, float]:
    return {
        "tx": rng.uniform(-6, 6),
        "ty": rng.uniform(-6, 6),
        "angle": math.radians(rng.uniform(-4, 4)),
        "gain": rng.uniform(0.9, 1.1),
        "shade": rng.uniform(-0.08, 0.08),
        "dz": rng.uniform(-1.2, 1.2),
    }


def _soft(distance: np.ndarray) -> np.ndarray:
    return soft(distance, 0.7)  # this demo's edges are a little softer than the others'


def _sigmoid(value: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-value))


def _render(patient: _Patient, study: int, z: float, pose: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    a = patient.anatomy
    rows, cols = IMAGE_SHAPE
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    xx -= cols / 2.0 + pose["tx"]
    yy -= rows / 2.0 + pose["ty"]
    cos, sin = math.cos(pose["angle"]), math.sin(pose["angle"])
    xa, ya = cos * xx + sin * yy, -sin * xx + cos * yy  # anatomical coordinates of each pixel

    depth = 1.0 - 0.006 * z * z  # bones are narrower away from the central slice
    xc, yj = a["xc"], a["yj"]
    rel = xa - xc
    leg_half = a["leg"] * (0.97 + 0.03 * depth) + 8.0 * np.exp(-(((ya - yj) / 40.0) ** 2))
    leg = _soft(leg_half - np.abs(xa))
    inner_leg = _soft(leg_half - a["fat"] - np.abs(xa))

    muscle_tex = sample(patient.muscle_texture, xa + 7.0 * z, ya)
    marrow_tex = sample(patient.marrow_texture, xa + 7.0 * z, ya)
    image = (
        260.0 * (leg - inner_leg)
        + 90.0 * np.clip(leg - inner_leg - 0.6, 0, 1)
        + (a["muscle"] + 30.0 * muscle_tex) * inner_leg
    )

    def bone(half_width: np.ndarray, end: np.ndarray, downward: bool) -> tuple[np.ndarray, np.ndarray]:
        ct = a["ct"]
        along = (end - ya) if downward else (ya - end)
        outer = _soft(half_width - np.abs(rel)) * _soft(along)
        inner = _soft(half_width - ct - np.abs(rel)) * _soft(along - ct)
        return outer, inner

    femur_w = depth * (a["fs"] + (a["fc"] - a["fs"]) * _sigmoid((ya - (yj - 45.0)) / 9.0))
    femur_end = yj - 4.0 - 10.0 * (rel / a["fc"]) ** 4 - 4.0 * np.exp(-((rel / 6.0) ** 2))
    tibia_w = depth * (a["ts"] + (a["tp"] - a["ts"]) * _sigmoid(((yj + 40.0) - ya) / 9.0))
    tibia_end = yj + 4.0 + 3.0 * (rel / a["tp"]) ** 2
    f_out, f_in = bone(femur_w, femur_end, True)
    t_out, t_in = bone(tibia_w, tibia_end, False)
    fib_x = xc + a["tp"] * depth + 2.0
    fib_out = _soft(5.5 - np.abs(xa - fib_x)) * _soft(ya - (yj + 24.0))
    fib_in = _soft(3.0 - np.abs(xa - fib_x)) * _soft(ya - (yj + 26.0))

    marrow = a["marrow"] + 22.0 * marrow_tex
    for outer, inner in ((f_out, f_in), (t_out, t_in), (fib_out, fib_in)):
        image = image * (1.0 - outer) + 30.0 * (outer - inner) + marrow * inner
    physis = np.exp(-(((ya - (yj - 22.0)) / 1.2) ** 2)) * f_in + np.exp(-(((ya - (yj + 20.0)) / 1.2) ** 2)) * t_in
    image += 150.0 * physis
    fluid = np.exp(-(((ya - yj) / 1.6) ** 2)) * _soft(a["fc"] * depth - np.abs(rel)) * (1.0 - f_out) * (1.0 - t_out)
    image += 380.0 * fluid

    radius = patient.radii[study]
    in_plane = math.sqrt(max(radius * radius - (0.8 * z) ** 2, 0.0))
    if in_plane > 0.5:
        q = ((xa - a["lx"]) / in_plane) ** 2 + ((ya - a["ly"]) / (0.8 * in_plane)) ** 2
        lesion = np.exp(-(q**2)) * (0.85 + 0.12 * marrow_tex)
        host = f_in if a["femur_site"] else t_in
        image += (patient.intensities[study] - a["marrow"]) * lesion * host

    shading = 1.0 + pose["shade"] * (xx / (cols / 2.0))
    signal = image * pose["gain"] * shading
    sigma = 16.0
    real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    return np.sqrt(real * real + imag * imag)  # Rician magnitude noise


def _write(path: Path, image: np.ndarray, patient: _Patient, study: int, day: _dt.date, k: int, z: float) -> None:
    rows, cols = IMAGE_SHAPE
    slice_location = round(float(z) * _SLICE_MM / _SLICE_GAP, 2)  # includes the study's depth jitter
    attributes = {
        "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"],
        **dicom.study_attributes(
            patient, day, times=("093000", "094500", "094500"), accession=f"ACC{patient.index:03d}{study + 1}",
            modality="MR", institution="Synthetic Demo Hospital",
            descriptions=("WB-MRI CRMO follow-up (synthetic)", "COR STIR KNEE"), birth_date=patient.birth_date,
            sex=patient.sex,
        ),
        "BodyPartExamined": "KNEE",
        **dicom.mr_attributes("IR", thickness="3.5", repetition="4500", echo="45", echo_train=12,
                        extra={"SpacingBetweenSlices": str(_SLICE_MM), "InversionTime": "160"}),
        **dicom.series_attributes(
            *(dicom.demo_uid("crmo", patient.index, what, study) for what in ("study", "series", "frame")),
            study_id=f"{study + 1}", series=3, instance=k + 1,
        ),
        **dicom.plane_attributes([-cols / 2 * _PIXEL_MM, slice_location, rows / 2 * _PIXEL_MM], [1, 0, 0, 0, 0, -1],
                           slice_location, _PIXEL_MM),
        "WindowCenter": "420", "WindowWidth": "900",
    }
    uid = dicom.demo_uid("crmo", patient.index, "image", study, k)
    dicom.write_image(path, dicom.to_uint16(image, bits_stored=12), attributes, sop_class_uid=MRImageStorage,
                      sop_instance_uid=uid)

