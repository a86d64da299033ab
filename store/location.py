"""Where a feature store may live: never inside a Python package or a git work tree that would commit it.

A store holds the pseudonym ``secret`` and tables derived from patient images. Written into the source
tree (``--store store``, the ``store/`` package) it would sit beside code that gets committed, copied
and published. So a store is refused when

* a folder at or above it (up to the top of its git work tree, else up to ``/``) holds ``__init__.py``:
  it would be inside a Python package; or
* it lies inside a git work tree and git does not ignore it (``git check-ignore``): ``git add`` would
  pick up its secret and tables. A store git ignores (``./featurestore`` is in this project's
  ``.gitignore``) is fine. When git cannot be asked (not installed, timeout) only the first rule applies.

``--force`` (``open_store(..., force=True)``) skips both rules.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from features.errors import UnsafeLocationError

__all__ = ["check_store_location", "git_work_tree"]

GIT_TIMEOUT_S = 5.0


def git_work_tree(path: Path) -> Path | None:
    """The top folder of the git work tree holding ``path`` (found by its ``.git`` entry), else ``None``."""
    for folder in (path, *path.parents):
        if (folder / ".git").exists():
            return folder
    return None


def _nearest_existing(path: Path) -> Path:
    for folder in (path, *path.parents):
        if folder.is_dir():
            return folder
    return Path(path.anchor or "/")


def _package_folder(path: Path, top: Path | None) -> Path | None:
    """The first folder at or above ``path`` (up to ``top`` inclusive) that holds ``__init__.py``."""
    for folder in (path, *path.parents):
        if (folder / "__init__.py").is_file():
            return folder
        if top is not None and folder == top:
            break
    return None


def _git_ignores(top: Path, path: Path) -> bool | None:
    """True/False when git says ``path`` (a folder under ``top``) is / is not ignored; None if git cannot say."""
    relative = path.relative_to(top).as_posix()
    target = "./" if relative == "." else relative + "/"  # the slash lets folder patterns (``featurestore/``) match
    try:
        done = subprocess.run(
            ["git", "-C", str(top), "check-ignore", "-q", "--", target],
            capture_output=True, timeout=GIT_TIMEOUT_S,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return {0: True, 1: False}.get(done.returncode)


def check_store_location(root: Path) -> None:
    """Raise ``UnsafeLocationError`` when a store at ``root`` (absolute, resolved) would sit inside a
    Python package or an unignored part of a git work tree; return ``None`` when the place is safe."""
    start = _nearest_existing(root)
    top = git_work_tree(start)
    package = _package_folder(root, top)
    advice = (
        "Choose a folder outside the source tree (e.g. --store ~/chronofeat-store or $CHRONOFEAT_STORE), "
        "or pass --force if you really mean it."
    )
    if package is not None:
        raise UnsafeLocationError(
            f"Refusing to use {root} as a feature store: it is inside the Python package {package} "
            f"(it has __init__.py), and the store would write its secret and patient-derived tables among "
            f"source files. Nothing was written. {advice}"
        )
    if top is not None and _git_ignores(top, root) is False:
        raise UnsafeLocationError(
            f"Refusing to use {root} as a feature store: it is inside the git work tree {top} and git does not "
            f"ignore it, so 'git add' would commit the store's secret and patient-derived tables. Nothing was "
            f"written. Add the folder to {top / '.gitignore'}, or {advice[0].lower()}{advice[1:]}"
        )
