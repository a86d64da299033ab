"""The store's pseudonym secret: created once, kept private, and never silently replaced.

Subject keys and date shifts are HMACs under ``<store>/secret``. A different secret turns every
PatientID into a new subject, so the same patient would sit twice in ``scans`` (pairs vanish, grouped
splits stop being grouped). To catch that, the store records the secret's keyed fingerprint
(``secret_fingerprint``) in ``<store>/secret.fingerprint`` when it creates the secret,
and the ingest writes it into the metadata of every ``scans``/``pairs``/ingest-index part
(``chronofeat.secret_fingerprint``). ``load_secret``:

* creates a secret only while the store holds no pseudonymised data (no scans/pairs parts, no ingest
  index parts, no recorded fingerprint), atomically and with mode 0600;
* otherwise raises ``SecretMismatchError`` when the secret is missing or its fingerprint differs from
  the recorded one (file, or the newest scans/pairs/index part), saying how to restore it;
* tightens a secret readable by group or others back to 0600 and warns on stderr: the key is still the
  right one (refusing would block work without undoing any exposure, and 'chmod 600' is all the user
  could do), but whoever could read it could reverse the pseudonyms by trying PatientIDs, which the
  warning says. A secret it cannot make private (not its owner) is refused with the chmod to run.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import stat
import sys
import uuid
from pathlib import Path

from features.errors import DamagedPartError, SecretMismatchError, StoreError
from store._fs import fsync_dir
from store.layout import Store
from store.tables import PART_GLOB, part_kv_metadata

__all__ = [
    "load_secret", "recorded_fingerprints", "pseudonymised_data", "secret_fingerprint", "SECRET_BYTES",
    "SECRET_FINGERPRINT_KEY",
]

SECRET_BYTES = 32
SECRET_FINGERPRINT_KEY = "chronofeat.secret_fingerprint"
_MIN_BYTES = 16
_FINGERPRINT = re.compile(r"^[0-9a-f]{16}$")
_PSEUDONYMISED_TABLES = ("scans", "pairs")


def secret_fingerprint(key: bytes) -> str:
    """A short public fingerprint of the store secret ``key``: HMAC-SHA256 of a fixed label under it, 16 hex
    characters. It tells whether two parts were written under the same secret without revealing it."""
    return hmac.new(key, b"chronofeat.secret-fingerprint", hashlib.sha256).hexdigest()[:16]


def _index_tables(store: Store) -> list[Path]:
    """Folders of the datasets' private ingest indexes (``<store>/ingest/tables/*``)."""
    folder = store.root / "ingest" / "tables"
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def _pseudonymised_folders(store: Store) -> list[Path]:
    return [store.tables_dir / name for name in _PSEUDONYMISED_TABLES] + _index_tables(store)


def pseudonymised_data(store: Store) -> list[str]:
    """What in ``store`` was made with its secret: ``scans``/``pairs`` tables, ingest index tables
    (``ingest/<name>``), the recorded fingerprint file. Empty for a fresh store."""
    found = []
    for folder in _pseudonymised_folders(store):
        if folder.is_dir() and any(folder.glob(PART_GLOB)):
            found.append(folder.name if folder.parent == store.tables_dir else f"ingest/{folder.name}")
    if store.secret_fingerprint_path.exists():
        found.append(store.secret_fingerprint_path.name)
    return found


def _part_fingerprint(part: Path) -> str | None:
    try:
        return part_kv_metadata(part).get(SECRET_FINGERPRINT_KEY) or None
    except (DamagedPartError, FileNotFoundError):  # a damaged part is named by the readers and by 'check'
        return None


def recorded_fingerprints(store: Store) -> dict[str, str]:
    """Where a fingerprint of the store's secret is recorded -> that fingerprint.

    Keys: ``secret.fingerprint`` (the file) and ``<table>/<part>`` for the newest readable part of
    ``scans``, ``pairs`` and each ingest index that carries ``chronofeat.secret_fingerprint``.
    """
    found: dict[str, str] = {}
    path = store.secret_fingerprint_path
    if path.exists():
        found[path.name] = path.read_text(encoding="ascii", errors="replace").strip()
    for folder in _pseudonymised_folders(store):
        if not folder.is_dir():
            continue
        for part in sorted(folder.glob(PART_GLOB), reverse=True):
            value = _part_fingerprint(part)
            if value is not None:
                found[f"{folder.name}/{part.name}"] = value
                break
    return found


