"""Where things live inside a feature store directory (see DESIGN.md, "The store on disk")."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from features.errors import ParameterError, StoreError

__all__ = ["Store", "open_store", "check_table_name", "DEFAULT_STORE", "TABLE_NAME_PATTERN"]

DEFAULT_STORE = "featurestore"
TABLE_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class _Below:
    """A path under the store root, read as an attribute: ``Store.tables_dir`` is ``root / "tables"``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, store: Store | None, owner: type | None = None) -> Path | _Below:
        return self if store is None else store.root / self.name


@dataclass(frozen=True)
class Store:
    """A feature store rooted at ``root``: ``tables/``, ``artifacts/``, ``datasets/``, ``secret`` (with its
    ``secret.fingerprint``) and, once needed, ``quarantine/`` (parts moved by ``check --repair``) and ``logs/``."""

    root: Path

    tables_dir = _Below("tables")
    artifacts_dir = _Below("artifacts")
    datasets_dir = _Below("datasets")
    secret_path = _Below("secret")
    secret_fingerprint_path = _Below("secret.fingerprint")
    quarantine_dir = _Below("quarantine")

    def table_dir(self, name: str) -> Path:
        """Directory holding the Parquet parts of table ``name`` (validated, not created)."""
        check_table_name(name)
        return self.tables_dir / name

    def artifact_dir(self, kind: str) -> Path:
        """Directory of artifacts of one kind (``vocabularies``, ``models``, ``weights``...), created."""
        path = self.artifacts_dir / kind
        path.mkdir(parents=True, exist_ok=True)
        return path


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
