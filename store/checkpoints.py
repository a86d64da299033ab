"""Training checkpoints in the store, so an interrupted training resumes where it stopped.

``<store>/checkpoints/<name>/<key>.pt`` holds one training's latest state (model, optimizer, epoch,
random-number-generator state, early-stopping state ...) as a ``torch.save`` dictionary. ``key`` is a
hash of everything that defines the training (data identity, parameters, seed): a changed parameter
is a different key, so a checkpoint is never resumed into another configuration. Each save writes a
temporary file, fsyncs it, renames it over the previous checkpoint and fsyncs the directory, so a
SIGKILL at any moment leaves either the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from features.errors import ParameterError, StoreError
from store._fs import write_atomically
from store.layout import Store

__all__ = ["checkpoint_path", "save_checkpoint", "load_checkpoint", "remove_checkpoint", "list_checkpoints"]

_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")


def _check(value: str, what: str) -> str:
    if not isinstance(value, str) or not _SAFE.match(value) or value.startswith("."):
        raise ParameterError(
            f"Checkpoint {what} {value!r} is not valid: use letters, digits, '_', '-' or '.', at most 80 characters."
        )
    return value


def checkpoint_path(store: Store, name: str, key: str) -> Path:
    """Where the checkpoint of training ``name`` (e.g. ``siamese``) with config hash ``key`` lives."""
    return store.root / "checkpoints" / _check(name, "name") / f"{_check(key, 'key')}.pt"


def save_checkpoint(store: Store, name: str, key: str, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) as the checkpoint; atomic; return its path."""
    import torch

    path = checkpoint_path(store, name, key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda tmp: torch.save(state, tmp))
    except OSError as exc:
        raise StoreError(
            f"Cannot write training checkpoint {path}: {exc}. Free disk space or fix permissions."
        ) from exc
    return path


def load_checkpoint(store: Store, name: str, key: str) -> dict[str, Any] | None:
    """The saved state of training ``name``/``key``, or None when there is none.

    Loaded with ``weights_only=True`` (plain data only) onto the CPU. A file that cannot be read
    raises ``StoreError`` naming it, so a damaged checkpoint is deleted on purpose, not ignored.
    """
    import torch

    path = checkpoint_path(store, name, key)
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as handle:
            return torch.load(handle, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad file
        raise StoreError(
            f"The training checkpoint {path} cannot be read ({type(exc).__name__}: {exc}). Delete it to "
            "train from the start."
        ) from exc


def remove_checkpoint(store: Store, name: str, key: str) -> bool:
    """Delete the checkpoint of training ``name``/``key``; True when one was there."""
    path = checkpoint_path(store, name, key)
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


def list_checkpoints(store: Store, name: str | None = None) -> list[Path]:
    """Checkpoint files of training ``name`` (every training when None), sorted by path."""
    base = store.root / "checkpoints"
    if not base.is_dir():
        return []
    pattern = f"{_check(name, 'name')}/*.pt" if name else "*/*.pt"
    return sorted(p for p in base.glob(pattern) if not p.name.startswith(".tmp-"))
