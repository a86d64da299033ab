"""Synthetic stand-in for the IMPC mouse X-rays: two-view hierarchical abnormality labels (seed 003).

300 simulated specimens, each X-rayed dorsoventrally (``ViewPosition`` ``DV``) and laterally (``LAT``),
sometimes twice in one view. The projection shows skull, spine (cervical, thoracic, lumbar, sacral and
caudal vertebrae), ribcage, scapulae, pelvis and limbs. About 35 % are abnormal, with hierarchical
labels as in the paper: level 1 normal/abnormal; level 2 any of Spine, Ribcage, Whole-body, in the
combination frequencies of the paper's Table 2; level 3 the sub-classes of Tables 4-5 (Cervical,
Thoracic, Lumbar, Caudal, Morphology, Shape under Spine; Ribs under Ribcage; WB-Joints, WB-Others
under Whole-body), always consistent with level 2. Every abnormality changes the drawn skeleton, and
several show mostly in one view (scoliosis of the neck or lumbar spine and rib fusion in DV; kyphosis,
vertebral shape and joints in LAT), so combining views helps. Nuisance: each specimen comes from one of
five "centres" with its own brightness, contrast and noise; body size, pose and tail curl vary.

Files: ``S0001/DV_1.dcm``, ``S0001/LAT_1.dcm`` ... (Digital X-Ray Image Storage - For Presentation,
128x96, MONOCHROME1: high stored values are dark) and ``manifest.csv`` with columns
``path,label,labels,level1,level2,level3`` (``;``-joined lists, empty for normal specimens).
"""

from __future__ import annotations

import csv
import datetime as _dt
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from pydicom.uid import DigitalXRayImageStorageForPresentation
from tqdm import tqdm

from store.demo import dicom_writer as dicom

__all__ = [
    "generate",
    "N_SPECIMENS",
    "ABNORMAL_FRACTION",
    "LEVEL2",
    "LEVEL3",
    "LEVEL3_PARENT",
    "TABLE2_COMBINATIONS",
    "VIEWS",
    "IMAGE_SHAPE",
]

N_SPECIMENS = 300
ABNORMAL_FRACTION = 0.35
VIEWS = ("DV", "LAT")
IMAGE_SHAPE = (128, 96)
LEVEL2 = ("Spine", "Ribcage", "Whole-body")
LEVEL3 = ("Cervical", "Thoracic", "Lumbar", "Caudal", "Morphology", "Shape", "Ribs", "WB-Joints", "WB-Others")
LEVEL3_PARENT = {
    "Cervical": "Spine",
    "Thoracic": "Spine",
    "Lumbar": "Spine",
    "Caudal": "Spine",
    "Morphology": "Spine",
    "Shape": "Spine",
    "Ribs": "Ribcage",
    "WB-Joints": "Whole-body",
    "WB-Others": "Whole-body",
}
# Table 2 of the paper: abnormal specimens per level-2 combination (1651 in all).
TABLE2_COMBINATIONS = (
    (("Spine",), 601),
    (("Spine", "Whole-body"), 536),
    (("Spine", "Ribcage"), 314),
    (("Spine", "Ribcage", "Whole-body"), 86),
    (("Ribcage",), 58),
    (("Ribcage", "Whole-body"), 35),
    (("Whole-body",), 21),
)
_SPINE_SUBCLASS_WEIGHTS = {
    "Cervical": 0.15,
    "Thoracic": 0.2,
    "Lumbar": 0.17,
    "Caudal": 0.18,
    "Morphology": 0.15,
    "Shape": 0.15,
}
_SEED = 2003
_SCALE = 2  # drawn at twice the stored resolution, then area-averaged down
_PIXEL_MM = 0.8
_N_CENTRES = 5


@dataclass
class _Specimen:
    index: int
    patient_id: str
    patient_name: str
    sex: str
    study_date: _dt.date
    centre: int
    level2: tuple[str, ...]
    level3: tuple[str, ...]
    counts: dict[str, int]
    body: dict[str, float] = field(default_factory=dict)

    @property
    def level1(self) -> str:
        return "abnormal" if self.level2 else "normal"


