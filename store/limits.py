"""The decoding budget: how much memory one image file may take once decoded, checked before decoding.

A header states an image's size (DICOM Rows, Columns, Samples per Pixel, Number of Frames; a PNG's or
TIFF's dimensions; an ``.npy`` header's shape). A tiny crafted file can claim billions of pixels, and a
decoder would allocate them before noticing the data is missing. Every reader in ``store`` compares
the claimed size, counted as the float32 frames ``store.pixels`` builds, with the budget first and
raises ``ResourceLimitError`` (stating the numbers) instead of decoding.

The budget is ``DEFAULT_MAX_DECODED_MB`` MiB, or ``$CHRONOFEAT_MAX_DECODED_MB``, or what a caller
passes (``cli.py ingest --max-decoded-mb``).
"""

from __future__ import annotations

import os

from features.errors import ParameterError, ResourceLimitError

__all__ = ["DEFAULT_MAX_DECODED_MB", "MAX_DECODED_ENV", "FLOAT32_BYTES", "max_decoded_bytes", "check_decoded_size"]

DEFAULT_MAX_DECODED_MB = 1024
MAX_DECODED_ENV = "CHRONOFEAT_MAX_DECODED_MB"
FLOAT32_BYTES = 4
_MIB = 1 << 20


def max_decoded_bytes(megabytes: float | None = None) -> int:
    """The budget in bytes: ``megabytes`` MiB when given, else ``$CHRONOFEAT_MAX_DECODED_MB``, else the default.

    Raises ``ParameterError`` for a value that is not a positive number.
    """
    source = "max_decoded_mb"
    if megabytes is None:
        text = os.environ.get(MAX_DECODED_ENV, "").strip()
        if not text:
            return DEFAULT_MAX_DECODED_MB * _MIB
        source = MAX_DECODED_ENV
        try:
            megabytes = float(text)
        except ValueError:
            megabytes = float("nan")
    if not isinstance(megabytes, (int, float)) or not megabytes > 0 or megabytes == float("inf"):
        raise ParameterError(
            f"{source}={megabytes!r} is not a usable decoding budget: give a positive number of MiB "
            f"(default {DEFAULT_MAX_DECODED_MB})."
        )
    return int(megabytes * _MIB)


def check_decoded_size(
    label: str, *, frames: int, rows: int, cols: int, samples: int = 1, budget: int | None = None
) -> None:
    """Raise ``ResourceLimitError`` naming ``label`` when ``frames`` x ``rows`` x ``cols`` x ``samples``
    float32 values exceed ``budget`` bytes (``None``: ``max_decoded_bytes()``); return otherwise.

    Sizes that are not positive are left to the decoder, which reports them precisely.
    """
    limit = max_decoded_bytes() if budget is None else budget
    if min(frames, rows, cols, samples) < 1:
        return
    needed = frames * rows * cols * samples * FLOAT32_BYTES
    if needed <= limit:
        return
    needed_mb = -(-needed // _MIB)
    size = f"{needed / (1 << 30):.1f} GiB" if needed >= 1 << 30 else f"{needed_mb} MiB"
    raise ResourceLimitError(
        f"{label}: decoding it would take {size} ({frames} frame(s) x {rows} x {cols} pixels x {samples} "
        f"sample(s) x {FLOAT32_BYTES} bytes as float32), over the decoding budget of {limit / _MIB:g} MiB; it was "
        "not decoded. If the image is genuine, run again with --max-decoded-mb "
        f"{needed_mb} (or set {MAX_DECODED_ENV}); otherwise its header is damaged or crafted: remove the file."
    )
