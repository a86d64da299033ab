"""Shared fixtures: a fresh store per test and a runner for ``cli.py`` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small networks train faster on one thread, and a busy CI machine cannot make them crawl
    (use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tmp_store(tmp_path):
    """An empty feature store in a temporary directory."""
    from store.layout import open_store

    return open_store(tmp_path / "store")


def run_cli(*args: str, store=None, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python cli.py ARGS`` with this interpreter; returns the completed process (text output)."""
    full_env = {**os.environ, "CHRONOFEAT_NO_BOOTSTRAP": "1", **(env or {})}
    if store is not None:
        from store.layout import Store

        full_env["CHRONOFEAT_STORE"] = str(store.root if isinstance(store, Store) else store)  # Path.root is "/"
    return subprocess.run(
        [sys.executable, str(REPO / "cli.py"), *args],
        cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def cli():
    """The ``run_cli`` function, as a fixture."""
    return run_cli
