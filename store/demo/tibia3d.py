"""Synthetic volumetric stand-in: µCT-like lower-leg volumes over three sessions, written as BIDS NIfTI.

8 simulated subjects (4 ``growing``, 4 ``stable``), each scanned in 3 sessions 4 weeks apart. Every
volume is ``(z, y, x) = (40, 48, 48)`` uint16 voxels of ``(1.2, 1.0, 1.0)`` mm: a tapered elliptic tibia
shaft (cortical shell around marrow), a tilted fibula, soft tissue, and a bright spherical lesion in the
marrow. The lesion's radius grows session by session in ``growing`` subjects (3 -> 5 -> 7 mm) and stays
(4 mm) in ``stable`` ones: the known simulated change. Between sessions the leg moves rigidly (rotations
up to 6 degrees about each axis, translations up to 3 mm): the known motion. The phantom is analytic, so
each session is sampled exactly at the moved positions (no interpolation), plus Gaussian noise.

Files: ``participants.tsv`` (``participant_id``, ``label``), ``sub-XX/sub-XX_sessions.tsv``
(``session_id``, ``acq_time`` dates), ``sub-XX/ses-0N/anat/sub-XX_ses-0N_CT.nii.gz``,
``dataset_description.json`` and ``ground_truth.json``: for every subject and session the 4x4
``baseline_to_session`` matrix in world RAS mm (a point of the first session's anatomy at ``p`` lies at
``M @ p`` in this session), its ``rotation_deg`` (x, y, z; ``R = Rz @ Ry @ Rx`` about ``centre_ras``),
``translation_mm`` and the lesion's radius and centre (first-session anatomy frame).
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from store.demo.volume_writer import write_nifti

__all__ = ["generate", "N_SUBJECTS", "SESSIONS", "SHAPE", "SPACING", "LABELS", "AFFINE", "LESION_RADII",
           "rotation_matrix", "baseline_to_session"]

N_SUBJECTS = 8
SESSIONS = 3
SHAPE = (40, 48, 48)  # (z, y, x)
SPACING = (1.2, 1.0, 1.0)  # (z, y, x) mm
LABELS = ("growing", "stable")
LESION_RADII = {"growing": (3.0, 5.0, 7.0), "stable": (4.0, 4.0, 4.0)}
_SEED = 3303
_WEEKS_APART = 4
_STUDY_START = _dt.date(2021, 9, 6)
_NOISE = 30.0
# voxel (i, j, k) -> RAS mm, the volume centred on the origin
AFFINE = np.array([
    [SPACING[2], 0.0, 0.0, -SPACING[2] * (SHAPE[2] - 1) / 2],
    [0.0, SPACING[1], 0.0, -SPACING[1] * (SHAPE[1] - 1) / 2],
    [0.0, 0.0, SPACING[0], -SPACING[0] * (SHAPE[0] - 1) / 2],
    [0.0, 0.0, 0.0, 1.0],
])
CENTRE = np.zeros(3)


def rotation_matrix(degrees: tuple[float, float, float]) -> np.ndarray:
    """``Rz @ Ry @ Rx`` for rotations of ``degrees`` (x, y, z) about the world axes."""
    ax, ay, az = np.radians(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def baseline_to_session(degrees: tuple[float, float, float], translation: tuple[float, float, float]) -> np.ndarray:
    """The 4x4 world (RAS mm) map ``p -> R (p - c) + c + t`` (``c`` = ``CENTRE``)."""
    rotation = rotation_matrix(degrees)
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = CENTRE - rotation @ CENTRE + np.asarray(translation, dtype=float)
    return matrix


def _world_grid() -> np.ndarray:
    """``(4, z*y*x)`` homogeneous world coordinates of every voxel, in ``(z, y, x)`` C order."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    voxels = np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    return AFFINE @ voxels


def _phantom(points: np.ndarray, lesion_centre: np.ndarray, lesion_radius: float, shift: float) -> np.ndarray:
    """Intensities of the first-session anatomy at world ``points`` ``(3, n)``."""
    x, y, z = points
    values = np.full(x.shape, 150.0)
    values[((x / 21.0) ** 2 + (y / 18.0) ** 2) <= 1.0] = 900.0  # soft tissue
    a, b = 11.0 + 0.06 * z, 8.5 + 0.04 * z
    tibia = ((x + 3.0 - shift) / a) ** 2 + ((y - 2.0) / b) ** 2
    values[tibia <= 1.0] = 3000.0  # cortical shell
    values[((x + 3.0 - shift) / (a - 3.5)) ** 2 + ((y - 2.0) / (b - 3.0)) ** 2 <= 1.0] = 1300.0  # marrow
    values[(x - 11.0 - 0.12 * z) ** 2 + (y + 9.0) ** 2 <= 3.2**2] = 2600.0  # fibula, tilted
    values[(x + 14.0) ** 2 + (y - 11.0) ** 2 + (z - 8.0) ** 2 <= 2.5**2] = 2000.0  # a landmark (tuberosity)
    lesion = np.sum((points - lesion_centre[:, None]) ** 2, axis=0) <= lesion_radius**2
    values[lesion] = 2300.0
    return values


