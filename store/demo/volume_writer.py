"""Writing volumes as NIfTI files and as DICOM series (the volumetric demo and the tests).

Both writers take the ``store.volumes`` convention: ``array`` ``(z, y, x)`` (``array[k, j, i]``) and a 4x4
``affine`` from voxel ``(i, j, k)`` to RAS mm. ``write_nifti`` writes a gzip stream with a zero mtime, so the
same volume gives the same bytes every time. ``write_dicom_series`` writes one uncompressed 16-bit file per
slice (``store.demo.dicom_writer.write_image``) with ImagePositionPatient / ImageOrientationPatient /
PixelSpacing / SliceThickness in LPS, so that reading the series back (``store.dicom_series``) gives the
same voxels and affine when the affine is right-handed (k along row x column); ``order`` permutes the
files' instance numbers and names (a shuffled series), ``skip`` leaves slices out (a gapped one).
"""

from __future__ import annotations

import gzip
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from pydicom.uid import CTImageStorage

from features.errors import InputError
from store.demo.dicom_writer import demo_uid, write_image
from store.dicom_series import LPS_TO_RAS

__all__ = ["write_nifti", "write_dicom_series"]


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write ``array`` ``(z, y, x)`` with RAS ``affine`` as a NIfTI-1 file (``.nii.gz``: gzip, mtime 0)."""
    import nibabel as nib

    image = nib.Nifti1Image(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)), np.asarray(affine, float))
    image.header.set_xyzt_units("mm")
    image.set_qform(np.asarray(affine, float), code=1)
    image.set_sform(np.asarray(affine, float), code=1)
    data = image.to_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)


def _plane_geometry(affine: np.ndarray) -> tuple[list[float], list[float], np.ndarray, np.ndarray]:
    """(IOP, PixelSpacing [row, column], first position LPS, slice step LPS) of a RAS ``affine``."""
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    dx, dy = float(np.linalg.norm(lps[:3, 0])), float(np.linalg.norm(lps[:3, 1]))
    row, col = lps[:3, 0] / dx, lps[:3, 1] / dy
    return [float(v) for v in (*row, *col)], [dy, dx], lps[:3, 3], lps[:3, 2]


def write_dicom_series(
    folder: Path, array: np.ndarray, affine: np.ndarray, attributes: Mapping[str, object], *, uid_parts: Sequence,
    order: Sequence[int] | None = None, skip: Sequence[int] = (),
) -> list[Path]:
    """Write the ``uint16`` volume ``array`` ``(z, y, x)`` as a CT series of single-slice files in ``folder``.

    ``attributes``: patient/study keywords written into every file (PatientID, StudyDate...).
    ``uid_parts`` fix the study/series/instance UIDs (``demo_uid``). ``order``: the k index written as
    file number 0, 1, ... (default: in order); ``skip``: k indices left out. Returns the files written.
    """
    if array.ndim != 3 or array.dtype != np.uint16:
        raise InputError(f"write_dicom_series needs a 3-D uint16 (z, y, x) array; got {array.dtype} {array.shape}.")
    orientation, pixel_spacing, origin, step = _plane_geometry(affine)
    series_uid = demo_uid(*uid_parts, "series")
    order = list(range(array.shape[0])) if order is None else list(order)
    files = []
    for number, k in enumerate(order):
        if k in skip:
            continue
        position = origin + k * step
        file = folder / f"IM{number:04d}.dcm"
        header = {
            **attributes, "StudyInstanceUID": demo_uid(*uid_parts, "study"), "SeriesInstanceUID": series_uid,
            "FrameOfReferenceUID": demo_uid(*uid_parts, "frame"), "SeriesNumber": 1, "InstanceNumber": number + 1,
            "ImagePositionPatient": [float(v) for v in position], "ImageOrientationPatient": orientation,
            "PixelSpacing": pixel_spacing, "SliceThickness": float(np.linalg.norm(step)),
            "WindowCenter": 1500, "WindowWidth": 3000,
        }
        write_image(file, np.ascontiguousarray(array[k]), header, sop_class_uid=CTImageStorage,
                    sop_instance_uid=demo_uid(*uid_parts, "image", k), bits_stored=16)
        files.append(file)
    return files