def generate(root: Path, *, progress: bool = True) -> None:
    """Write the whole impc demo (DICOM files and ``manifest.csv``) into ``root``."""
    rng = np.random.default_rng(_SEED)
    centres = [_centre(rng) for _ in range(_N_CENTRES)]
    specimens = _plan(rng)
    manifest = []
    for specimen in tqdm(specimens, desc="demo impc", unit="specimen", disable=not progress, leave=False):
        for view in VIEWS:
            skeleton = _draw(specimen, view)
            for n in range(specimen.counts[view]):
                density = _acquire(skeleton, specimen, rng)
                stored = _expose(density, centres[specimen.centre], rng)
                rel = f"S{specimen.index:04d}/{view}_{n + 1}.dcm"
                _write(root / rel, stored, specimen, view, n, centres[specimen.centre])
                manifest.append(
                    (
                        rel,
                        specimen.level1,
                        ";".join(specimen.level2 + specimen.level3),
                        specimen.level1,
                        ";".join(specimen.level2),
                        ";".join(specimen.level3),
                    )
                )
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "label", "labels", "level1", "level2", "level3"])
        writer.writerows(manifest)


def _largest_remainder(total: int, weights: list[int]) -> list[int]:
    exact = np.array(weights, dtype=float) * total / sum(weights)
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def _plan(rng: np.random.Generator) -> list[_Specimen]:
    n_abnormal = round(ABNORMAL_FRACTION * N_SPECIMENS)
    combos: list[tuple[str, ...]] = []
    for (combo, _), count in zip(
        TABLE2_COMBINATIONS, _largest_remainder(n_abnormal, [c for _, c in TABLE2_COMBINATIONS]), strict=True
    ):
        combos.extend([combo] * count)
    combos.extend([()] * (N_SPECIMENS - n_abnormal))
    order = rng.permutation(len(combos))
    spine_names = list(_SPINE_SUBCLASS_WEIGHTS)
    spine_p = np.array(list(_SPINE_SUBCLASS_WEIGHTS.values()))
    spine_p /= spine_p.sum()

    specimens = []
    for i, slot in enumerate(order):
        index = i + 1
        level2 = tuple(name for name in LEVEL2 if name in combos[slot])
        level3: set[str] = set()
        if "Spine" in level2:
            k = 1 if rng.random() < 0.65 else 2
            level3.update(str(n) for n in rng.choice(spine_names, size=k, replace=False, p=spine_p))
        if "Ribcage" in level2:
            level3.add("Ribs")
        if "Whole-body" in level2:
            u = rng.random()
            level3.update(["WB-Joints"] if u < 0.45 else ["WB-Others"] if u < 0.85 else ["WB-Joints", "WB-Others"])
        letters = "".join(rng.choice(list("ABCDEFGHJKLMNPQRSTUVWXYZ"), size=3))
        specimen = _Specimen(
            index=index,
            patient_id=f"IMPC-{index:04d}-{letters}",
            patient_name=f"Synthetic^Mouse{index:04d}",
            sex=str(rng.choice(["F", "M"])),
            study_date=_dt.date(2014, 1, 6) + _dt.timedelta(days=int(rng.integers(0, 7 * 365))),
            centre=int(rng.integers(0, _N_CENTRES)),
            level2=level2,
            level3=tuple(name for name in LEVEL3 if name in level3),
            counts={view: (2 if rng.random() < 0.15 else 1) for view in VIEWS},
        )
        specimen.body = _body(specimen, rng)
        specimens.append(specimen)
    return specimens


