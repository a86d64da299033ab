"""Reading one DICOM file: its pixels as float32 frames and the few header values ingestion needs.

Pixels follow one policy, shared by ingestion (which hashes them) and by every extractor (which
reads them back through ``store.pixels``):

- decoded by pydicom with whichever plugin handles the transfer syntax (pylibjpeg, -libjpeg,
  -openjpeg, -rle); uncompressed little-endian greyscale data is read straight from the element
  value with the same unused-bit correction pydicom applies, which avoids a second copy;
- greyscale: the Modality LUT or RescaleSlope/Intercept applied as ``pydicom``'s
  ``apply_modality_lut`` does, then MONOCHROME1 inverted within the modality value range (so bright
  means dense everywhere); the VOI window centre is mapped the same way so window and pixels agree;
- colour: RGB as pydicom returns it (YBR converted to RGB); PALETTE COLOR expanded through its LUT;
- every frame of a multi-frame file, as a C-contiguous float32 array ``(frames, H, W)`` or
  ``(frames, H, W, 3)``.

The header object keeps the PatientID in memory only, to derive the subject pseudonym; when decoding
fails, the file's PHI values are redacted from the message. Nothing here writes anything.
"""

from __future__ import annotations

import datetime as dt
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable

import numpy as np

from store.errors import DecodeError
from store.pseudonym import redact

__all__ = ["DicomHeader", "DicomImage", "read_dicom", "is_dicom_bytes", "parse_dicom_date", "MONOCHROME"]

MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
# Elements whose values are PHI or may carry it; their values are redacted from error messages.
_PHI_KEYWORDS = (
    "ReferringPhysicianName", "InstitutionName", "InstitutionAddress", "AccessionNumber",
    "PerformingPhysicianName", "OperatorsName", "StudyID",
)
_FLOAT32_EXACT = 2**24


@dataclass(frozen=True)
class DicomHeader:
    """Header values read from one file. ``patient_id`` never leaves memory (it is only hashed)."""

    modality: str
    study_date: dt.date | None
    acquisition_date: dt.date | None
    instance_number: int | None
    slice_location: float | None
    view_position: str
    series_description: str
    window_center: float | None
    window_width: float | None
    photometric: str
    study_uid: str | None = field(default=None, repr=False)
    patient_id: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class DicomImage:
    """A decoded file: ``frames`` float32 ``(n, H, W)`` or ``(n, H, W, 3)``, and its header."""

    frames: np.ndarray
    header: DicomHeader


