"""Make ``python3 cli.py ...`` work on a fresh machine: create ``.venv`` and install, then re-exec.

Standard library only: this runs before any dependency can be imported. Set
``CHRONOFEAT_NO_BOOTSTRAP=1`` to use the current interpreter as it is (e.g. inside your own env).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import venv
from pathlib import Path

__all__ = ["ensure_environment", "REQUIRED_MODULES"]

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv"
MARKER = VENV / ".chronofeat-installed"
REQUIRED_MODULES = (
    "numpy",
    "pyarrow",
    "duckdb",
    "pydicom",
    "sklearn",
    "skimage",
    "cv2",
    "torch",
    "timm",
    "tqdm",
    "pytest",
)


def _wanted_marker() -> str:
    return hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()


def _modules_present() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in REQUIRED_MODULES)


def _in_project_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def _say(text: str) -> None:
    print(f"chronofeat: {text}", file=sys.stderr, flush=True)


def ensure_environment() -> None:
    """Return when dependencies import; otherwise build/refresh ``.venv`` and re-exec this command in it."""
    if os.environ.get("CHRONOFEAT_NO_BOOTSTRAP"):
        return
    up_to_date = MARKER.exists() and MARKER.read_text().strip() == _wanted_marker()
    if _in_project_venv() and up_to_date:
        return
    if not _in_project_venv() and _modules_present() and not VENV.exists():
        return  # the user runs us from an environment of their own that has everything
    python = VENV / "bin" / "python"
    if not python.exists():
        _say(f"creating the virtual environment {VENV} (first run only) ...")
        venv.EnvBuilder(with_pip=True, clear=False).create(VENV)
    if not up_to_date:
        _say("installing chronofeat and its dependencies into .venv (first run: a few minutes) ...")
        command = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", "-e", f"{REPO}[test]"]
        result = subprocess.run(command, cwd=REPO)
        if result.returncode != 0:
            _say(
                "pip could not install the dependencies (see its message above). Check the network or "
                "package index, then run the command again; or set CHRONOFEAT_NO_BOOTSTRAP=1 and install "
                "them yourself with 'pip install -e .[test]'."
            )
            raise SystemExit(result.returncode)
        MARKER.write_text(_wanted_marker() + "\n")
    if not _in_project_venv():
        os.execv(str(python), [str(python), *sys.argv])