def _body(specimen: _Specimen, rng: np.random.Generator) -> dict[str, float]:
    """Per-specimen anatomy and the parameters of its abnormalities (all at drawing scale)."""
    has = set(specimen.level3)

    def side() -> float:
        return float(rng.choice([-1.0, 1.0]))

    body = {
        "size": rng.uniform(0.92, 1.08),
        "wobble_a": rng.uniform(-2.5, 2.5),
        "wobble_b": rng.uniform(-2.0, 2.0),
        "kyphosis": rng.uniform(5.0, 9.0),
        "tail_curl": side() * rng.uniform(0.03, 0.08),
        "tail_phase": rng.uniform(0, 2 * math.pi),
        "tail_len": rng.uniform(26, 34),
        "cervical": side() * rng.uniform(9, 13) if "Cervical" in has else 0.0,
        "thoracic": rng.uniform(6, 10) if "Thoracic" in has else 0.0,
        "lumbar": side() * rng.uniform(9, 14) if "Lumbar" in has else 0.0,
        "caudal_kink": side() * rng.uniform(0.9, 1.5) if "Caudal" in has else 0.0,
        "caudal_at": rng.uniform(3, 9),
        "fusion_start": float(rng.integers(9, 22)) if "Morphology" in has else -1.0,
        "fusion_len": float(rng.integers(3, 5)),
        "shape": rng.uniform(1.45, 1.7) if "Shape" in has else 1.0,
        "rib_side": side(),
        "rib_fused": float(rng.integers(3, 10)) if "Ribs" in has else -1.0,
        "rib_missing": 1.0 if "Ribs" in has and rng.random() < 0.6 else 0.0,
        "joints": rng.uniform(1.45, 1.8) if "WB-Joints" in has else 1.0,
        "joint_flex": rng.uniform(12, 20) if "WB-Joints" in has else 0.0,
        "pelvis_tilt": side() * rng.uniform(20, 30) if "WB-Others" in has else 0.0,
        "pelvis_short": rng.uniform(0.55, 0.7) if "WB-Others" in has else 1.0,
    }
    return body


def _centre(rng: np.random.Generator) -> dict[str, float]:
    return {
        "gain": rng.uniform(0.75, 1.2),
        "gamma": rng.uniform(0.8, 1.25),
        "background": rng.uniform(0.02, 0.12),
        "noise": rng.uniform(0.012, 0.03),
    }


# Vertebra counts per region; t is the position along the spine from the skull (0) to the sacrum (1).
_REGIONS = (("cervical", 7, 0.0, 0.1), ("thoracic", 13, 0.1, 0.55), ("lumbar", 6, 0.55, 0.85), ("sacral", 4, 0.85, 1.0))
_SPINE_TOP, _SPINE_BOTTOM = 66.0, 196.0


def _bump(t: np.ndarray | float, centre: float, width: float) -> np.ndarray | float:
    return np.exp(-(((np.asarray(t) - centre) / width) ** 2))


def _spine_x(body: dict[str, float], view: str, t: np.ndarray) -> np.ndarray:
    """Horizontal position of the spine at positions ``t`` in one view (drawing pixels)."""
    if view == "DV":
        x = 96.0 + body["wobble_a"] * np.sin(math.pi * t) + body["wobble_b"] * np.sin(2 * math.pi * t)
        x = x + body["cervical"] * _bump(t, 0.05, 0.06) + body["lumbar"] * _bump(t, 0.7, 0.09)
        x = x + 0.15 * body["thoracic"] * _bump(t, 0.33, 0.15)
    else:
        x = 76.0 - body["kyphosis"] * np.sin(math.pi * t) - body["thoracic"] * _bump(t, 0.33, 0.13)
        x = x + 0.25 * abs(body["cervical"]) * _bump(t, 0.05, 0.06) + 0.2 * abs(body["lumbar"]) * _bump(t, 0.7, 0.09)
    return x


def _vertebrae(body: dict[str, float], view: str) -> list[tuple[float, float, float, str]]:
    """(x, y, angle in degrees, region) of each vertebra from C1 to the last sacral one."""
    out = []
    for region, count, t0, t1 in _REGIONS:
        for j in range(count):
            t = t0 + (t1 - t0) * (j + 0.5) / count
            y = _SPINE_TOP + t * (_SPINE_BOTTOM - _SPINE_TOP)
            x = float(_spine_x(body, view, np.array([t]))[0])
            dx = float(_spine_x(body, view, np.array([t + 0.01]))[0]) - x
            angle = math.degrees(math.atan2(dx, 0.01 * (_SPINE_BOTTOM - _SPINE_TOP)))
            out.append((x, y, angle, region))
    return out


