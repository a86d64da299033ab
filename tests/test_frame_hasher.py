"""Frames hashed from their place in the file, by a helper process: same digests, and nothing lost
when the helper dies or a file changes between parsing and hashing."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

import store.ingest
from features.errors import DecodeError
from store._frame_hasher import FrameHasher
from store.dicom import read_dicom_contents
from store.digest import FileFrameContent, FrameContent
from store.ingest import _decode_chunk
from store.ingest_inputs import InputFile
from tests._ingest_samples import write_dicom

SIZE = (300, 260)  # 156,000 bytes at 16 bits: above the size from which pixel data is deferred


def _variants(tmp_path):
    """Large uncompressed greyscale files of every kind the deferred path takes."""
    rng = np.random.default_rng(11)
    values = rng.integers(0, 4096, SIZE, dtype=np.uint16)
    signed = rng.integers(-2048, 2048, SIZE)
    paths = {
        "plain": write_dicom(tmp_path / "plain.dcm", values),
        "rescaled": write_dicom(tmp_path / "rescaled.dcm", values, slope=2, intercept=-1024, window=(40, 400)),
        "monochrome1": write_dicom(tmp_path / "m1.dcm", values, photometric="MONOCHROME1", window=(900, 300)),
        "garbage_high_bits": write_dicom(tmp_path / "garbage.dcm", values | 0xF000, bits_stored=12),
        "signed12": write_dicom(tmp_path / "signed12.dcm", (signed & 0x0FFF).astype(np.int16), bits_stored=12),
        "uint8_odd": write_dicom(tmp_path / "odd.dcm", rng.integers(0, 256, (301, 261), dtype=np.uint8)),
        "multiframe": write_dicom(tmp_path / "multi.dcm", rng.integers(0, 4096, (3, *SIZE), dtype=np.uint16)),
    }
    return paths


def test_deferred_frames_hash_exactly_as_decoded_ones(tmp_path):
    for kind, path in _variants(tmp_path).items():
        eager = read_dicom_contents(path)
        deferred = read_dicom_contents(path, defer_pixels=True)
        assert all(isinstance(c, FrameContent) for c in eager.contents), kind
        assert all(isinstance(c, FileFrameContent) for c in deferred.contents), kind
        assert deferred.shape == eager.shape and deferred.header == eager.header, kind
        assert [c.sha256() for c in deferred.contents] == [c.sha256() for c in eager.contents], kind
        # and the stored integers read from the file are pydicom's own
        stack = pydicom.dcmread(path).pixel_array.reshape(eager.shape)
        for frame, content in zip(stack, deferred.contents, strict=True):
            assert np.array_equal(content.read().reshape(frame.shape), frame), kind


def test_small_compressed_or_colour_files_are_not_deferred(tmp_path):
    from pydicom.data import get_testdata_file

    small = write_dicom(tmp_path / "small.dcm", np.zeros((16, 16), np.uint16))
    colour = write_dicom(tmp_path / "rgb.dcm", np.zeros((200, 200, 3), np.uint8), photometric="RGB")
    for path in (small, colour, get_testdata_file("MR_small_RLE.dcm")):
        contents = read_dicom_contents(path, defer_pixels=True).contents
        assert all(isinstance(c, FrameContent) for c in contents), path


def test_a_file_that_shrinks_after_parsing_is_a_failure_naming_it(tmp_path):
    path = write_dicom(tmp_path / "shrinks.dcm", np.ones(SIZE, np.uint16))
    content = read_dicom_contents(path, defer_pixels=True, name="shrinks.dcm").contents[0]
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(DecodeError, match=r"shrinks\.dcm: its pixel data ends early .*--retry-failed"):
        content.sha256()


def test_decode_chunk_records_a_file_changed_under_it_and_keeps_the_rest(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    for k in range(6):
        write_dicom(tmp_path / f"s{k}.dcm", rng.integers(0, 4096, SIZE, dtype=np.uint16), instance=k + 1)
    original = store.ingest.read_contents

    def read_then_truncate(path, **kwargs):
        found = original(path, **kwargs)
        if path.name == "s2.dcm":  # the file is cut short after its header was parsed
            path.write_bytes(path.read_bytes()[:-5000])
        return found

    monkeypatch.setattr(store.ingest, "read_contents", read_then_truncate)
    items = [InputFile(f"s{k}.dcm", f"key{k}", "file", False) for k in range(6)]
    with FrameHasher(helper=True) as hasher:
        rows, failures = _decode_chunk(items, root=str(tmp_path), dataset="d", secret=b"k" * 32, hasher=hasher)
    assert sorted(r["path"] for r in rows) == ["s0.dcm", "s1.dcm", "s3.dcm", "s4.dcm", "s5.dcm"]
    assert all(r["pixel_sha256"] and len(r["pixel_sha256"]) == 64 for r in rows)
    assert [(f.path, f.error_class) for f in failures] == [("s2.dcm", "DecodeError")]
    assert "its pixel data ends early" in failures[0].message


def test_rows_are_complete_when_the_helper_process_dies(tmp_path):
    rng = np.random.default_rng(8)
    contents = []
    for k in range(24):
        path = write_dicom(tmp_path / f"f{k}.dcm", rng.integers(0, 4096, SIZE, dtype=np.uint16))
        contents.append(read_dicom_contents(path, defer_pixels=True).contents[0])
    expected = [c.sha256() for c in contents]
    rows = [{} for _ in contents]
    with FrameHasher(helper=True) as hasher:
        for k, (row, content) in enumerate(zip(rows, contents, strict=True)):
            hasher.add(row, content)
            if k == 9:
                hasher._process.kill()  # as the OOM killer would
                hasher._process.wait()
        assert hasher.finish() == []
        assert not hasher.helper  # what follows is hashed here
    assert [row["pixel_sha256"] for row in rows] == expected


def test_a_script_without_a_main_guard_runs_once(tmp_path):
    """The helper is a plain subprocess: unlike multiprocessing children it never re-runs the caller's script."""
    import subprocess
    import sys
    from pathlib import Path

    from store.cores import usable_cores

    if usable_cores() < 2:
        pytest.skip("one core: ingestion hashes everything itself, no helper to start")
    rng = np.random.default_rng(5)
    for k in range(6):
        write_dicom(tmp_path / "data" / f"s{k}.dcm", rng.integers(0, 4096, SIZE, dtype=np.uint16), instance=k + 1)
    script = tmp_path / "unguarded.py"
    script.write_text(
        f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})\n"
        f"open({str(tmp_path / 'runs.txt')!r}, 'a').write('ran\\n')\n"
        "import store._frame_hasher as fh\n"
        "starts = []\n"
        "original = fh.FrameHasher._start\n"
        "fh.FrameHasher._start = lambda self: starts.append(original(self)) or starts[-1]\n"
        "from store.ingest import ingest_dataset\n"
        "from store.layout import open_store\n"
        f"summary = ingest_dataset(open_store({str(tmp_path / 'store')!r}), 'g', root={str(tmp_path / 'data')!r}, "
        "progress=False)\n"
        "print(summary.ingested, starts)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["6", "[True]"]
    assert (tmp_path / "runs.txt").read_text() == "ran\n"
