"""Where things live inside a feature store directory (see DESIGN.md, "The store on disk")."""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from store.errors import ParameterError, StoreError

__all__ = ["Store", "open_store", "DEFAULT_STORE", "TABLE_NAME_PATTERN"]

DEFAULT_STORE = "featurestore"
TABLE_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Store:
    """A feature store rooted at ``root``: ``tables/``, ``artifacts/``, ``datasets/`` and ``secret``."""

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

    def secret(self) -> bytes:
        """The store's random key for subject pseudonyms, created once with mode 0600."""
        path = self.secret_path
        if not path.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            key = secrets.token_bytes(32)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # another process created it first; use theirs
            else:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(key)
                    handle.flush()
                    os.fsync(handle.fileno())
        key = path.read_bytes()
        if len(key) < 16:
            raise StoreError(
                f"The store secret {path} is truncated ({len(key)} bytes). Subject pseudonyms depend on it: "
                "restore it from a backup of this store; delete it only if the store holds no subjects yet."
            )
        return key


def check_table_name(name: str) -> None:
    """Raise ``ParameterError`` unless ``name`` is a safe lower-case SQL identifier."""
    if not isinstance(name, str) or not TABLE_NAME_PATTERN.match(name):
        raise ParameterError(
            f"Table name {name!r} is not valid: use lower-case letters, digits and '_', starting with a "
            "letter, at most 63 characters."
        )


def open_store(root: str | os.PathLike | None = None, *, create: bool = True) -> Store:
    """Return the store at ``root``, else ``$CHRONOFEAT_STORE``, else ``./featurestore``.

    With ``create`` the directories are made; without it a missing store raises ``StoreError``.
    """
    chosen = Path(root or os.environ.get("CHRONOFEAT_STORE") or DEFAULT_STORE).expanduser()
    store = Store(chosen.resolve())
    if create:
        for path in (store.tables_dir, store.artifacts_dir, store.datasets_dir):
            path.mkdir(parents=True, exist_ok=True)
    elif not store.tables_dir.is_dir():
        raise StoreError(
            f"No feature store at {store.root}. Run 'python cli.py ingest --dataset NAME' to create one, "
            "or point --store / CHRONOFEAT_STORE at an existing store."
        )
    return store