def _line(canvas: np.ndarray, points: list[tuple[float, float]], value: float, thickness: int) -> None:
    """Anti-aliased polyline with sub-pixel vertices (OpenCV fixed point, 2 fractional bits)."""
    pts = np.round(np.array(points) * 4).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(canvas, [pts], False, value, thickness, cv2.LINE_AA, shift=2)


def _ellipse(
    canvas: np.ndarray,
    centre: tuple[float, float],
    axes: tuple[float, float],
    angle: float,
    value: float,
    thickness: int = -1,
) -> None:
    c = (int(round(centre[0] * 4)), int(round(centre[1] * 4)))
    a = (max(1, int(round(axes[0] * 4))), max(1, int(round(axes[1] * 4))))
    cv2.ellipse(canvas, c, a, angle, 0, 360, value, thickness, cv2.LINE_AA, shift=2)


def _rib(x: float, y: float, length: float, side: float, dv: bool, u0: float, u1: float) -> list[tuple[float, float]]:
    """Points of one rib leaving the vertebra at (x, y); ``side`` -1/1 is left/right (DV) or far/near (LAT)."""
    us = np.linspace(u0, u1, 8)
    if dv:
        return [(x + side * (3 + length * u), y + 10.0 * u * u * length / 30.0) for u in us]
    near = 0.0 if side > 0 else 2.0
    return [(x + 3 + near + 1.6 * length * u, y + near + 16.0 * u * length / 30.0 + 5.0 * u * u) for u in us]


def _draw_ribs(canvas: np.ndarray, b: dict, thoracic: list, dv: bool) -> None:
    """Ribs (drawn before the vertebrae, which cover their heads). LAT superimposes both sides, slightly offset."""
    spacing = thoracic[1][1] - thoracic[0][1]
    fused = int(b["rib_fused"])
    for i, (x, y, _, _) in enumerate(thoracic):
        length = 18.0 + 14.0 * math.sin(math.pi * (i + 1) / 14.0)
        for s in (-1.0, 1.0):
            if b["rib_missing"] and s == b["rib_side"] and i >= len(thoracic) - 2:
                continue  # the last two ribs of one side are missing
            _line(canvas, _rib(x, y, length, s, dv, 0.0, 1.0), 0.45 if dv or s > 0 else 0.35, 2)
        if fused >= 0 and i == fused:  # three neighbouring ribs fused into one broad band
            band = [(px, py + spacing) for px, py in _rib(x, y, length, b["rib_side"], dv, 0.15, 0.85)]
            _line(canvas, band, 0.55, 6 if dv else 4)


def _draw_limbs_dv(canvas: np.ndarray, b: dict) -> None:
    """Scapulae, fore limbs, pelvis halves and hind limbs seen from above, both sides."""
    joint_r = 3.0 * b["joints"]
    flex = 0.3 * b["joint_flex"]
    for s in (-1.0, 1.0):
        _ellipse(canvas, (96 + s * 20, 80), (4, 9), s * 30, 0.4)  # scapula
        shoulder, elbow, paw = (96 + s * 24, 84), (96 + s * 38, 104), (96 + s * (34 - flex * 0.3), 122)
        _line(canvas, [shoulder, elbow, paw], 0.6, 3)
        _ellipse(canvas, elbow, (joint_r, joint_r), 0, 0.7)
        tilt = b["pelvis_tilt"] if s == 1.0 else 0.0
        scale = b["pelvis_short"] if s == 1.0 else 1.0
        _ellipse(canvas, (96 + s * 12, 180 + 16 * (1 - scale) * 0.5), (5, 16 * scale), s * 15 + tilt, 0.55)
        hip, knee, ankle = (96 + s * 16, 196), (96 + s * (34 + flex * 0.3), 214), (96 + s * 30, 240)
        _line(canvas, [hip, knee, ankle], 0.6, 3)
        _ellipse(canvas, knee, (joint_r, joint_r), 0, 0.7)


