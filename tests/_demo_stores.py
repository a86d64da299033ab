"""Demo datasets ingested once per test process and shared by the test modules that need them.

Generating and ingesting a demo takes ~10 s, so every module asks ``demo_store(factory, name, ...)``
for the same store instead of building its own. Tests that write feature tables they compare
should take ``core_copy(store, dest)``: a fresh store holding only the core tables (scans, pairs,
datasets) and the secret, whose pixels are read from the shared demo folders.
"""

from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["demo_store", "core_copy"]

_STORE = {}


def demo_store(tmp_path_factory, *datasets: str):
    """The process-wide demo store with ``datasets`` generated and ingested (each only once)."""
    from store.ingest import ingest_dataset
    from store.layout import open_store

    if "store" not in _STORE:
        _STORE["store"] = open_store(tmp_path_factory.mktemp("demo-store"))
        _STORE["ingested"] = set()
    store = _STORE["store"]
    for name in datasets:
        if name not in _STORE["ingested"]:
            ingest_dataset(store, name, progress=False)
            _STORE["ingested"].add(name)
    return store


def core_copy(store, dest: Path, *, artifacts: bool = False):
    """A new store at ``dest`` with ``store``'s core tables and secret (no feature tables).

    ``artifacts`` copies the artifacts too (trained networks, vocabularies, imported weights).
    """
    from store.layout import open_store

    copy = open_store(dest)
    if artifacts and store.artifacts_dir.is_dir():
        shutil.copytree(store.artifacts_dir, copy.artifacts_dir, dirs_exist_ok=True)
    for table in ("scans", "pairs", "datasets", "volumes", "volume_pairs"):
        source = store.tables_dir / table
        if source.is_dir():
            shutil.copytree(source, copy.tables_dir / table, ignore=shutil.ignore_patterns(".lock", ".tmp-*"))
    if store.secret_path.exists():
        shutil.copy2(store.secret_path, copy.secret_path)
    return copy
