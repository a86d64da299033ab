"""The effective options of the command being run, recorded with what it writes.

``cli.py`` runs every command inside ``recording_options(args)``; for the commands that take
``--config`` (``extract``, ``fit``) the options -- file and command line merged, without those that
only say where or how to run (``NOT_IN_CONFIG``) -- are then available through ``recorded_options()``
to the writers of runs (``store.runs.RunRecorder``: ``runs.config["cli"]``) and of feature-table parts
(``extractors.runner.extraction_metadata``: ``chronofeat.cli``). The Python API records nothing.
This module holds no I/O, so every writer can import it (``store.config_files`` reads and writes the files).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

__all__ = ["NOT_IN_CONFIG", "effective_options", "recording_options", "recorded_options"]

# Options that say where or how to run the command, not what the experiment is.
NOT_IN_CONFIG = frozenset({"store", "force", "config", "dump_config", "help", "func", "command"})
_RECORDED: ContextVar[dict | None] = ContextVar("chronofeat_recorded_options", default=None)


def effective_options(options: Mapping[str, Any] | argparse.Namespace) -> dict[str, Any]:
    """A command's options (a parsed namespace or its ``vars``) without what says where or how it runs
    (``NOT_IN_CONFIG``): what ``--dump-config`` writes and runs and tables record."""
    items = vars(options) if isinstance(options, argparse.Namespace) else dict(options)
    return {k: v for k, v in items.items() if k not in NOT_IN_CONFIG and not callable(v)}


@contextmanager
def recording_options(args: argparse.Namespace) -> Iterator[None]:
    """Within the block, runs and feature-table parts written record ``args``' effective options (for
    commands that take ``--config``; other commands record nothing)."""
    if "dump_config" not in vars(args):
        yield
        return
    token = _RECORDED.set({"command": getattr(args, "command", None), "options": effective_options(args)})
    try:
        yield
    finally:
        _RECORDED.reset(token)


def recorded_options() -> dict | None:
    """``{"command": ..., "options": {...}}`` of the command being run (``recording_options``), else None."""
    current = _RECORDED.get()
    return None if current is None else {"command": current["command"], "options": dict(current["options"])}
