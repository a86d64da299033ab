"""Writing greyscale images as real, uncompressed 16-bit DICOM files (the demos, benches and tests).

``write_image`` writes one Explicit VR Little Endian Part-10 file from stored values and a mapping
of DICOM keywords; it is the one DICOM writer of the project (the benches generate their data with
it too). The demos build their headers from the parts every demo image shares (``study_attributes``,
``series_attributes``, ``plane_attributes``, ``mr_attributes``). Every value that could vary between
runs is derived from fixed inputs: UIDs come from ``demo_uid`` (``pydicom.uid.generate_uid`` with
fixed entropy sources) and dates from fixed calendar days, so the same demo is byte-identical every
time it is generated.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from features.errors import InputError

__all__ = [
    "DemoPerson",
    "person_fields",
    "demo_uid",
    "dicom_date",
    "write_image",
    "to_uint16",
    "study_attributes",
    "series_attributes",
    "plane_attributes",
    "mr_attributes",
]

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
    path: Path, pixels: np.ndarray, attributes: Mapping[str, object], *, sop_class_uid: str, sop_instance_uid: str,
    bits_stored: int = 12, photometric: str = "MONOCHROME2",
) -> None:
    """Write one greyscale image as an Explicit VR Little Endian DICOM Part-10 file at ``path``.

    ``pixels`` is a 2-D ``uint16`` array of stored values (``Rows`` x ``Columns``; ``to_uint16`` rounds
    and clips float values into ``bits_stored`` bits); ``attributes`` maps DICOM keywords (``PatientID``,
    ``StudyDate``, ``RescaleSlope``, ``WindowCenter`` ...) to values and is applied as is. ``sop_class_uid``
    is the storage class (e.g. ``pydicom.uid.CTImageStorage``), ``sop_instance_uid`` the image's UID
    (``demo_uid`` for reproducible files, ``pydicom.uid.generate_uid()`` otherwise). The pixel module and
    the file meta information are filled in here. Parent folders are created. ``InputError`` when
    ``pixels`` is not a 2-D uint16 array.
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


class Person(Protocol):
    """Who an image shows: the patient name and ID written into its header."""

    patient_name: str
    patient_id: str


@dataclass
class DemoPerson:
    """A synthetic patient (or animal) of a demo: its number, DICOM identity and study dates."""

    index: int
    patient_id: str
    patient_name: str
    birth_date: _dt.date
    sex: str
    dates: list[_dt.date]


def person_fields(
    index: int, patient_id: str, patient_name: str, birth_date: _dt.date, dates: list[_dt.date],
    rng: np.random.Generator,
) -> dict[str, object]:
    """The ``DemoPerson`` fields of a new synthetic person, as keyword arguments; the sex (F or M) is
    drawn from ``rng`` here, one draw."""
    return {"index": index, "patient_id": patient_id, "patient_name": patient_name, "birth_date": birth_date,
            "sex": str(rng.choice(["F", "M"])), "dates": dates}


def study_attributes(
    person: Person, day: _dt.date, *, times: tuple[str, str, str], accession: str, modality: str,
    institution: str, descriptions: tuple[str, str], birth_date: _dt.date, sex: str,
) -> dict[str, object]:
    """The patient and study values of an image taken on ``day``: study/series/content dates and
    ``times`` (HHMMSS each), accession number, modality, institution, study and series ``descriptions``,
    and the person's name, ID, ``birth_date`` and ``sex``."""
    study_time, series_time, content_time = times
    study_description, series_description = descriptions
    return {
        "StudyDate": dicom_date(day), "SeriesDate": dicom_date(day), "ContentDate": dicom_date(day),
        "StudyTime": study_time, "SeriesTime": series_time, "ContentTime": content_time,
        "AccessionNumber": accession, "Modality": modality, "Manufacturer": "chronofeat synthetic",
        "InstitutionName": institution, "ReferringPhysicianName": "", "StudyDescription": study_description,
        "SeriesDescription": series_description, "PatientName": person.patient_name,
        "PatientID": person.patient_id, "PatientBirthDate": dicom_date(birth_date), "PatientSex": sex,
    }


def series_attributes(
    study_uid: str, series_uid: str, frame_uid: str | None, *, study_id: str, series: int, instance: int
) -> dict[str, object]:
    """Study, series (and, with ``frame_uid``, frame of reference) identity and the image's numbers."""
    found: dict[str, object] = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid}
    if frame_uid is not None:
        found.update({"FrameOfReferenceUID": frame_uid, "PositionReferenceIndicator": ""})
    found.update({"StudyID": study_id, "SeriesNumber": series, "InstanceNumber": instance})
    return found


def plane_attributes(
    position: Sequence[float], orientation: Sequence[float], slice_location: float, spacing_mm: float
) -> dict[str, object]:
    """The image plane: position of the first pixel, row/column directions, slice location, square pixel size."""
    return {
        "ImagePositionPatient": list(position), "ImageOrientationPatient": list(orientation),
        "SliceLocation": slice_location, "PixelSpacing": [spacing_mm, spacing_mm],
    }


def mr_attributes(
    sequence: str, *, thickness: str, repetition: str, echo: str, echo_train: int, extra: Mapping[str, object] = {}
) -> dict[str, object]:
    """A 2-D spin-echo-family MR acquisition at 1.5 T: ``sequence`` (ScanningSequence, e.g. IR, SE), slice
    ``thickness``, repetition and echo times (ms, DICOM DS strings), echo train length; ``extra`` adds keywords."""
    return {
        "ScanningSequence": sequence, "SequenceVariant": "SK", "ScanOptions": "", "MRAcquisitionType": "2D",
        "SliceThickness": thickness, "RepetitionTime": repetition, "EchoTime": echo, **extra,
        "EchoTrainLength": echo_train, "MagneticFieldStrength": "1.5",
    }
