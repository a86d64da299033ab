"""Subject pseudonyms and date shifting keyed by the store's secret; redaction of PHI from messages.

A subject is stored as ``HMAC-SHA256(store secret, PatientID)`` cut to 32 hex characters, never as
the raw ID. Dates never reach a table either: the ingest index keeps a study day shifted by a
per-subject offset derived from the same secret, so intervals within a subject survive and the
calendar date does not.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

__all__ = ["SUBJECT_KEY_LENGTH", "MAX_DAY_SHIFT", "subject_key", "day_shift", "redact", "Pseudonymizer"]

SUBJECT_KEY_LENGTH = 32
MAX_DAY_SHIFT = 36_525  # up to a century, so a shifted day says nothing about the calendar date
_DAY_SHIFT_DOMAIN = b"chronofeat.day-shift\0"
REDACTED = "[redacted]"


def subject_key(secret: bytes, identifier: str) -> str:
    """The pseudonym of one subject: hex HMAC-SHA256 of ``identifier`` under ``secret``, 32 characters.

    ``identifier`` is the PatientID (or a manifest's ``subject``), stripped of surrounding spaces.
    """
    digest = hmac.new(secret, identifier.strip().encode("utf-8"), hashlib.sha256).hexdigest()
    return digest[:SUBJECT_KEY_LENGTH]


def day_shift(secret: bytes, key: str) -> int:
    """A secret offset in days (``0 <= shift < MAX_DAY_SHIFT``) for the subject with pseudonym ``key``.

    Adding it to a date's ordinal hides the calendar date; subtracting it gives the date back, in
    memory only, to someone holding the store's secret.
    """
    digest = hmac.new(secret, _DAY_SHIFT_DOMAIN + key.encode("ascii"), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") % MAX_DAY_SHIFT


def redact(text: str, values: Iterable[str]) -> str:
    """``text`` with every occurrence of each of ``values`` (PHI strings, 3+ characters) replaced.

    Used on messages of third-party exceptions raised while reading a file whose header held PHI.
    Each value is also tried in its DICOM person-name parts (``Doe^John`` -> ``Doe``, ``John``).
    """
    pieces: set[str] = set()
    for value in values:
        value = str(value).strip()
        if not value:
            continue
        pieces.add(value)
        pieces.update(part.strip() for part in value.replace("=", "^").split("^"))
    for piece in sorted((p for p in pieces if len(p) >= 3), key=len, reverse=True):
        text = text.replace(piece, REDACTED)
    return text


class Pseudonymizer:
    """Subject keys and day shifts under one secret, cached (one instance per ingest run)."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._keys: dict[str, str] = {}
        self._shifts: dict[str, int] = {}

    def subject(self, identifier: str) -> str:
        """The pseudonym of ``identifier`` (see ``subject_key``)."""
        key = self._keys.get(identifier)
        if key is None:
            key = self._keys[identifier] = subject_key(self._secret, identifier)
        return key

    def shift(self, key: str) -> int:
        """The day shift of the subject with pseudonym ``key`` (see ``day_shift``)."""
        value = self._shifts.get(key)
        if value is None:
            value = self._shifts[key] = day_shift(self._secret, key)
        return value
