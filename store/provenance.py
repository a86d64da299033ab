"""Provenance recorded in every Parquet part: who produced it, with which parameters and code."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Mapping
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["canonical_json", "params_hash", "combine_hashes", "package_versions", "code_version", "part_metadata"]

TRACKED_PACKAGES = (
    "numpy", "scikit-learn", "scikit-image", "opencv-contrib-python-headless", "torch", "torchvision",
    "timm", "pydicom", "pyarrow", "duckdb", "xgboost",
)
REPO_ROOT = Path(__file__).resolve().parent.parent


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def canonical_json(value: Any) -> str:
    """Serialise ``value`` to JSON with sorted keys and no whitespace: equal values give equal text."""
    return json.dumps(_jsonable(value), sort_keys=True, separators=(",", ":"))


def params_hash(params: Mapping[str, Any], *, length: int = 12) -> str:
    """Hex SHA-256 of the canonical JSON of ``params``, cut to ``length`` characters."""
    return hashlib.sha256(canonical_json(params).encode()).hexdigest()[:length]


@lru_cache(maxsize=1)
def combine_hashes(*hex_digests: str) -> str:
    """One SHA-256 hex digest standing for several source pixel hashes, order-sensitive."""
    return hashlib.sha256("\0".join(hex_digests).encode()).hexdigest()


def package_versions() -> dict[str, str]:
    """Installed versions of the libraries whose behaviour changes features; absent ones are skipped."""
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


@lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit of this checkout (``+dirty`` when modified), else the package version."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if commit.returncode == 0:
            dirty = subprocess.run(
                ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True, text=True, timeout=5,
            )
            return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return "chronofeat " + metadata.version("chronofeat")
    except metadata.PackageNotFoundError:
        return "unknown"


def part_metadata(
    *, producer: str, params: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """Key-value metadata for one Parquet part (all values strings, read back by DuckDB).

    Keys: ``chronofeat.producer``, ``chronofeat.params`` (canonical JSON), ``chronofeat.params_hash``,
    ``chronofeat.packages``, ``chronofeat.code_version`` and one ``chronofeat.<key>`` per ``extra`` item.
    """
    params = dict(params or {})
    meta = {
        "chronofeat.producer": producer,
        "chronofeat.params": canonical_json(params),
        "chronofeat.params_hash": params_hash(params),
        "chronofeat.packages": canonical_json(package_versions()),
        "chronofeat.code_version": code_version(),
    }
    for key, value in (extra or {}).items():
        meta[f"chronofeat.{key}"] = value if isinstance(value, str) else canonical_json(value)
    return meta