def _draw_limbs_lat(canvas: np.ndarray, b: dict, verts: list) -> None:
    """Fore limb, ilium and hind limb seen from the side."""
    joint_r = 3.0 * b["joints"]
    flex = b["joint_flex"]
    shoulder, elbow, paw = (92, 84), (104 + flex * 0.4, 104), (122, 112 - flex * 0.3)
    _line(canvas, [shoulder, elbow, paw], 0.6, 3)
    _ellipse(canvas, elbow, (joint_r * 1.2, joint_r), 20, 0.7)
    ilium = (4, 18 * (0.85 + 0.15 * b["pelvis_short"]))
    _ellipse(canvas, (verts[-3][0] + 7, 182), ilium, 10 + 0.3 * b["pelvis_tilt"], 0.55)
    hip, knee, ankle, foot = (84, 198), (112 + flex, 206 - flex * 0.5), (102, 236), (122, 244)
    _line(canvas, [hip, knee, ankle, foot], 0.6, 3)
    _ellipse(canvas, knee, (joint_r * 1.3, joint_r), 30, 0.7)


_BODY_WIDTH = {"cervical": 6.0, "thoracic": 7.0, "lumbar": 8.0, "sacral": 7.0}


def _draw_vertebrae(canvas: np.ndarray, b: dict, verts: list, dv: bool) -> None:
    """Vertebrae, with an optional fused block and abnormal vertebral bodies."""
    fusion = range(0)
    if b["fusion_start"] >= 0:
        fusion = range(int(b["fusion_start"]), int(b["fusion_start"] + b["fusion_len"]))
    for j, (x, y, angle, region) in enumerate(verts):
        width = _BODY_WIDTH[region]
        height = 3.6 if region != "sacral" else 4.2
        if region in ("thoracic", "lumbar") and j >= 14:  # lower thoracic and lumbar bodies
            width *= b["shape"] if not dv else 1.0 + 0.25 * (b["shape"] - 1.0)
            height *= 1.0 / math.sqrt(b["shape"]) if not dv else 1.0
        if j in fusion:
            height, value = 6.5, 0.95
        else:
            value = 0.75
        offset = 0.0 if dv else 2.0
        _ellipse(canvas, (x + offset, y), (width / 2 + (0 if dv else 1.5), height / 2), angle, value)
        if not dv:
            _line(canvas, [(x - 3, y), (x - 7, y - 1)], 0.5, 2)  # spinous process


def _draw_tail(canvas: np.ndarray, b: dict, verts: list, dv: bool) -> None:
    """A chain of small vertebrae curling as the specimen lies; a kinked, short tail is "Caudal"."""
    x, y = verts[-1][0], _SPINE_BOTTOM + 4
    heading = 0.0
    n_tail = int(b["tail_len"] * (0.55 if b["caudal_kink"] else 1.0))
    for j in range(n_tail):
        heading += b["tail_curl"] * (1.4 if dv else 0.6) + 0.04 * math.sin(b["tail_phase"] + 0.3 * j)
        if b["caudal_kink"] and j == int(b["caudal_at"]):
            heading += b["caudal_kink"]
        x += 3.2 * math.sin(heading)
        y += 3.2 * math.cos(heading)
        _ellipse(canvas, (x, y), (1.8, 1.3), -math.degrees(heading), 0.55)


