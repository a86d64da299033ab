"""Small DICOM files written with pydicom for the ingestion tests (no demo datasets involved)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

__all__ = ["write_dicom", "strings_in"]


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    patient_id: str | None = "SUBJ-0001",
    patient_name: str = "Sample^Subject",
    birth_date: str = "19700101",
    study_date: str | None = "20240101",
    instance: int | None = 1,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple | None = None,
    attributes: Mapping[str, object] | None = None,
) -> Path:
    """Write ``pixels`` as an Explicit VR Little Endian MR Image Storage file at ``path``.

    ``pixels``: ``(H, W)`` or ``(N, H, W)`` greyscale (uint8/uint16/int16); ``(H, W, 3)`` or
    ``(N, H, W, 3)`` uint8 when ``photometric`` is ``RGB``. ``window`` = (centre, width), each a number
    or a list for multi-valued elements. ``attributes`` are set last (keyword -> value).
    """
    colour = photometric == "RGB"
    frames = pixels.shape[0] if pixels.ndim == (4 if colour else 3) else 1
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    if patient_id is not None:
        ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = birth_date
    if study_date is not None:
        ds.StudyDate = study_date
    ds.Modality = "MR"
    if instance is not None:
        ds.InstanceNumber = instance
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept if intercept is not None else 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    bits = pixels.dtype.itemsize * 8
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric
    if colour:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = int(pixels.shape[-3 if colour else -2]), int(pixels.shape[-2 if colour else -1])
    ds.BitsAllocated = bits
    ds.BitsStored = bits_stored or bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.PixelData = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<"), copy=False).tobytes()
    for keyword, value in (attributes or {}).items():
        setattr(ds, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def strings_in(value):
    """Every string inside a (possibly nested) Arrow cell value, as Python gives it."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from strings_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings_in(item)
    elif value is not None:
        yield str(value)
