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

The header object keeps the PatientID in memory only, to derive the subject pseudonym, and the file's
identifying values (``DicomHeader.identifiers``), to redact them from the paths and messages stored about
it; when decoding fails, the file's PHI values are redacted from the message. Before any pixel data is
decoded, the size the header claims is checked against the decoding budget (``store.limits``): a file
over it raises ``ResourceLimitError`` and is never decoded. Nothing here writes anything.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import struct
import warnings
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import BinaryIO

import numpy as np
from pydicom.dataelem import RawDataElement

from features.errors import DecodeError, ResourceLimitError
from store.digest import (
    FileFrameContent,
    FrameContent,
    clear_unused_bits,
    float_content,
    stored_content,
    stored_descriptor,
)
from store.limits import check_decoded_size
from store.pseudonym import redact

__all__ = [
    "DicomContents",
    "DicomHeader",
    "DicomImage",
    "read_dicom",
    "read_dicom_contents",
    "is_dicom_bytes",
    "parse_dicom_date",
    "MONOCHROME",
]

MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
# Elements whose values are PHI or may carry it; their values are redacted from error messages.
_PHI_KEYWORDS = (
    "ReferringPhysicianName", "InstitutionName", "InstitutionAddress", "AccessionNumber",
    "PerformingPhysicianName", "OperatorsName", "StudyID",
)
# Elements whose values identify the patient: a path component, view or description holding one is redacted.
_IDENTIFYING_KEYWORDS = (
    "PatientID", "PatientName", "PatientBirthDate", "OtherPatientIDs", "OtherPatientNames", "PatientBirthName",
    "PatientMotherBirthName", "MedicalRecordLocator", "AccessionNumber", "PatientAddress",
    "PatientTelephoneNumbers",
)
_FLOAT32_EXACT = 2**24
_DEFER_BYTES = 1 << 16


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
    identifiers: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class DicomContents:
    """What ingestion keeps of a file: its header, frame-stack ``shape`` ``(n, H, W[, 3])`` and per-frame contents."""

    header: DicomHeader
    shape: tuple[int, ...]
    contents: list[FrameContent | FileFrameContent]


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


# Value representations whose raw bytes are plain ASCII (or fixed-size integers) by the standard: their
# values are read straight from the raw element, skipping pydicom's per-element conversion machinery
# (about 10 us each, a fifth of the time ingestion spends per file). Text VRs that depend on the
# Specific Character Set (LO, SH, PN...) always go through pydicom.
_ASCII_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI"})
_INT_VRS = {"US": ("H", 2), "SS": ("h", 2), "UL": ("I", 4), "SL": ("i", 4)}


@cache
def _tag_and_vr(keyword: str) -> tuple[int, str]:
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    tag = tag_for_keyword(keyword)
    return tag, dictionary_VR(tag)


def _raw_value(element, vr: str):
    """The value of a raw element of an ASCII or integer VR, as pydicom would give it (str / int / list)."""
    value = element.value
    if vr in _INT_VRS:
        code, size = _INT_VRS[vr]
        if len(value) % size:
            raise ValueError(f"{len(value)} bytes for {vr}")
        numbers = struct.unpack(f"{'<' if element.is_little_endian else '>'}{len(value) // size}{code}", value)
        return numbers[0] if len(numbers) == 1 else list(numbers)
    text = value.decode("ascii").strip(" \x00")
    if "\\" in text:
        return [part.strip(" \x00") for part in text.split("\\")]
    return text


def _get(ds, keyword: str):
    """The value of ``keyword`` or ``None``; an unparseable value counts as absent."""
    try:
        tag, dictionary_vr = _tag_and_vr(keyword)
        element = ds.get_item(tag)
        if element is None:
            return None
        if isinstance(element, RawDataElement) and isinstance(element.value, bytes):
            vr = element.VR or dictionary_vr
            if vr in _ASCII_VRS or vr in _INT_VRS:
                value = _raw_value(element, vr)
                return None if value == "" else value
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


