"""Attacks on the command line's promises: exit statuses and output to a reader that went away."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import cli
from tests.conftest import REPO


def test_internal_error_exits_3_with_the_traceback_in_the_store_log(tmp_path, monkeypatch, capsys):
    store = tmp_path / "store"
    store.mkdir()

    def broken(args):
        raise KeyError("a bug deep inside")

    monkeypatch.setattr(cli, "cmd_tables", broken)
    status = cli.main(["tables", "--store", str(store)])
    err = capsys.readouterr().err

    assert status == 3  # 1 means "finished, some inputs failed": a bug must not look like that
    assert "Traceback" not in err and "a bug deep inside" not in err
    logs = list((store / "logs").glob("chronofeat-error-*.log"))
    assert len(logs) == 1 and str(logs[0]) in err
    text = logs[0].read_text()
    assert "Traceback" in text and "KeyError" in text and "a bug deep inside" in text
    assert stat.S_IMODE(logs[0].stat().st_mode) == 0o600


def test_a_chronofeat_error_still_exits_2_without_a_log(tmp_path, capsys):
    store = tmp_path / "store"
    status = cli.main(["show", "no_such_table", "--store", str(store)])
    assert status == 2
    assert "no_such_table" in capsys.readouterr().err
    assert not (store / "logs").exists()


def test_output_to_a_closed_pipe_ends_quietly(tmp_path):
    """``cli.py tables | head -1``: the reader may be gone before we write; no traceback, no noise."""
    env = {**os.environ, "CHRONOFEAT_NO_BOOTSTRAP": "1"}
    for _ in range(3):
        child = subprocess.Popen(
            [sys.executable, str(REPO / "cli.py"), "tables", "--store", str(tmp_path / "store")],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        child.stdout.close()  # the reader went away before the first line was written
        err = child.stderr.read().decode()
        status = child.wait(timeout=120)
        assert "Traceback" not in err and "BrokenPipeError" not in err, err
        assert err == ""
        assert status == 141
