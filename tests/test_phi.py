"""PatientName, PatientID and PatientBirthDate never reach the store, its logs or its messages."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.dataelem import DataElement

from features.errors import DecodeError
from store.ingest import ingest_dataset
from store.layout import open_store
from store.pixels import load_pixels
from store.pseudonym import redact
from store.tables import read_table
from tests._ingest_samples import strings_in, write_dicom

PATIENTS = {
    "PHI-ID-QXZ-7731": ("Zyqxwvuta^Quorblatt", "19230405"),
    "PHI-ID-QXZ-8842": ("Vexmorrin^Glafstone", "19310917"),
}
NEEDLES = [pid for pid in PATIENTS] + [n for name, _ in PATIENTS.values() for n in (name, *name.split("^"))] + [
    birth for _, birth in PATIENTS.values()
]


@pytest.fixture()
def phi_folder(tmp_path):
    root = tmp_path / "clinic"
    for p, (pid, (name, birth)) in enumerate(PATIENTS.items()):
        for visit, date in enumerate(("20210104", "20210301")):
            for k in range(2):
                write_dicom(root / f"patient{p}" / f"visit{visit}" / f"img{k}.dcm", np.full((8, 8), k, np.uint16),
                            patient_id=pid, patient_name=name, birth_date=birth, study_date=date, instance=k + 1)
    # a file whose broken pixel attribute holds the PatientID: pydicom's own error would quote it
    broken = write_dicom(root / "patient0" / "broken.dcm", np.zeros((4, 4), np.uint16), patient_id="PHI-ID-QXZ-7731",
                         patient_name=PATIENTS["PHI-ID-QXZ-7731"][0], birth_date="19230405")
    ds = pydicom.dcmread(broken)
    ds[0x00280008] = DataElement(0x00280008, "LO", "PHI-ID-QXZ-7731")  # NumberOfFrames
    ds.save_as(broken)
    truncated = root / "patient1" / "truncated.dcm"
    write_dicom(truncated, np.zeros((32, 32), np.uint16), patient_id="PHI-ID-QXZ-8842",
                patient_name=PATIENTS["PHI-ID-QXZ-8842"][0], birth_date="19310917")
    truncated.write_bytes(truncated.read_bytes()[:-300])
    return root


def test_no_phi_in_tables_files_logs_or_messages(tmp_path, phi_folder, capfd, caplog):
    caplog.set_level(logging.DEBUG)
    store = open_store(tmp_path / "store")
    summary = ingest_dataset(store, "clinic", root=phi_folder, progress=True)
    again = ingest_dataset(store, "clinic", root=phi_folder, progress=True, retry_failed=True)
    assert summary.ingested == 8 and summary.failed == 2 and again.skipped == 8
    assert summary.scans_rows == 8 and summary.pairs_rows > 0

    with pytest.raises(DecodeError) as raised:
        load_pixels(store, "clinic", "patient0/broken.dcm")
    messages = [str(raised.value), summary.summary_line(), again.summary_line()]
    failures = read_table(store, "failures").column("message").to_pylist()
    assert len(failures) >= 2 and any("broken.dcm" in m for m in failures)
    messages += failures

    out = capfd.readouterr()
    texts = messages + [out.out, out.err, caplog.text]
    assert "ingest clinic" in out.err  # the progress bar did write to stderr

    parquet_files = list(store.root.rglob("*.parquet"))
    assert any("scans" in str(p) for p in parquet_files) and any("ingest" in str(p) for p in parquet_files)
    for path in parquet_files:
        table = pq.read_table(path)
        for column in table.columns:
            for value in column.to_pylist():
                texts.extend(strings_in(value))
        texts.extend(v.decode("utf-8", "replace") for v in (table.schema.metadata or {}).values())
        texts.extend(str(f) for f in table.schema)
    for needle in NEEDLES:
        for text in texts:
            assert needle not in text, f"{needle!r} leaked"
        for path in store.root.rglob("*"):
            if path.is_file() and path.name != "secret":
                assert needle.encode() not in path.read_bytes(), f"{needle!r} in {path}"
    # the subject column is a keyed hash: 32 hex characters, two distinct patients
    subjects = set(read_table(store, "scans").column("subject").to_pylist())
    assert len(subjects) == 2 and all(len(s) == 32 and set(s) <= set("0123456789abcdef") for s in subjects)


def test_redact_removes_names_in_all_their_parts():
    text = "value 'Zyqxwvuta^Quorblatt' then Quorblatt alone and PHI-ID-QXZ-7731"
    cleaned = redact(text, ["Zyqxwvuta^Quorblatt", "PHI-ID-QXZ-7731"])
    assert all(n not in cleaned for n in ("Zyqxwvuta", "Quorblatt", "PHI-ID-QXZ-7731"))
    assert cleaned.count("[redacted]") == 3


def test_identifiers_in_paths_views_and_descriptions_are_redacted(tmp_path, capfd):
    (pid, (name, birth)), (other_id, _) = PATIENTS.items()
    person = {"patient_id": pid, "patient_name": name, "birth_date": birth}
    root = tmp_path / "site"
    # a folder named after the PatientID, a file named after the birth date, crafted free-text views
    write_dicom(root / pid / f"{birth}_a.dcm", np.full((8, 8), 1, np.uint16), **person,
                attributes={"ViewPosition": pid, "SeriesDescription": f"{name.replace('^', ' ')} {pid}"})
    write_dicom(root / name.replace("^", " ") / "b.dcm", np.full((8, 8), 2, np.uint16), **person,
                attributes={"ViewPosition": "AP"})
    (root / pid / "junk.dcm").write_bytes(b"no header to read " * 20)  # redacted like its folder all the same
    # a PNG named after the subject its manifest row gives
    from PIL import Image

    (root / "images").mkdir()
    Image.fromarray(np.full((6, 6), 9, np.uint8)).save(root / "images" / f"{other_id}.png")
    (root / "manifest.csv").write_text(f"path,subject\nimages/{other_id}.png,{other_id}\n")

    store = open_store(tmp_path / "store")
    summary = ingest_dataset(store, "site", root=root, progress=True)
    assert summary.ingested == 3 and summary.failed == 1
    scans = read_table(store, "scans").to_pylist()
    failures = read_table(store, "failures").to_pylist()
    assert sorted(r["view"] for r in scans) == ["", "AP", "other"]  # coded views only
    assert len(failures) == 1 and failures[0]["path"].endswith("/junk.dcm")
    # every stored path still leads to its file
    assert sorted(float(load_pixels(store, "site", r["path"]).max()) for r in scans) == [1.0, 2.0, 9.0]

    out = capfd.readouterr()
    texts = [summary.summary_line(), out.out, out.err] + [f["message"] for f in failures]
    needles = NEEDLES + [other_id]
    for needle in needles:
        for text in texts:
            assert needle not in text, f"{needle!r} leaked"
        for path in store.root.rglob("*"):
            if path.is_file() and path.name != "secret":
                data = path.read_bytes()
                assert needle.encode() not in data and needle.lower().encode() not in data, f"{needle!r} in {path}"


def test_a_folder_found_to_identify_later_is_redacted_in_earlier_rows_too(tmp_path):
    pid, (name, birth) = next(iter(PATIENTS.items()))
    root = tmp_path / "site"
    (root / pid).mkdir(parents=True)
    (root / pid / "0-junk.dcm").write_bytes(b"no header " * 30)  # decoded (and failed) before the folder is known
    write_dicom(
        root / pid / "a.dcm", np.full((4, 4), 3, np.uint16), patient_id=pid, patient_name=name, birth_date=birth
    )
    store = open_store(tmp_path / "store")
    summary = ingest_dataset(store, "site", root=root, progress=False, chunk_size=1)
    assert summary.failed == 1
    [failure] = read_table(store, "failures").to_pylist()
    [scan] = read_table(store, "scans").to_pylist()
    assert failure["path"].split("/")[0] == scan["path"].split("/")[0] != pid
    assert pid not in failure["path"] + failure["message"]
