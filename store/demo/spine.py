"""Synthetic stand-in for the longitudinal spine MRI data: vertebral-body crops over visits (seed 001).

40 fake subjects scanned at 2 or 3 visits 4-6 years apart. Each visit gives seven 64x64 sagittal
T2-like crops, one per vertebral body T12, L1..L5, S1, each showing the body with the discs above and
below and the neighbouring vertebrae and spinal canal. Identity is learnable: every subject has its own
vertebral shape (aspect ratio, corner rounding, endplate concavity, wedging), marrow brightness and
texture, and sometimes a bright haemangioma-like spot, all kept across visits; each level has its own
size (growing caudally) and S1 its sacral shape. Each crop is labelled with the grade (``grade_1`` ..
``grade_4``, Pfirrmann-like) of the disc below its vertebral body (for S1, the L5-S1 disc above it): a
higher grade means a lower, darker disc, and grades tend to worsen from visit to visit. Nuisance: pose
jitter (rotation, shift, scale), a per-visit receiver gain, slight ageing of the bone, Rician noise.

Files: ``S001/visit_1/L3.dcm`` ... (MR Image Storage, 12 bits stored) and ``manifest.csv`` with columns
``path,label,level``.
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

__all__ = ["generate", "N_SUBJECTS", "LEVELS", "GRADES", "IMAGE_SHAPE", "VISIT_RANGE"]

N_SUBJECTS = 40
LEVELS = ("T12", "L1", "L2", "L3", "L4", "L5", "S1")
GRADES = ("grade_1", "grade_2", "grade_3", "grade_4")
IMAGE_SHAPE = (64, 64)
VISIT_RANGE = (2, 3)
_SEED = 2001
_PIXEL_MM = 1.0
# Mean baseline grade of the discs T11-T12, T12-L1, L1-L2, ..., L5-S1 (lower discs degenerate more).
_DISC_BASE = (1.0, 1.05, 1.2, 1.4, 1.65, 1.95, 2.1)
_DISC_HEIGHT = {1: 8.5, 2: 6.8, 3: 5.0, 4: 3.2}
_NUCLEUS_SIGNAL = {1: 900.0, 2: 640.0, 3: 390.0, 4: 200.0}


@dataclass
class _Subject(dicom.DemoPerson):
    grades: np.ndarray  # (visits, 7 discs): disc d lies above vertebral body LEVELS[d]
    shape: dict[str, float]
    spots: dict[int, tuple[float, float, float]]  # level index -> (u, v, radius) of a bright spot
    texture: np.ndarray


def generate(root: Path, *, progress: bool = True) -> None:
    """Write the whole spine demo (DICOM files and ``manifest.csv``) into ``root``."""
    rng = np.random.default_rng(_SEED)
    subjects = [_make_subject(i + 1, rng) for i in range(N_SUBJECTS)]
    manifest: list[tuple[str, str, str]] = []
    for subject in tqdm(subjects, desc="demo spine", unit="subject", disable=not progress, leave=False):
        for visit, day in enumerate(subject.dates):
            gain = rng.uniform(0.93, 1.07)
            for level_index, level in enumerate(LEVELS):
                image = _render(subject, visit, level_index, gain, rng)
                rel = f"S{subject.index:03d}/visit_{visit + 1}/{level}.dcm"
                _write(root / rel, image, subject, visit, day, level_index)
                manifest.append((rel, GRADES[_label_grade(subject, visit, level_index) - 1], level))
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "label", "level"])
        writer.writerows(manifest)


def _label_grade(subject: _Subject, visit: int, level_index: int) -> int:
    """Grade of the disc below the body (the L5-S1 disc above it for S1)."""
    disc_below = level_index + 1 if level_index < len(LEVELS) - 1 else level_index
    return int(subject.grades[visit, disc_below])


def _make_subject(index: int, rng: np.random.Generator) -> _Subject:
    n_visits = int(rng.integers(VISIT_RANGE[0], VISIT_RANGE[1] + 1))
    baseline = _dt.date(1999, 1, 4) + _dt.timedelta(days=int(rng.integers(0, 5 * 365)))
    dates = [baseline]
    for _ in range(n_visits - 1):
        dates.append(dates[-1] + _dt.timedelta(days=int(rng.integers(4 * 365, 6 * 365))))
    birth = baseline - _dt.timedelta(days=int(rng.integers(40 * 365, 60 * 365)))

    propensity = rng.normal(0.0, 0.5)
    grades = np.empty((n_visits, len(_DISC_BASE)), dtype=int)
    noise = rng.normal(0.0, 0.45, len(_DISC_BASE))
    grades[0] = np.clip(np.rint(np.array(_DISC_BASE) + propensity + noise), 1, 4)
    for v in range(1, n_visits):
        step = (rng.random(len(_DISC_BASE)) < 0.5).astype(int) + (rng.random(len(_DISC_BASE)) < 0.06)
        grades[v] = np.minimum(grades[v - 1] + step, 4)

    spots = {}
    for level_index in range(len(LEVELS)):
        if rng.random() < 0.3:
            spots[level_index] = (rng.uniform(-0.5, 0.5), rng.uniform(-0.45, 0.45), rng.uniform(2.0, 3.5))
    texture = gaussian_filter(rng.standard_normal((len(LEVELS), 96, 96)), sigma=(0, 1.6, 1.6))
    texture /= texture.std(axis=(1, 2), keepdims=True)
    letters = "".join(rng.choice(list("ABCDEFGHJKLMNPQRSTUVWXYZ"), size=3))
    return _Subject(
        **dicom.person_fields(index, f"SPN-{index:04d}-{letters}", f"Synthetic^Subject{index:04d}", birth, dates, rng),
        grades=grades,
        shape={
            "height": rng.uniform(0.9, 1.1),
            "aspect": rng.uniform(0.86, 1.16),
            "power": rng.uniform(2.6, 5.0),
            "concavity": rng.uniform(0.3, 2.6),
            "wedge": rng.uniform(-1.6, 1.6),
            "marrow": rng.uniform(360.0, 640.0),
            "texture": rng.uniform(25.0, 60.0),
            "sacral_tilt": math.radians(rng.uniform(18.0, 34.0)),
            "canal": rng.uniform(5.0, 9.0),
        },
        spots=spots,
        texture=texture.astype(np.float32),
    )


def _body_mask(x: np.ndarray, y: np.ndarray, half_w, half_h: float, shape: dict[str, float]) -> np.ndarray:
    """Soft mask of a vertebral body centred at the origin: a superellipse with concave, wedged endplates."""
    xn = np.clip(np.abs(x) / half_w, 0.0, 4.0)
    h = half_h - shape["concavity"] * (1.0 - np.clip(xn, 0, 1) ** 2) + shape["wedge"] * (x / half_w)
    yn = np.abs(y) / np.maximum(h, 1.0)
    level = xn ** shape["power"] + yn ** shape["power"]
    return soft((1.0 - level) * np.minimum(half_w, half_h) / shape["power"], 0.5)


def _render(subject: _Subject, visit: int, level_index: int, gain: float, rng: np.random.Generator) -> np.ndarray:
    s = subject.shape
    rows, cols = IMAGE_SHAPE
    angle = math.radians(rng.uniform(-6.0, 6.0))
    scale = rng.uniform(0.96, 1.04)
    tx, ty = rng.uniform(-3.0, 3.0, size=2)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    xx = (xx - cols / 2.0 - tx) / scale
    yy = (yy - rows / 2.0 - ty) / scale
    cos, sin = math.cos(angle), math.sin(angle)
    x, y = cos * xx + sin * yy, -sin * xx + cos * yy  # x: anterior (-) to posterior (+); y: down

    ageing = 1.0 - 0.012 * visit

    def size(li: int) -> tuple[float, float]:
        half_h = (11.0 + 0.35 * li) * s["height"] * ageing
        half_w = (12.5 + 0.8 * li) * s["aspect"]
        return half_w, half_h

    def disc_height(disc: int, li: int) -> float:
        grade = int(subject.grades[visit, disc])
        return _DISC_HEIGHT[grade] * (1.0 + 0.04 * li)

    tissue = 230.0 + 25.0 * np.tanh(x / 10.0)
    image = tissue.copy()
    canal_x = size(level_index)[0] + 2.0
    canal = soft(x - canal_x) * soft(canal_x + s["canal"] - x)
    image = image * (1.0 - canal) + (820.0 - 300.0 * np.exp(-(((x - canal_x - s["canal"] / 2) / 1.5) ** 2))) * canal

    w0, h0 = size(level_index)
    sacrum = LEVELS[level_index] == "S1"
    # Body (0), neighbour above (-1) and neighbour below (+1), each with its disc in between.
    above_disc = level_index  # disc index above the body
    below_disc = level_index + 1 if not sacrum else None
    bodies = [(0.0, level_index)]
    d_up = disc_height(above_disc, level_index)
    wa, ha = size(max(level_index - 1, 0))
    bodies.append((-(h0 + d_up + ha), max(level_index - 1, 0)))
    discs = [(-(h0 + d_up / 2), above_disc, d_up, (w0 + wa) / 2)]
    if below_disc is not None:
        d_dn = disc_height(below_disc, level_index)
        wb, hb = size(min(level_index + 1, len(LEVELS) - 1))
        bodies.append((h0 + d_dn + hb, min(level_index + 1, len(LEVELS) - 1)))
        discs.append((h0 + d_dn / 2, below_disc, d_dn, (w0 + wb) / 2))

    for cy, disc, height, half_w in discs:
        grade = int(subject.grades[visit, disc])
        bulge = 0.8 * (grade - 1)
        annulus = soft(half_w + bulge - np.abs(x)) * soft(height / 2 + 1.0 - np.abs(y - cy))
        nucleus = np.exp(-((x / (0.55 * half_w)) ** 2 + ((y - cy) / max(0.35 * height, 0.8)) ** 2))
        image = image * (1.0 - annulus) + (260.0 + (_NUCLEUS_SIGNAL[grade] - 260.0) * nucleus) * annulus

    for cy, li in bodies:
        half_w, half_h = size(li)
        bx, by = x, y - cy
        if sacrum and cy >= 0.0:  # S1 leans forward like the sacrum and is narrower behind
            c, sn = math.cos(s["sacral_tilt"] * 0.5), math.sin(s["sacral_tilt"] * 0.5)
            bx, by = c * x + sn * (y - cy), -sn * x + c * (y - cy)
            half_w *= 1.0 + 0.08 * np.clip(-bx / half_w, -1, 1)
        outer = _body_mask(bx, by, half_w, half_h, s)
        inner = _body_mask(bx, by, half_w - 1.3, half_h - 1.3, s)
        field = sample(subject.texture[li], bx, by)
        marrow = s["marrow"] * (1.0 + 0.04 * visit) + s["texture"] * field
        spot = subject.spots.get(li)
        if spot is not None:
            u, v, radius = spot
            marrow = marrow + 320.0 * np.exp(-(((bx - u * half_w) ** 2 + (by - v * half_h) ** 2) / radius**2) ** 2)
        image = image * (1.0 - outer) + 90.0 * (outer - inner) + marrow * inner

    signal = image * gain
    sigma = 18.0
    real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    return np.sqrt(real * real + imag * imag)


def _write(path: Path, image: np.ndarray, subject: _Subject, visit: int, day: _dt.date, level_index: int) -> None:
    rows, cols = IMAGE_SHAPE
    level = LEVELS[level_index]
    attributes = {
        "ImageType": ["DERIVED", "SECONDARY"],
        **dicom.study_attributes(
            subject, day, times=("081500", "082000", "082000"), accession=f"SP{subject.index:03d}{visit + 1}",
            modality="MR", institution="Synthetic Demo Cohort",
            descriptions=("Lumbar spine MRI (synthetic)", f"SAG T2 vertebral body {level}"),
            birth_date=subject.birth_date, sex=subject.sex,
        ),
        "BodyPartExamined": "LSPINE",
        **dicom.mr_attributes("SE", thickness="4", repetition="3500", echo="100", echo_train=16),
        **dicom.series_attributes(
            dicom.demo_uid("spine", subject.index, "study", visit),
            dicom.demo_uid("spine", subject.index, "series", visit, level),
            dicom.demo_uid("spine", subject.index, "frame", visit),
            study_id=f"{visit + 1}", series=level_index + 1, instance=1,
        ),
        **dicom.plane_attributes(
            [0.0, -cols / 2 * _PIXEL_MM, -30.0 * level_index], [0, 1, 0, 0, 0, -1], 0.0, _PIXEL_MM
        ),
        "WindowCenter": "450", "WindowWidth": "900",
    }
    uid = dicom.demo_uid("spine", subject.index, "image", visit, level)
    dicom.write_image(path, dicom.to_uint16(image, bits_stored=12), attributes, sop_class_uid=MRImageStorage,
                      sop_instance_uid=uid)