def _session_motion(rng: np.random.Generator, session: int) -> tuple[list[float], list[float]]:
    if session == 0:
        return [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
    degrees = [float(v) for v in np.round(rng.uniform(-6, 6, 3), 2)]
    return degrees, [float(v) for v in np.round(rng.uniform(-3, 3, 3), 2)]


def _subject(root: Path, grid: np.ndarray, index: int, label: str, rng: np.random.Generator) -> dict:
    """Write one subject's sessions; return its ground truth."""
    name = f"sub-{index:02d}"
    shift = float(rng.uniform(-1.5, 1.5))
    lesion_centre = np.array([-3.0 + shift + rng.uniform(-1, 1), 2.0 + rng.uniform(-1, 1), rng.uniform(-6, 6)])
    start = _STUDY_START + _dt.timedelta(days=int(rng.integers(0, 60)))
    sessions, lines = {}, ["session_id\tacq_time"]
    for session in range(SESSIONS):
        degrees, translation = _session_motion(rng, session)
        matrix = baseline_to_session(degrees, translation)
        radius = LESION_RADII[label][session]
        anatomy = (np.linalg.inv(matrix) @ grid)[:3]  # where each voxel's point was in the first session
        values = _phantom(anatomy, lesion_centre, radius, shift) + rng.normal(0.0, _NOISE, anatomy.shape[1])
        volume = np.clip(np.rint(values), 0, 65535).astype(np.uint16).reshape(SHAPE)
        ses = f"ses-{session + 1:02d}"
        write_nifti(root / name / ses / "anat" / f"{name}_{ses}_CT.nii.gz", volume, AFFINE)
        lines.append(f"{ses}\t{start + _dt.timedelta(weeks=_WEEKS_APART * session)}")
        sessions[ses] = {
            "baseline_to_session": matrix.round(10).tolist(), "rotation_deg": degrees, "translation_mm": translation,
            "lesion_radius_mm": radius, "lesion_centre_ras": [float(v) for v in lesion_centre.round(4)],
        }
    (root / name / f"{name}_sessions.tsv").write_text("\n".join(lines) + "\n")
    return {"label": label, "sessions": sessions}


def generate(root: Path, *, progress: bool = True) -> None:
    """Write the whole tibia3d demo (BIDS tree of NIfTI volumes and its tables) into ``root``."""
    rng = np.random.default_rng(_SEED)
    grid = _world_grid()
    labels = [LABELS[i % 2] for i in range(N_SUBJECTS)]
    truth = {}
    for index in tqdm(range(1, N_SUBJECTS + 1), desc="demo tibia3d", unit="subject", disable=not progress,
                      leave=False):
        truth[f"sub-{index:02d}"] = _subject(root, grid, index, labels[index - 1], rng)
    participants = ["participant_id\tlabel"] + [f"{s}\t{t['label']}" for s, t in truth.items()]
    (root / "participants.tsv").write_text("\n".join(participants) + "\n")
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "chronofeat synthetic tibia3d", "BIDSVersion": "1.8.0", "DatasetType": "raw"}, indent=1) + "\n")
    convention = (
        "Volumes: array (z, y, x), affine voxel (i, j, k) -> RAS mm (AFFINE, same for every volume). "
        "baseline_to_session maps a point p (RAS mm) of the ses-01 anatomy to M @ p in that session; "
        "M = [R, c - R c + t], R = Rz @ Ry @ Rx of rotation_deg (x, y, z), c = centre_ras, t = translation_mm. "
        "Registering session s onto ses-01 recovers inv(M)."
    )
    (root / "ground_truth.json").write_text(json.dumps({
        "convention": convention, "affine": AFFINE.tolist(), "shape_zyx": list(SHAPE), "spacing_zyx": list(SPACING),
        "centre_ras": CENTRE.tolist(), "subjects": truth,
    }, indent=1) + "\n")
