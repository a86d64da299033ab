"""Where things live inside a feature store directory (see DESIGN.md, "The store on disk")."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from pathlib import Path

from features.errors import ParameterError, StoreError

__all__ = ["Store", "open_store", "DEFAULT_STORE", "TABLE_NAME_PATTERN", "secret_fingerprint", "SECRET_FINGERPRINT_KEY"]

DEFAULT_STORE = "featurestore"
TABLE_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
SECRET_FINGERPRINT_KEY = "chronofeat.secret_fingerprint"


def secret_fingerprint(key: bytes) -> str:
    """A short public fingerprint of the store secret ``key``: HMAC-SHA256 of a fixed label under it, 16 hex
    characters. It tells whether two parts were written under the same secret without revealing it."""
    return hmac.new(key, b"chronofeat.secret-fingerprint", hashlib.sha256).hexdigest()[:16]


@dataclass(frozen=True)
class Store:
    """A feature store rooted at ``root``: ``tables/``, ``artifacts/``, ``datasets/``, ``secret`` (with its
    ``secret.fingerprint``) and, once needed, ``quarantine/`` (parts moved by ``check --repair``) and ``logs/``."""

    root: Path

    @property
    def tables_dir(self) -> Path:
        return self.root / "tables"

    @property
    def artifacts_dir(self) -> Path:
        return self.root / "artifacts"

    @property
    def datasets_dir(self) -> Path:
        return self.root / "datasets"

    @property
    def secret_path(self) -> Path:
        return self.root / "secret"

    def table_dir(self, name: str) -> Path:
        """Directory holding the Parquet parts of table ``name`` (validated, not created)."""
        check_table_name(name)
        return self.tables_dir / name

    def artifact_dir(self, kind: str) -> Path:
        """Directory of artifacts of one kind (``vocabularies``, ``models``, ``weights``...), created."""
        path = self.artifacts_dir / kind
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def secret_fingerprint_path(self) -> Path:
        return self.root / "secret.fingerprint"

    @property
    def quarantine_dir(self) -> Path:
        return self.root / "quarantine"

    def secret(self) -> bytes:
        """The store's random key for subject pseudonyms, created once with mode 0600.

        ``SecretMismatchError`` when the store already holds pseudonymised data and the secret is missing
        or is not the one that data was made with (see ``store.secret.load_secret``).
        """
        from store.secret import (
            load_secret,  # store.secret reads parts through store.tables: import late
        )

        return load_secret(self)


def check_table_name(name: str) -> None:
    """Raise ``ParameterError`` unless ``name`` is a safe lower-case SQL identifier."""
    if not isinstance(name, str) or not TABLE_NAME_PATTERN.match(name):
        raise ParameterError(
            f"Table name {name!r} is not valid: use lower-case letters, digits and '_', starting with a "
            "letter, at most 63 characters."
        )


def open_store(root: str | os.PathLike | None = None, *, create: bool = True, force: bool = False) -> Store:
    """Return the store at ``root``, else ``$CHRONOFEAT_STORE``, else ``./featurestore``.

    With ``create`` the directories are made, after checking the place is safe: a store inside a Python
    package or an unignored folder of a git work tree raises ``UnsafeLocationError`` (nothing written)
    unless ``force`` (see ``store.location``). Without ``create`` a missing store raises ``StoreError``.
    """
    chosen = Path(root or os.environ.get("CHRONOFEAT_STORE") or DEFAULT_STORE).expanduser()
    store = Store(chosen.resolve())
    if create:
        if not force:
            from store.location import check_store_location

            check_store_location(store.root)
        for path in (store.tables_dir, store.artifacts_dir, store.datasets_dir):
            path.mkdir(parents=True, exist_ok=True)
    elif not store.tables_dir.is_dir():
        raise StoreError(
            f"No feature store at {store.root}. Run 'python cli.py ingest --dataset NAME' to create one, "
            "or point --store / CHRONOFEAT_STORE at an existing store."
        )
    return store