def _draw(specimen: _Specimen, view: str) -> np.ndarray:
    """Bone/soft-tissue density of one view at drawing scale (float32, 0 = air)."""
    b = specimen.body
    canvas = np.zeros((IMAGE_SHAPE[0] * _SCALE, IMAGE_SHAPE[1] * _SCALE), np.float32)
    dv = view == "DV"
    _ellipse(canvas, (96, 142), (50 if dv else 44, 100), 0, 0.12)
    _ellipse(canvas, (96, 40), (24, 32), 0, 0.14)
    verts = _vertebrae(b, view)
    _draw_ribs(canvas, b, [v for v in verts if v[3] == "thoracic"], dv)
    if dv:
        _draw_limbs_dv(canvas, b)
    else:
        _draw_limbs_lat(canvas, b, verts)
    _draw_vertebrae(canvas, b, verts, dv)
    _draw_tail(canvas, b, verts, dv)
    # Skull last: fill and rim, and in LAT the jaw.
    _ellipse(canvas, (96, 38), (19 if dv else 15, 27), 0, 0.35)
    _ellipse(canvas, (96, 38), (19 if dv else 15, 27), 0, 0.6, 2)
    if not dv:
        _line(canvas, [(104, 14), (110, 40), (104, 60)], 0.55, 2)
    return canvas


def _acquire(skeleton: np.ndarray, specimen: _Specimen, rng: np.random.Generator) -> np.ndarray:
    """Place the specimen on the detector (size, small rotation and shift) and downsample."""
    h, w = skeleton.shape
    angle = rng.uniform(-4.0, 4.0)
    matrix = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, specimen.body["size"])
    matrix[:, 2] += rng.uniform(-5.0, 5.0, size=2)
    placed = cv2.warpAffine(skeleton, matrix, (w, h), flags=cv2.INTER_LINEAR, borderValue=0.0)
    placed = cv2.GaussianBlur(placed, (0, 0), 0.8)
    return cv2.resize(placed, (IMAGE_SHAPE[1], IMAGE_SHAPE[0]), interpolation=cv2.INTER_AREA)


def _expose(density: np.ndarray, centre: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    """Centre-specific brightness and noise; returns MONOCHROME1 stored values (bright bone = low)."""
    brightness = centre["background"] + centre["gain"] * np.power(np.clip(density, 0, None), centre["gamma"])
    brightness = brightness + centre["noise"] * rng.standard_normal(density.shape, dtype=np.float32)
    return 4095.0 * (1.0 - np.clip(brightness, 0.0, 1.0))


def _write(path: Path, stored: np.ndarray, specimen: _Specimen, view: str, n: int, centre: dict[str, float]) -> None:
    day = specimen.study_date
    series = VIEWS.index(view) + 1
    attributes = {
        "ImageType": ["ORIGINAL", "PRIMARY"],
        **dicom.study_attributes(
            specimen, day, times=("140000", f"14{series:02d}00", f"14{series:02d}{n:02d}"),
            accession=f"X{specimen.index:04d}", modality="DX", institution=f"Synthetic Centre {specimen.centre + 1}",
            descriptions=("Skeletal X-ray phenotyping (synthetic)", f"Full body {view}"),
            birth_date=day - _dt.timedelta(weeks=14), sex=specimen.sex,
        ),
        "PresentationIntentType": "FOR PRESENTATION",
        "PatientSpeciesDescription": "Mus musculus",
        "BodyPartExamined": "WHOLEBODY",
        "ViewPosition": view,
        "KVP": "26",
        **dicom.series_attributes(
            dicom.demo_uid("impc", specimen.index, "study"), dicom.demo_uid("impc", specimen.index, "series", view),
            None, study_id="1", series=series, instance=n + 1,
        ),
        "PatientOrientation": "",
        "ImagerPixelSpacing": [_PIXEL_MM, _PIXEL_MM], "PixelSpacing": [_PIXEL_MM, _PIXEL_MM],
        "PixelIntensityRelationship": "LOG", "PixelIntensityRelationshipSign": 1,
        "RescaleIntercept": "0", "RescaleSlope": "1", "RescaleType": "US",
        "PresentationLUTShape": "INVERSE", "BurnedInAnnotation": "NO",
        "WindowCenter": "2400", "WindowWidth": "3600",
    }
    uid = dicom.demo_uid("impc", specimen.index, "image", view, n)
    dicom.write_image(path, dicom.to_uint16(stored, bits_stored=12), attributes,
                sop_class_uid=DigitalXRayImageStorageForPresentation, sop_instance_uid=uid, photometric="MONOCHROME1")
