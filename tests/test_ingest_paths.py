"""Stored paths (store.paths): identifying and non-UTF-8 components become keyed markers that resolve back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from features.errors import InputError
from store.limits import check_decoded_size, max_decoded_bytes
from store.paths import (
    IdentifyingValues,
    PathResolver,
    is_marker,
    redact_components,
    redacted_tags,
    stored_path,
)

SECRET = b"s" * 32


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_identifying_components_are_redacted_and_resolve(tmp_path):
    values = IdentifyingValues(["PAT-0042", "Doe^Jane", "Doe", "Jane", "19800102"])
    files = {
        "PAT-0042/visit/a.dcm": "[redacted~",  # the ID as a folder
        "pat_0042_b/x.dcm": "[redacted~",  # case and separators do not matter
        "doe jane/scan.png": "[redacted~",  # a name
        "scans/1980-01-02.dcm": "scans/[redacted~",  # a birth date in the file name; the suffix is kept
        "plain/img1.dcm": "plain/img1.dcm",
    }
    resolver = PathResolver(tmp_path, lambda: SECRET)
    for relative, start in files.items():
        real = _touch(tmp_path / relative)
        stored = stored_path(relative, secret=SECRET, identifying=values)
        assert stored.startswith(start), stored
        assert not any(n in stored.lower() for n in ("0042", "doe", "jane", "1980"))
        assert resolver.resolve(stored) == real
    assert stored_path("scans/1980-01-02.dcm", secret=SECRET, identifying=values).endswith("].dcm")


def test_short_values_count_only_as_whole_components():
    values = IdentifyingValues(["7"])
    assert stored_path("7/a.dcm", secret=SECRET, identifying=values).startswith("[redacted~")
    assert stored_path("17/x7.dcm", secret=SECRET, identifying=values) == "17/x7.dcm"


def test_non_utf8_and_marker_shaped_names_round_trip(tmp_path):
    raw = os.fsencode(tmp_path) + b"/d\xe9p/caf\xe9.dcm"
    os.makedirs(os.path.dirname(raw))
    with open(raw, "wb") as handle:
        handle.write(b"x")
    relative = os.fsdecode(b"d\xe9p/caf\xe9.dcm")
    stored = stored_path(relative, secret=SECRET)
    stored.encode("utf-8")
    assert all(is_marker(part) for part in stored.split("/")) and stored.endswith("].dcm")
    assert PathResolver(tmp_path, lambda: SECRET).resolve(stored) == Path(os.fsdecode(raw))
    tricky = "[redacted~0123456789ab]"  # a real name shaped like a marker is marked too, so never ambiguous
    _touch(tmp_path / tricky)
    marked = stored_path(tricky, secret=SECRET)
    assert marked != tricky and PathResolver(tmp_path, lambda: SECRET).resolve(marked) == tmp_path / tricky


def test_components_redacted_for_one_file_are_redacted_for_all():
    first = stored_path("PAT-9/a.dcm", secret=SECRET, identifying=IdentifyingValues(["PAT-9"]))
    tags = redacted_tags(first)
    assert len(tags) == 1
    assert stored_path("PAT-9/junk.dcm", secret=SECRET, redacted=tags) == first.replace("a.dcm", "junk.dcm")
    assert redact_components("PAT-9/other.dcm", secret=SECRET, redacted=tags) == first.replace("a.dcm", "other.dcm")


def test_resolver_refuses_escapes_and_missing_files(tmp_path):
    resolver = PathResolver(tmp_path, lambda: SECRET)
    for bad in ("../x.dcm", "/etc/passwd", ""):
        with pytest.raises(InputError):
            resolver.resolve(bad)
    with pytest.raises(InputError, match="renamed, moved or removed"):
        resolver.resolve("[redacted~0123456789ab]/a.dcm")


def test_decoding_budget(monkeypatch):
    assert max_decoded_bytes() == 1024 << 20
    monkeypatch.setenv("CHRONOFEAT_MAX_DECODED_MB", "2")
    assert max_decoded_bytes() == 2 << 20 and max_decoded_bytes(0.5) == 1 << 19
    check_decoded_size("ok.dcm", frames=1, rows=512, cols=512, samples=1)
    with pytest.raises(Exception, match=r"big.dcm: .*4 frame\(s\) x 512 x 512 pixels"):
        check_decoded_size("big.dcm", frames=4, rows=512, cols=512, samples=1)
    monkeypatch.setenv("CHRONOFEAT_MAX_DECODED_MB", "lots")
    with pytest.raises(Exception, match="CHRONOFEAT_MAX_DECODED_MB"):
        max_decoded_bytes()