def _write_atomically(path: Path, data: bytes) -> bool:
    """Create ``path`` holding ``data`` (mode 0600) unless it exists; True when this call created it.

    The bytes go to a temporary file first and are hard-linked into place, so no reader ever sees a
    partial file and the first of two racing writers wins.
    """
    tmp = path.with_name(f".{path.name}-{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
            created = True
        except FileExistsError:
            created = False
        except OSError:  # a file system without hard links: exclusive create instead
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                created = False
            else:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                created = True
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return created


def _restore_advice(store: Store) -> str:
    return (
        f"Restore the file 'secret' from a backup of this store into {store.root}, then run the command again; "
        f"or, to start anew, move the whole store aside (e.g. mv {store.root} {store.root}.old) and ingest again."
    )


def _keep_private(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if not mode & 0o077:
        return
    try:
        os.chmod(path, 0o600)
    except OSError as exc:
        raise StoreError(
            f"The store secret {path} is readable by other users (mode {mode:04o}) and cannot be made private "
            f"({exc.strerror}). Run 'chmod 600 {path}' as its owner, then run the command again."
        ) from None
    print(
        f"chronofeat: warning: the store secret {path} was readable by other users (mode {mode:04o}); it is now 0600. "
        "Whoever read it could link subject keys back to PatientIDs: if that matters, start a new store.",
        file=sys.stderr, flush=True,
    )


def _read_key(path: Path) -> bytes:
    if not path.is_file():
        raise StoreError(f"The store secret {path} is not a regular file. {_restore_hint(path)}")
    key = path.read_bytes()
    if len(key) < _MIN_BYTES:
        raise SecretMismatchError(
            f"The store secret {path} is truncated ({len(key)} bytes). Subject pseudonyms depend on it. "
            f"{_restore_hint(path)}"
        )
    return key


def _restore_hint(path: Path) -> str:
    return f"Restore it from a backup of this store; delete it only if the store holds no subjects yet ({path.parent})."


def load_secret(store: Store) -> bytes:
    """The secret of ``store`` (bytes), created on first use; see the module docstring for the rules.

    Raises ``SecretMismatchError`` (the message says what happened and how to restore it) when the
    store holds pseudonymised data and the secret is missing, truncated or not the one recorded.
    """
    path = store.secret_path
    if not path.exists():
        existing = pseudonymised_data(store)
        if existing:
            recorded = sorted(set(recorded_fingerprints(store).values()))
            which = f" (the right one has fingerprint {', '.join(recorded)})" if recorded else ""
            raise SecretMismatchError(
                f"The store secret {path} is missing, but the store already holds pseudonymised data "
                f"({', '.join(existing)}). A new secret would give every PatientID a new subject key, so each "
                f"patient would become two subjects. {_restore_advice(store)}{which}"
            )
        store.root.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, secrets.token_bytes(SECRET_BYTES))
    _keep_private(path)
    key = _read_key(path)
    fingerprint = secret_fingerprint(key)
    recorded = recorded_fingerprints(store)
    file_value = recorded.get(store.secret_fingerprint_path.name)
    if file_value is not None and not _FINGERPRINT.match(file_value):
        raise StoreError(
            f"The fingerprint file {store.secret_fingerprint_path} is damaged (it should hold 16 hex digits). "
            "If the 'secret' beside it is this store's original, delete the fingerprint file and run again "
            "(it is recorded anew and checked against the tables' parts)."
        )
    differing = {where: value for where, value in recorded.items() if value != fingerprint}
    if differing:
        where = ", ".join(f"{value} in {place}" for place, value in sorted(differing.items()))
        raise SecretMismatchError(
            f"The store secret {path} (fingerprint {fingerprint}) is not the one this store's data was "
            f"pseudonymised with (recorded: {where}). Subject keys made with it would not match the stored ones, "
            f"so the same patient would become two subjects. {_restore_advice(store)}"
        )
    if file_value is None:
        _write_atomically(store.secret_fingerprint_path, (fingerprint + "\n").encode("ascii"))
    return key
