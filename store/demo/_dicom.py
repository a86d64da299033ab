"""Writing the demo datasets' images as real, uncompressed 16-bit DICOM files.

Every value that could vary between runs is derived from fixed inputs: UIDs come from
``pydicom.uid.generate_uid(entropy_srcs=[...])`` and dates from fixed calendar days, so the same
demo is byte-identical every time it is generated.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from features.errors import InputError

__all__ = ["demo_uid", "dicom_date", "write_image", "to_uint16"]

_UID_NAMESPACE = "chronofeat-demo-v1"


def demo_uid(*parts: object) -> str:
    """A DICOM UID fixed by ``parts`` (e.g. ``("crmo", "study", 3, 1)``): same parts, same UID."""
    return str(generate_uid(entropy_srcs=[_UID_NAMESPACE, *(str(p) for p in parts)]))


def dicom_date(day: _dt.date) -> str:
    """``day`` as a DICOM DA string ``YYYYMMDD``."""
    return day.strftime("%Y%m%d")


def to_uint16(values: np.ndarray, *, bits_stored: int) -> np.ndarray:
    """Round float stored values into ``[0, 2**bits_stored - 1]`` as ``uint16``."""
    top = float(2**bits_stored - 1)
    return np.clip(np.rint(values), 0.0, top).astype(np.uint16)


def write_image(
    path: Path,
    pixels: np.ndarray,
    attributes: Mapping[str, object],
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    bits_stored: int = 12,
    photometric: str = "MONOCHROME2",
) -> None:
    """Write one greyscale image as an Explicit VR Little Endian DICOM Part-10 file.

    ``pixels`` is a 2-D ``uint16`` array of stored values (``Rows`` x ``Columns``); ``attributes`` maps
    DICOM keywords (``PatientID``, ``StudyDate``, ``WindowCenter`` ...) to values and is applied as is.
    The pixel module and the file meta information are filled in here. Parent folders are created.
    """
    if pixels.ndim != 2 or pixels.dtype != np.uint16:
        raise InputError(
            f"Demo image {path.name} is {pixels.dtype} {pixels.shape}; write_image needs a 2-D uint16 array."
        )
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels).astype("<u2", copy=False).tobytes()

    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