def is_dicom_bytes(head: bytes) -> bool:
    """True when ``head`` (the first 132+ bytes of a file) has the Part-10 ``DICM`` marker at 128."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def parse_dicom_date(value: object) -> dt.date | None:
    """A DICOM DA value (``YYYYMMDD``, or the old ``YYYY.MM.DD``) as a date; ``None`` if absent or invalid."""
    text = str(value or "").strip().replace(".", "").replace("-", "")
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def _get(ds, keyword: str):
    """The value of ``keyword`` or ``None``; an unparseable value counts as absent."""
    try:
        value = ds.get(keyword)
    except Exception:  # an invalid value in a header field we only read for metadata
        return None
    if value is None or value == "":
        return None
    return value


def _first(value):
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return value[0] if len(value) else None
    return value


def _as_float(value) -> float | None:
    try:
        value = _first(value)
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _as_int(value) -> int | None:
    number = _as_float(value)
    if number is None or not np.isfinite(number):
        return None
    return int(round(number))


def _text(value) -> str:
    value = _first(value)
    return "" if value is None else str(value).strip()


def _phi_values(ds) -> tuple[str, ...]:
    values: list[str] = []
    try:
        patient = ds.group_dataset(0x0010)
        elements = list(patient.elements())
    except Exception:
        elements = []
    for element in elements:
        try:
            if element.VR == "SQ":
                continue
            value = element.value
            if isinstance(value, (bytes, bytearray)):
                value = value.decode("latin-1", "ignore")
            if value is None:
                continue
            if isinstance(value, str) or not isinstance(value, Iterable):
                values.append(str(value))
            else:
                values.extend(str(v) for v in value)
        except Exception:
            continue
    for keyword in _PHI_KEYWORDS:
        value = _get(ds, keyword)
        if value is not None:
            values.append(str(value))
    return tuple(v for v in values if v.strip())


def _header(ds) -> DicomHeader:
    patient_id = _get(ds, "PatientID")
    return DicomHeader(
        modality=_text(_get(ds, "Modality")),
        study_date=parse_dicom_date(_get(ds, "StudyDate")),
        acquisition_date=parse_dicom_date(_get(ds, "AcquisitionDate")),
        instance_number=_as_int(_get(ds, "InstanceNumber")),
        slice_location=_as_float(_get(ds, "SliceLocation")),
        view_position=_text(_get(ds, "ViewPosition")),
        series_description=_text(_get(ds, "SeriesDescription")),
        window_center=_as_float(_get(ds, "WindowCenter")),
        window_width=_as_float(_get(ds, "WindowWidth")),
        photometric=_text(_get(ds, "PhotometricInterpretation")).upper(),
        study_uid=_text(_get(ds, "StudyInstanceUID")) or None,
        patient_id=(str(patient_id).strip() or None) if patient_id is not None else None,
    )


def _native_pixels(ds, photometric: str, frames: int) -> np.ndarray | None:
    """Uncompressed little-endian greyscale pixels read in place, exactly as pydicom decodes them.

    Returns ``None`` whenever any condition for that equivalence is not certain; the caller then
    uses ``ds.pixel_array``, which also raises the precise error for malformed data.
    """
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) or "PixelData" not in ds:
        return None
    if photometric not in MONOCHROME:
        return None
    try:
        samples = int(ds.get("SamplesPerPixel", 1))
        allocated = int(ds.BitsAllocated)
        stored = int(ds.BitsStored)
        representation = int(ds.PixelRepresentation)
        rows, cols = int(ds.Rows), int(ds.Columns)
        data = ds.PixelData
    except Exception:
        return None
    if samples != 1 or allocated not in (8, 16, 32) or not 1 <= stored <= allocated or representation not in (0, 1):
        return None
    if not (0 < rows < 2**16 and 0 < cols < 2**16 and frames >= 1) or not isinstance(data, bytes):
        return None
    count = rows * cols * frames
    expected = count * allocated // 8
    if len(data) not in (expected, expected + expected % 2):
        return None
    dtype = np.dtype(f"<{'i' if representation else 'u'}{allocated // 8}")
    arr = np.frombuffer(data, dtype=dtype, count=count)
    if stored < allocated:
        # pydicom clears (or sign-extends) the unused high bits of native data; that is a no-op
        # when every value already lies in the stored range, which two read-only passes confirm.
        shift = allocated - stored
        low = -(1 << (stored - 1)) if representation else 0
        high = (1 << (stored - 1)) - 1 if representation else (1 << stored) - 1
        if int(arr.max()) > high or int(arr.min()) < low:
            arr = np.right_shift(np.left_shift(arr, shift), shift)
    return arr.reshape((frames, rows, cols) if frames > 1 else (rows, cols))


def _stored_range(ds) -> tuple[float, float]:
    bits = int(_get(ds, "BitsStored") or _get(ds, "BitsAllocated") or 16)
    if int(_get(ds, "PixelRepresentation") or 0):
        return -float(2 ** (bits - 1)), float(2 ** (bits - 1) - 1)
    return 0.0, float(2**bits - 1)


def _modality(arr: np.ndarray, ds) -> tuple[np.ndarray, tuple[float, float]]:
    """Modality values as float32 (pydicom's ``apply_modality_lut`` semantics) and their full range."""
    from pydicom.pixels import apply_modality_lut

    lo, hi = _stored_range(ds)
    if ds.get("ModalityLUTSequence"):
        out = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
        depth = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return out, (0.0, float(2**depth - 1))
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        bounds = sorted((lo * slope + intercept, hi * slope + intercept))
        exact = (
            arr.dtype.kind in "ui" and arr.dtype.itemsize <= 2 and slope.is_integer() and intercept.is_integer()
            and 65536 * abs(slope) + abs(intercept) < _FLOAT32_EXACT
        )
        if exact:  # integer arithmetic below 2**24 is exact in float32: same values, one pass
            if slope != 1.0:
                out = np.multiply(arr, np.float32(slope), dtype=np.float32)
                if intercept != 0.0:
                    out += np.float32(intercept)
            elif intercept != 0.0:
                out = np.add(arr, np.float32(intercept), dtype=np.float32)
            else:
                out = arr.astype(np.float32)
        else:
            out = apply_modality_lut(arr, ds).astype(np.float32)
        return out, (bounds[0], bounds[1])
    return arr.astype(np.float32), (lo, hi)


def _pixels(ds, header: DicomHeader) -> tuple[np.ndarray, DicomHeader]:
    photometric = header.photometric
    frames = int(_get(ds, "NumberOfFrames") or 1)
    arr = _native_pixels(ds, photometric, frames)
    if arr is None:
        arr = ds.pixel_array
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
    colour = arr.ndim == (4 if frames > 1 else 3)
    if colour:
        if arr.shape[-1] == 4:  # palette with alpha
            arr = arr[..., :3]
        out = arr.astype(np.float32)
    else:
        out, (lo, hi) = _modality(arr, ds)
        if photometric == "MONOCHROME1":
            centre = np.float32(lo + hi)
            np.subtract(centre, out, out=out)
            if header.window_center is not None:
                header = _replace_window(header, float(centre) - header.window_center)
    if out.ndim == (3 if colour else 2):
        out = out[np.newaxis]
    return np.ascontiguousarray(out, dtype=np.float32), header


def _replace_window(header: DicomHeader, centre: float) -> DicomHeader:
    from dataclasses import replace

    return replace(header, window_center=centre)


def _explain(exc: BaseException, ds) -> str:
    """A plain statement of why pixel decoding failed and what to do about it."""
    text = " ".join(str(exc).split())
    if isinstance(exc, AttributeError) and "no pixel data" in text.lower().replace("'", ""):
        return (
            "the DICOM file holds no image (no Pixel Data element: a report, structure set, plan or "
            "DICOMDIR). Move it out of the dataset folder if it is not an image."
        )
    if "less than expected" in text:
        return f"the pixel data is truncated ({text}). The file is damaged: copy or export it again from its source."
    if "Transfer Syntax UID" in text:
        return (
            "its file meta information has no Transfer Syntax UID, so its pixel data cannot be interpreted. "
            "Re-export the file with a standard DICOM writer."
        )
    if "Unable to decode" in text or "plugin" in text.lower() or isinstance(exc, NotImplementedError):
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", "unknown transfer syntax")
        detail = text.split("plugins:", 1)[-1].strip()[:240]
        return (
            f"no installed decoder could decode its {name} pixel data ({detail}). The data may be damaged or use "
            "a variant the pylibjpeg plugins do not support: convert the file to an uncompressed transfer syntax "
            "(e.g. 'gdcmconv --raw') and ingest again."
        )
    return (
        f"its pixel data could not be decoded ({type(exc).__name__}: {text[:300]}). Check the image "
        "attributes (Rows, Columns, Bits Allocated, Photometric Interpretation) or re-export the file."
    )


def read_dicom(path: str | Path | BinaryIO, *, name: str | None = None) -> DicomImage:
    """Decode the DICOM file at ``path`` (or an open binary file) into float32 frames and its header.

    ``name`` (the path relative to the dataset root) is how messages refer to the file. Raises
    ``DecodeError`` when the file is not Part-10 DICOM, has no image or cannot be decoded; messages
    never contain header values.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    label = name or Path(getattr(path, "name", path)).name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warnings may quote header values
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:
            raise DecodeError(
                f"{label}: not a DICOM file (no 'DICM' marker after the 128-byte preamble) and not a "
                "PNG/NPY/TIFF image. Convert it, or move it out of the dataset folder."
            ) from None
        except OSError as exc:
            raise DecodeError(
                f"{label}: could not be read ({exc.strerror or type(exc).__name__}). Check the file and its "
                "permissions."
            ) from None
        except Exception as exc:
            raise DecodeError(
                f"{label}: the DICOM header could not be parsed ({type(exc).__name__}). The file is "
                "damaged or not standard DICOM: export it again from its source."
            ) from None
        header = _header(ds)
        try:
            frames, header = _pixels(ds, header)
        except Exception as exc:
            raise DecodeError(redact(f"{label}: {_explain(exc, ds)}", _phi_values(ds))) from None
    return DicomImage(frames=frames, header=header)