def _values(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [str(v) for v in value if v is not None]
    return [str(value)]


def _identifiers(ds) -> tuple[str, ...]:
    """The file's identifying values as they may appear in a file or folder name: IDs whole, names whole
    and in their parts, dates as ``YYYYMMDD``, ``DDMMYYYY`` and ``MMDDYYYY``."""
    found: list[str] = []
    for keyword in _IDENTIFYING_KEYWORDS:
        for value in _values(_get(ds, keyword)):
            value = value.strip()
            if not value:
                continue
            found.append(value)
            if keyword.endswith("Name") or keyword.endswith("Names"):
                found.extend(part for part in re.split(r"[\^=\s]+", value) if part)
            date = parse_dicom_date(value) if keyword.endswith("Date") else None
            if date is not None:
                found += [date.strftime("%d%m%Y"), date.strftime("%m%d%Y")]
    try:
        for item in ds.get("OtherPatientIDsSequence") or ():
            found.extend(v.strip() for v in _values(item.get("PatientID")) if v.strip())
    except Exception:  # a malformed sequence: its values cannot be read, so they cannot be matched either
        pass
    return tuple(dict.fromkeys(found))


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
        identifiers=_identifiers(ds),
    )


def _check_budget(ds, label: str, max_bytes: int | None) -> None:
    """``ResourceLimitError`` when the frames the header claims exceed the decoding budget (``store.limits``)."""
    rows, cols = _as_int(_get(ds, "Rows")), _as_int(_get(ds, "Columns"))
    if rows is None or cols is None:
        return  # no image attributes: the decoder says what is missing
    palette = _text(_get(ds, "PhotometricInterpretation")).upper() == "PALETTE COLOR"  # one index -> RGB
    check_decoded_size(
        label, frames=_as_int(_get(ds, "NumberOfFrames")) or 1, rows=rows, cols=cols,
        samples=3 if palette else _as_int(_get(ds, "SamplesPerPixel")) or 1, budget=max_bytes,
    )


