"""Synthetic stand-in for ChronoMID's data: weekly µCT-like tibia cross-sections (seed 000).

10 simulated female mice, 5 ``wild_type`` and 5 ``pth``, scanned weekly in weeks 0-8 with week 2
missing for every mouse and week 8 missing for one pth mouse (as in the paper). Each scan is 8-12
cross-sections along the tibia (slice k of one week sits at the same position as slice k of another:
cortical ring with a rounded-triangle outline, marrow with trabeculae near the knee, the fibula,
muscle). From week 4 on, PTH progressively thickens the cortex inwards, raises its density and adds
trabecular bone; wild type stays put. Nuisance: each week the leg is re-positioned (translation and
rotation), the operator crop changes the image size (96-128 px, not always square), the slice count
varies, and the scanner adds noise.

Files: ``M01/week_0/slice_01.dcm`` ... (CT Image Storage, HU = stored - 1024) and ``manifest.csv``
(``path,label`` with label ``wild_type`` or ``pth``).
"""

from __future__ import annotations

import csv
import datetime as _dt
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.uid import CTImageStorage
from scipy.ndimage import gaussian_filter
from scipy.special import ndtri
from tqdm import tqdm

from store.demo import dicom_writer as dicom
from store.demo.drawing import sample, soft

__all__ = ["generate", "N_MICE", "WEEKS", "LABELS", "SLICE_RANGE", "SIZE_RANGE", "TREATMENT_WEEK"]

N_MICE = 10
LABELS = ("wild_type", "pth")
WEEKS = (0, 1, 3, 4, 5, 6, 7, 8)  # week 2 was never recorded
TREATMENT_WEEK = 4
SLICE_RANGE = (8, 12)
SIZE_RANGE = (96, 128)
_MAX_SLICES = SLICE_RANGE[1]
_SEED = 2000
_STUDY_START = _dt.date(2016, 3, 7)
_PIXEL_MM = 0.02
_SLICE_MM = 0.25
_INTERCEPT = -1024.0


@dataclass
class _Mouse:
    index: int
    label: str
    patient_id: str
    patient_name: str
    birth_date: _dt.date
    weeks: tuple[int, ...]
    radius: float
    lobe_phase: float
    thickness: float
    cortex_hu: float
    trabecular: float
    offset: tuple[float, float]
    fibula_angle: float
    fields: np.ndarray  # one trabecular noise field per slice position


def generate(root: Path, *, progress: bool = True) -> None:
    """Write the whole chronomid demo (DICOM files and ``manifest.csv``) into ``root``."""
    rng = np.random.default_rng(_SEED)
    mice = _plan(rng)
    manifest: list[tuple[str, str]] = []
    for mouse in tqdm(mice, desc="demo chronomid", unit="mouse", disable=not progress, leave=False):
        for week in mouse.weeks:
            n_slices = int(rng.integers(SLICE_RANGE[0], SLICE_RANGE[1] + 1))
            rows = int(rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1))
            cols = rows if rng.random() < 0.3 else int(rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1))
            pose = {
                "tx": rng.uniform(-7, 7),
                "ty": rng.uniform(-7, 7),
                "angle": math.radians(rng.uniform(-5, 5)),
            }
            state = _week_state(mouse, week, rng)
            for k in range(n_slices):
                hu = _render(mouse, state, k, (rows, cols), pose, rng)
                rel = f"M{mouse.index:02d}/week_{week}/slice_{k + 1:02d}.dcm"
                _write(root / rel, hu, mouse, week, k)
                manifest.append((rel, mouse.label))
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "label"])
        writer.writerows(manifest)


def _plan(rng: np.random.Generator) -> list[_Mouse]:
    labels = np.array([LABELS[0]] * (N_MICE // 2) + [LABELS[1]] * (N_MICE - N_MICE // 2))
    rng.shuffle(labels)
    pth_indices = [i for i, lab in enumerate(labels) if lab == "pth"]
    short = int(rng.choice(pth_indices))  # the pth mouse whose final week is missing
    mice = []
    for i, label in enumerate(labels):
        index = i + 1
        letters = "".join(rng.choice(list("ABCDEFGHJKLMNPQRSTUVWXYZ"), size=3))
        fields = gaussian_filter(rng.standard_normal((_MAX_SLICES, 192, 192)), sigma=(0, 2.6, 2.6))
        fields /= fields.std(axis=(1, 2), keepdims=True)
        mice.append(
            _Mouse(
                index=index,
                label=str(label),
                patient_id=f"CMID-{index:04d}-{letters}",
                patient_name=f"Synthetic^Mouse{index:04d}",
                birth_date=_STUDY_START - _dt.timedelta(days=14 * 7 + int(rng.integers(-3, 4))),
                weeks=WEEKS[:-1] if i == short else WEEKS,
                radius=rng.uniform(25, 29),
                lobe_phase=rng.uniform(-0.4, 0.4),
                thickness=rng.uniform(3.6, 4.4),
                cortex_hu=rng.uniform(1450, 1650),
                trabecular=rng.uniform(0.22, 0.32),
                offset=(rng.uniform(-5, 5), rng.uniform(-5, 5)),
                fibula_angle=rng.uniform(0.5, 1.0),
                fields=fields.astype(np.float32),
            )
        )
    return mice


def _week_state(mouse: _Mouse, week: int, rng: np.random.Generator) -> dict[str, float]:
    """Bone parameters of one mouse in one week: PTH acts progressively from ``TREATMENT_WEEK``."""
    effect = float(np.clip((week - TREATMENT_WEEK + 1) / 5.0, 0.0, 1.0)) if mouse.label == "pth" else 0.0
    return {
        "growth": 1.0 + 0.004 * week,
        "thickness": mouse.thickness * (1.0 + 0.45 * effect) * rng.uniform(0.97, 1.03),
        "cortex_hu": mouse.cortex_hu + 150.0 * effect + rng.normal(0.0, 20.0),
        "trabecular": mouse.trabecular + 0.2 * effect,
    }


def _render(
    mouse: _Mouse,
    state: dict[str, float],
    k: int,
    shape: tuple[int, int],
    pose: dict[str, float],
    rng: np.random.Generator,
) -> np.ndarray:
    """HU image of slice ``k`` (0 = near the knee) of one mouse in one week."""
    rows, cols = shape
    z = k / (_MAX_SLICES - 1)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    xx -= cols / 2.0 + pose["tx"] + mouse.offset[0]
    yy -= rows / 2.0 + pose["ty"] + mouse.offset[1]
    cos, sin = math.cos(pose["angle"]), math.sin(pose["angle"])
    xa, ya = cos * xx + sin * yy, -sin * xx + cos * yy
    r = np.hypot(xa, ya)
    phi = np.arctan2(ya, xa)

    radius = mouse.radius * state["growth"] * (1.25 - 0.35 * z)
    outline = radius * (1.0 + 0.18 * (1.0 - 0.5 * z) * np.cos(3.0 * phi + mouse.lobe_phase))
    thickness = state["thickness"] * (0.75 + 0.45 * z)
    outer = soft(outline - r)
    inner = soft(outline - thickness - r)

    muscle = soft(radius + 26.0 - np.hypot(xa / 1.15, ya))
    hu = -1000.0 + 940.0 * soft(radius + 30.0 - np.hypot(xa / 1.15, ya)) + 100.0 * muscle

    field = sample(mouse.fields[k], xa, ya)
    density = state["trabecular"] * (1.0 - 0.75 * z)
    # Trabeculae as a strut network: the zero-crossings of a smooth random field, thickened until they
    # cover ``density`` of the marrow, denser towards the endosteum.
    near_cortex = np.clip(r / np.maximum(outline - thickness, 1.0), 0.0, 1.0)
    half_width = ndtri(0.5 + 0.5 * min(max(density, 1e-3), 0.95)) * (0.5 + 0.8 * near_cortex)
    trabeculae = soft((half_width - np.abs(field)) / 0.12, 1.0) * inner

    marrow_hu = 30.0 + 620.0 * trabeculae
    hu = hu * (1.0 - outer) + state["cortex_hu"] * (outer - inner) + marrow_hu * inner

    if z < 0.75:
        fib_dist = radius + 9.0 - 4.0 * z
        fx, fy = fib_dist * math.cos(mouse.fibula_angle), fib_dist * math.sin(mouse.fibula_angle)
        fr = np.hypot(xa - fx, ya - fy)
        f_out, f_in = soft(5.0 - fr), soft(3.0 - fr)
        hu = hu * (1.0 - f_out) + state["cortex_hu"] * (f_out - f_in) + 60.0 * f_in

    return hu + 55.0 * rng.standard_normal(hu.shape, dtype=np.float32)


def _write(path: Path, hu: np.ndarray, mouse: _Mouse, week: int, k: int) -> None:
    day = _STUDY_START + _dt.timedelta(days=7 * week)
    rows, cols = hu.shape
    slice_location = round(k * _SLICE_MM, 3)
    attributes = {
        "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        **dicom.study_attributes(
            mouse, day, times=("110000", "111500", "111500"), accession=f"W{mouse.index:02d}{week}", modality="CT",
            institution="Synthetic Demo Bone Lab",
            descriptions=("Longitudinal in vivo uCT, right tibia (synthetic)", f"Right tibia uCT week {week}"),
            birth_date=mouse.birth_date, sex="F",
        ),
        "PatientSpeciesDescription": "Mus musculus",
        "BodyPartExamined": "LEG",
        "SliceThickness": str(_PIXEL_MM),
        "KVP": "55",
        **dicom.series_attributes(
            *(dicom.demo_uid("chronomid", mouse.index, what, week) for what in ("study", "series", "frame")),
            study_id=f"{week}", series=1, instance=k + 1,
        ),
        **dicom.plane_attributes(
            [round(-cols / 2 * _PIXEL_MM, 4), round(-rows / 2 * _PIXEL_MM, 4), -slice_location if k else 0.0],
            [1, 0, 0, 0, 1, 0], slice_location, _PIXEL_MM,
        ),
        "RescaleIntercept": str(int(_INTERCEPT)), "RescaleSlope": "1", "RescaleType": "HU",
        "WindowCenter": "600", "WindowWidth": "2400",
    }
    uid = dicom.demo_uid("chronomid", mouse.index, "image", week, k)
    dicom.write_image(path, dicom.to_uint16(hu - _INTERCEPT, bits_stored=12), attributes, sop_class_uid=CTImageStorage,
                sop_instance_uid=uid)