@dataclass(frozen=True)
class _NativeLayout:
    """Where and how uncompressed little-endian greyscale Pixel Data lies: ``count`` values of ``dtype``
    per frame, ``frames`` frames of ``shape``, ``bits_stored`` significant bits, the Pixel Data element."""

    dtype: np.dtype
    shape: tuple[int, int]
    frames: int
    bits_stored: int
    element: object

    @property
    def count(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes of all frames' values (the element may hold one more, padding to even length)."""
        return self.count * self.frames * self.dtype.itemsize

    def holds(self, length: int) -> bool:
        return length in (self.nbytes, self.nbytes + self.nbytes % 2)


def _native_layout(ds, photometric: str, frames: int) -> _NativeLayout | None:
    """The layout of native greyscale pixel data that pydicom would decode as is (plus the unused-bit
    correction); ``None`` whenever any condition for that is not certain (the caller then uses
    ``ds.pixel_array``, which also raises the precise error for malformed data). A deferred Pixel Data
    element is not read."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) or photometric not in MONOCHROME:
        return None
    try:
        samples = int(_get(ds, "SamplesPerPixel") or 1)
        allocated = int(_get(ds, "BitsAllocated"))
        stored = int(_get(ds, "BitsStored"))
        representation = int(_get(ds, "PixelRepresentation"))
        rows, cols = int(_get(ds, "Rows")), int(_get(ds, "Columns"))
        element = ds.get_item(0x7FE00010, keep_deferred=True)
    except Exception:
        return None
    if element is None or samples != 1 or allocated not in (8, 16, 32) or not 1 <= stored <= allocated:
        return None
    if representation not in (0, 1) or not (0 < rows < 2**16 and 0 < cols < 2**16 and frames >= 1):
        return None
    layout = _NativeLayout(
        np.dtype(f"<{'i' if representation else 'u'}{allocated // 8}"), (rows, cols), frames, stored, element
    )
    length = element.length if isinstance(element, RawDataElement) else len(element.value or b"")
    return layout if layout.holds(length) else None


def _native_pixels(ds, photometric: str, frames: int) -> np.ndarray | None:
    """Uncompressed little-endian greyscale pixels read in place, exactly as pydicom decodes them; ``None``
    where ``_native_layout`` is not certain of that."""
    layout = _native_layout(ds, photometric, frames)
    if layout is None:
        return None
    element = layout.element
    try:
        data = element.value if isinstance(element, RawDataElement) and element.value is not None else ds.PixelData
    except Exception:
        return None
    if not isinstance(data, bytes) or not layout.holds(len(data)):
        return None
    arr = np.frombuffer(data, dtype=layout.dtype, count=layout.count * frames)
    arr = clear_unused_bits(arr, bits_stored=layout.bits_stored)
    return arr.reshape((frames, *layout.shape) if frames > 1 else layout.shape)


def _file_of(path: str | Path | BinaryIO) -> tuple[str, int] | None:
    """``(file name, size in bytes)`` of a path or of a file opened from one; ``None`` for other streams."""
    try:
        if isinstance(path, (str, Path)):
            return str(path), os.stat(path).st_size
        name = getattr(path, "name", None)
        if isinstance(name, str) and hasattr(path, "fileno"):
            return name, os.fstat(path.fileno()).st_size
    except (OSError, ValueError):
        return None
    return None


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
    rescale = _rescale(ds)
    if rescale is not None:
        slope, intercept = rescale
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


def _stored(ds, header: DicomHeader) -> tuple[np.ndarray, int]:
    """The decoded stored values (pydicom's ``pixel_array``, read in place when uncompressed) and the frame count."""
    frames = int(_get(ds, "NumberOfFrames") or 1)
    arr = _native_pixels(ds, header.photometric, frames)
    if arr is None:
        arr = ds.pixel_array
    return arr, frames


def _plain_grey(ds, header: DicomHeader, arr: np.ndarray, frames: int) -> bool:
    """True when the float32 frames follow from the stored values by rescale and inversion alone."""
    return (
        header.photometric in MONOCHROME and arr.ndim == (3 if frames > 1 else 2) and arr.dtype.kind in "ui"
        and not ds.get("ModalityLUTSequence")
    )


def _rescale(ds) -> tuple[float, float] | None:
    slope, intercept = _get(ds, "RescaleSlope"), _get(ds, "RescaleIntercept")
    if slope is None or intercept is None:
        return None
    return float(_first(slope)), float(_first(intercept))


def _monochrome1_window(header: DicomHeader, bounds: tuple[float, float]) -> DicomHeader:
    """The header with its window centre mirrored as MONOCHROME1 inversion mirrors the pixels."""
    if header.photometric != "MONOCHROME1" or header.window_center is None:
        return header
    centre = float(np.float32(bounds[0] + bounds[1]))
    return _replace_window(header, centre - header.window_center)


def _floats(ds, header: DicomHeader, arr: np.ndarray, frames: int) -> tuple[np.ndarray, DicomHeader]:
    """The float32 frames ``(n, H, W[, 3])`` of stored values ``arr``, and the header to go with them."""
    photometric = header.photometric
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
            np.subtract(np.float32(lo + hi), out, out=out)
            header = _monochrome1_window(header, (lo, hi))
    if out.ndim == (3 if colour else 2):
        out = out[np.newaxis]
    return np.ascontiguousarray(out, dtype=np.float32), header


def _pixels(ds, header: DicomHeader) -> tuple[np.ndarray, DicomHeader]:
    arr, frames = _stored(ds, header)
    return _floats(ds, header, arr, frames)


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


def _open(path: str | Path | BinaryIO, label: str, *, defer: bool = False):
    """The parsed dataset at ``path``; ``DecodeError`` naming ``label`` when it is not readable DICOM.
    With ``defer`` values of 64 KiB or more (Pixel Data above all) are read only when accessed."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, defer_size=_DEFER_BYTES if defer else None)
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


@contextmanager
def _parsed(path: str | Path | BinaryIO, name: str | None, *, defer: bool = False):
    """``(ds, header)`` of the DICOM file at ``path`` (large values deferred with ``defer``); an exception
    raised inside the block becomes a ``DecodeError`` naming the file and saying why, with the file's
    PHI values redacted."""
    label = name or Path(getattr(path, "name", path)).name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warnings may quote header values
        ds = _open(path, label, defer=defer)
        try:
            yield ds, _header(ds)
        except ResourceLimitError:
            raise  # its message holds only the label and the claimed sizes
        except Exception as exc:
            raise DecodeError(redact(f"{label}: {_explain(exc, ds)}", _phi_values(ds))) from None


def read_dicom(path: str | Path | BinaryIO, *, name: str | None = None, max_bytes: int | None = None) -> DicomImage:
    """Decode the DICOM file at ``path`` (or an open binary file) into float32 frames and its header.

    ``name`` (the path relative to the dataset root) is how messages refer to the file. Raises
    ``DecodeError`` when the file is not Part-10 DICOM, has no image or cannot be decoded, and
    ``ResourceLimitError`` before decoding when its frames would exceed ``max_bytes`` as float32
    (``None``: the budget of ``store.limits``); messages never contain header values.
    """
    with _parsed(path, name) as (ds, header):
        _check_budget(ds, name or Path(getattr(path, "name", path)).name, max_bytes)
        frames, header = _pixels(ds, header)
    return DicomImage(frames=frames, header=header)


def read_dicom_contents(
    path: str | Path | BinaryIO, *, name: str | None = None, defer_pixels: bool = False, max_bytes: int | None = None
) -> DicomContents:
    """What ingestion needs of the DICOM file at ``path``: header, frame shape and each frame's hashed content.

    Greyscale frames are described by their stored integers (``store.digest.stored_content``) without
    building float32 frames; colour, palette and Modality-LUT images by their float32 frames, exactly as
    ``read_dicom`` returns them. With ``defer_pixels``, uncompressed greyscale frames of a file on disk
    are not read at all: they come back as ``FileFrameContent`` (where their bytes lie), with the same
    digests. Raises ``DecodeError`` and ``ResourceLimitError`` as ``read_dicom`` does, for the same files.
    """
    file = _file_of(path) if defer_pixels else None
    with _parsed(path, name, defer=file is not None) as (ds, header):
        label = name or Path(file[0] if file else getattr(path, "name", path)).name
        _check_budget(ds, label, max_bytes)
        deferred = _deferred_contents(ds, header, file, label) if file is not None else None
        if deferred is not None:
            return deferred
        arr, frames = _stored(ds, header)
        if not _plain_grey(ds, header, arr, frames):
            out, header = _floats(ds, header, arr, frames)
            return DicomContents(header=header, shape=tuple(out.shape), contents=[float_content(f) for f in out])
        header, mapping = _grey_mapping(ds, header)
        stack = arr if frames > 1 else arr[np.newaxis]
        contents = [stored_content(stack[i], **mapping) for i in range(stack.shape[0])]
    return DicomContents(header=header, shape=tuple(stack.shape), contents=contents)


def _grey_mapping(ds, header: DicomHeader) -> tuple[DicomHeader, dict]:
    """The header as ``read_dicom`` returns it for plain greyscale, and the keyword arguments of
    ``stored_content`` / ``stored_descriptor`` that state how stored integers map to float32."""
    rescale = _rescale(ds)
    value_range = _stored_range(ds)
    lo, hi = value_range
    if rescale is not None:
        bounds = sorted((lo * rescale[0] + rescale[1], hi * rescale[0] + rescale[1]))
        header = _monochrome1_window(header, (bounds[0], bounds[1]))
    else:
        header = _monochrome1_window(header, value_range)
    mapping = {
        "photometric": header.photometric, "slope": rescale[0] if rescale else None,
        "intercept": rescale[1] if rescale else None, "value_range": value_range,
    }
    return header, mapping


def _deferred_contents(ds, header: DicomHeader, file: tuple[str, int], label: str) -> DicomContents | None:
    """The contents of uncompressed greyscale frames as places in ``file`` (name, size), or ``None``
    where the frames are not certainly stored verbatim there (then they are decoded as usual)."""
    if ds.get_item(0x00283000, keep_deferred=True) is not None:  # Modality LUT Sequence: float32 path
        return None
    frames = int(_get(ds, "NumberOfFrames") or 1)
    layout = _native_layout(ds, header.photometric, frames)
    element = layout.element if layout is not None else None
    if not isinstance(element, RawDataElement) or element.value is not None or element.value_tell is None:
        return None
    path, size = file
    if element.value_tell + layout.nbytes > size:  # truncated: pydicom's decoder says how, on the usual path
        return None
    header, mapping = _grey_mapping(ds, header)
    descriptor = stored_descriptor(layout.dtype, layout.shape, **mapping)
    frame_bytes = layout.count * layout.dtype.itemsize
    contents = [
        FileFrameContent(
            descriptor=descriptor, path=path, name=label, offset=element.value_tell + i * frame_bytes,
            dtype=layout.dtype.str, count=layout.count, bits_stored=layout.bits_stored,
        )
        for i in range(frames)
    ]
    return DicomContents(header=header, shape=(frames, *layout.shape), contents=contents)
