"""Ingest a dataset folder into the ``scans`` and ``pairs`` tables (``cli.py ingest``).

Two stages, so that an interrupted run (even SIGKILL) resumes and ends with exactly the rows an
uninterrupted run writes:

1. **Index** (resumable). Files are listed in sorted order; those already indexed or already in
   ``failures`` for this dataset are skipped; the rest are decoded in chunks (in worker processes
   with ``workers > 1``) and each chunk is appended as one atomic Parquet part to the dataset's
   private index (``<store>/ingest/tables/<dataset table>/``), failures to ``failures``. An index row
   holds what the file itself says: pixel hash, size, header pseudonym, header view fields, and the
   study day *shifted by a secret per-subject offset* (no calendar date, no PHI).
2. **Derive** (quick, rerun in full every time). From the whole index plus the current
   ``manifest.csv``/``pairs.csv``: subjects (manifest ``subject``, else PatientID, pseudonymised),
   time indices (the manifest's ``time`` when given, else whole weeks/days per the layout since the
   subject's first date: manifest ``date``, else StudyDate, else AcquisitionDate; missing stays
   missing), slices (manifest ``slice``, else the frame of a multi-frame file, else InstanceNumber,
   else rank of SliceLocation), labels, then ``scans`` and ``pairs`` rows for the dataset replace
   its previous rows (read-modify-write of the shared tables under a store-wide ingest lock), and the dataset's row
   in ``datasets`` is written.

Editing the manifest and ingesting again relabels without decoding anything.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
import sys
import time
from collections import defaultdict, deque
from contextlib import contextmanager
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from store._frame_hasher import FrameHasher
from store.cores import usable_cores
from store.errors import ChronofeatError, DatasetError, DecodeError, check_param
from store.failures import Failure, record_failures
from store.layout import Store
from store.layouts import (
    DEMO_DATASETS,
    Layout,
    default_layout,
    get_layout,
    given_pairs,
    longitudinal_pairs,
    pair_id,
    scan_id,
    time_index_from_days,
)
from store.manifest import MANIFEST_NAME, PAIRS_NAME, GivenPair, Manifest, read_manifest, read_pairs_csv
from store.pixels import read_contents
from store.provenance import part_metadata
from store.pseudonym import Pseudonymizer, redact
from store.schema import DATASETS, PAIRS_CORE, SCANS_CORE
from store.tables import existing_keys, read_table, replace_table, table_exists, table_lock, write_part

__all__ = ["IngestSummary", "INDEX_SCHEMA", "ingest_dataset", "index_location", "DEFAULT_CHUNK_SIZE"]

PRODUCER = "store.ingest"
DEFAULT_CHUNK_SIZE = 128
INDEX_VERSION = 1
_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_INGEST_STAGES = ("ingest:read", "ingest:decode")

INDEX_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("frame", pa.int32()),
        ("frames", pa.int32()),
        ("kind", pa.string()),
        ("pixel_sha256", pa.string()),
        ("subject", pa.string()),  # pseudonym from the header (PatientID, else StudyInstanceUID, else path)
        ("day", pa.int32()),  # study (else acquisition) date ordinal + secret per-subject shift
        ("instance_number", pa.int32()),
        ("slice_location", pa.float64()),
        ("view_position", pa.string()),
        ("series_description", pa.string()),
        ("modality", pa.string()),
        ("rows", pa.int32()),
        ("cols", pa.int32()),
        ("channels", pa.int32()),
        ("window_center", pa.float64()),
        ("window_width", pa.float64()),
    ]
)


@dataclass(frozen=True)
class IngestSummary:
    """What one ingest run did.

    ``files`` input files = ``ingested`` (indexed by this run) + ``skipped`` (indexed before) + files
    failed (now or in an earlier run); ``failed`` also counts ``pairs.csv`` lines without scans.
    """

    dataset: str
    layout: str
    root: str
    synthetic: bool
    files: int
    ingested: int
    skipped: int
    failed: int
    scans_rows: int
    pairs_rows: int
    unpaired_slices: int
    seconds: float

    @property
    def exit_code(self) -> int:
        """1 when any input failed (see the ``failures`` table), else 0."""
        return 1 if self.failed > 0 else 0

    def summary_line(self) -> str:
        """One line for the terminal."""
        demo = ", synthetic demo stand-in" if self.synthetic else ""
        line = (
            f"ingest {self.dataset} [{self.layout}{demo}]: {self.files} files, {self.ingested} ingested, "
            f"{self.skipped} already present, {self.failed} failed; scans {self.scans_rows} rows, pairs "
            f"{self.pairs_rows} rows, {self.unpaired_slices} unpaired slices; {self.seconds:.1f}s"
        )
        if self.failed:
            line += (
                f". See: python cli.py sql \"SELECT path, message FROM failures WHERE dataset = '{self.dataset}'\""
            )
        return line


@dataclass(frozen=True)
class _Item:
    path: str
    exists: bool
    in_manifest: bool


# ----------------------------------------------------------------------------------------- locations


def index_location(store: Store, dataset: str) -> tuple[Store, str]:
    """The private index of ``dataset``: a store rooted at ``<store>/ingest`` and the table name in it."""
    slug = re.sub(r"[^a-z0-9_]", "_", dataset.lower())[:40]
    digest = hashlib.sha256(dataset.encode("utf-8")).hexdigest()[:8]
    return Store(store.root / "ingest"), f"ds_{slug}_{digest}"


def _check_dataset_name(dataset: str) -> None:
    if not isinstance(dataset, str) or not _DATASET_NAME.match(dataset):
        raise DatasetError(
            f"Dataset name {dataset!r} is not usable: use letters, digits, '_', '-' or '.', starting with a "
            "letter or digit, at most 64 characters."
        )


def _dataset_record(store: Store, dataset: str) -> dict | None:
    if not table_exists(store, "datasets"):
        return None
    table = read_table(store, "datasets")
    rows = table.filter(pc.equal(table.column("dataset"), dataset)).to_pylist()
    return rows[-1] if rows else None


def _resolve_root(root: str | os.PathLike) -> tuple[Path, Path | None]:
    """The dataset folder and its manifest file (``root`` may name the manifest CSV itself)."""
    path = Path(root).expanduser().resolve()
    if path.is_file() and path.suffix.lower() == ".csv":
        return path.parent, path
    if not path.is_dir():
        raise DatasetError(f"Dataset root {path} is not a folder (or a manifest .csv file). Check --root.")
    manifest = path / MANIFEST_NAME
    return path, (manifest if manifest.is_file() else None)


def _list_files(root: Path, layout: Layout, manifest: Manifest | None, manifest_file: Path | None) -> list[_Item]:
    """Every input file, sorted: files in the folder (hidden ones and the CSVs excluded; only ``*.dcm``
    for the DICOM layouts) plus every path the manifest lists."""
    skip = {root / MANIFEST_NAME, root / PAIRS_NAME}
    if manifest_file is not None:
        skip.add(manifest_file)
    found: set[str] = set()
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        base = Path(directory)
        for name in names:
            if name.startswith(".") or (base / name) in skip:
                continue
            if layout.dicom_only and not name.lower().endswith(".dcm"):
                continue
            found.add((base / name).relative_to(root).as_posix())
    listed = set(manifest.rows) if manifest else set()
    return [_Item(p, p in found or (root / p).is_file(), p in listed) for p in sorted(found | listed)]


# ------------------------------------------------------------------------------------------- index


def _header_fields(decoded, rel: str, pseudonyms: Pseudonymizer) -> dict:
    header = decoded.header
    if header is None:
        return {
            "subject": None, "day": None, "instance_number": None, "slice_location": None, "view_position": None,
            "series_description": None, "modality": None, "window_center": None, "window_width": None,
        }
    if header.patient_id:
        subject = pseudonyms.subject(header.patient_id)
    elif header.study_uid:
        subject = pseudonyms.subject("study-uid:" + header.study_uid)
    else:
        subject = pseudonyms.subject("file:" + rel)
    date = header.study_date or header.acquisition_date
    return {
        "subject": subject,
        "day": date.toordinal() + pseudonyms.shift(subject) if date else None,
        "instance_number": header.instance_number,
        "slice_location": header.slice_location,
        "view_position": header.view_position,
        "series_description": header.series_description,
        "modality": header.modality,
        "window_center": header.window_center,
        "window_width": header.window_width,
    }


def _failure(dataset: str, rel: str, stage: str, exc: BaseException, message: str) -> Failure:
    return Failure(
        key=scan_id(dataset, rel, 0), dataset=dataset, path=rel, stage=stage,
        error_class=type(exc).__name__, message=message,
    )


def _decode_chunk(
    items: Sequence[_Item], *, root: str, dataset: str, secret: bytes, hasher: FrameHasher | None = None
) -> tuple[list[dict], list[Failure]]:
    """Decode ``items`` (runs in a worker process or in the caller); index rows and failures back.

    ``hasher`` (kept across chunks by the caller) may hash frames on a helper process while the next
    files are parsed; without one every frame is hashed here, from memory.
    """
    if hasher is None:
        with FrameHasher() as own:
            return _decode_chunk(items, root=root, dataset=dataset, secret=secret, hasher=own)
    pseudonyms = Pseudonymizer(secret)
    rows: list[dict] = []
    failures: list[Failure] = []
    base = Path(root)
    for item in items:
        rel = item.path
        if not item.exists:
            exc = FileNotFoundError(rel)
            failures.append(_failure(dataset, rel, "ingest:read", exc, (
                f"{rel}: listed in {MANIFEST_NAME} but not found under the dataset root. Fix the path "
                "or remove the row."
            )))
            continue
        decoded = None
        try:
            decoded = read_contents(base / rel, name=rel, defer_pixels=hasher.helper)
            if decoded.kind != "dicom" and not item.in_manifest:
                raise DatasetError(
                    f"{rel}: a {decoded.kind.upper()} image needs a row in {MANIFEST_NAME} (columns path, "
                    "subject, time or date, view, label...) to say whose it is. Add the row."
                )
            fields = _header_fields(decoded, rel, pseudonyms)
        except ChronofeatError as exc:
            failures.append(_failure(dataset, rel, "ingest:decode", exc, str(exc)))
            continue
        except Exception as exc:  # a bug or an exotic file must not stop the run: record it
            phi = [decoded.header.patient_id or ""] if decoded is not None and decoded.header else []
            message = redact(
                f"{rel}: unexpected {type(exc).__name__} while reading it ({' '.join(str(exc).split())[:200]}). "
                "Check the file; report this if it is a valid image.", phi,
            )
            failures.append(_failure(dataset, rel, "ingest:decode", exc, message))
            continue
        shape = decoded.shape
        for index, content in enumerate(decoded.contents):
            row = {
                "path": rel, "frame": index, "frames": int(shape[0]), "kind": decoded.kind,
                "pixel_sha256": None, "rows": int(shape[1]), "cols": int(shape[2]),
                "channels": int(shape[3]) if len(shape) == 4 else 1, **fields,
            }
            rows.append(row)
            hasher.add(row, content)
    unhashed: dict[str, str] = {}
    for row, message in hasher.finish():
        unhashed.setdefault(row["path"], message)
    if unhashed:  # a file that changed under us: its other frames go too, so a rerun reads it whole
        rows = [row for row in rows if row["path"] not in unhashed]
        for rel, message in unhashed.items():
            failures.append(_failure(dataset, rel, "ingest:decode", DecodeError(message), message))
    return rows, failures


def _chunks(items: list[_Item], size: int) -> list[list[_Item]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


_ChunkResult = tuple[list[dict], list[Failure]]


@contextmanager
def _decoded_chunks(
    chunks: list[list[_Item]], work, workers: int
) -> Iterator[Iterator[tuple[list[_Item], _ChunkResult]]]:
    """``(chunk, work(chunk))`` for every chunk, in completion order: in this process alone, or here
    and in ``workers - 1`` worker processes.

    This process decodes too, so work starts at once while the workers start up (a fresh interpreter
    each, forkserver/spawn, so they inherit no open file, the dataset lock above all); each worker
    keeps two chunks queued so it never waits for this one.
    """
    if workers <= 1 or len(chunks) <= 1:
        yield ((chunk, work(chunk)) for chunk in chunks)
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    helpers = min(workers - 1, len(chunks) - 1)
    pool = ProcessPoolExecutor(max_workers=helpers, mp_context=context)

    def results() -> Iterator[tuple[list[_Item], _ChunkResult]]:
        queued = deque(chunks)
        running: dict[Future, list[_Item]] = {}
        while queued or running:
            while queued and len(running) < 2 * helpers:
                chunk = queued.popleft()
                running[pool.submit(work, chunk)] = chunk
            for future in [f for f in running if f.done()]:
                yield running.pop(future), future.result()
            if queued:
                chunk = queued.popleft()
                yield chunk, work(chunk)
            elif running:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield running.pop(future), future.result()

    try:
        yield results()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _spare_core(workers: int) -> bool:
    """True when ``workers`` decoding processes leave a core of this process's CPU set free (then one
    decoding process shares the hashing with a helper process, see ``store._frame_hasher``)."""
    return usable_cores() > workers


def _failed_paths(store: Store, dataset: str) -> set[str]:
    if not table_exists(store, "failures"):
        return set()
    table = read_table(store, "failures", columns=["dataset", "path", "stage"])
    mask = pc.and_(
        pc.equal(table.column("dataset"), dataset), pc.is_in(table.column("stage"), pa.array(_INGEST_STAGES))
    )
    return set(table.filter(mask).column("path").to_pylist())


def _index_metadata() -> dict[str, str]:
    return part_metadata(producer=PRODUCER, params={"index_version": INDEX_VERSION})


# ----------------------------------------------------------------------------------------- derive


def _view(row: dict, layout: Layout) -> str:
    by_keyword = {"ViewPosition": row.get("view_position"), "SeriesDescription": row.get("series_description")}
    for keyword in layout.view_keywords:
        if by_keyword.get(keyword):
            return by_keyword[keyword]
    return ""


def _derive_scans(
    index_rows: list[dict], *, dataset: str, layout: Layout, manifest: Manifest | None, pseudonyms: Pseudonymizer
) -> tuple[list[dict], str]:
    """Scan rows (core columns + the manifest's label columns) and the time unit actually used."""
    manifest_rows = manifest.rows if manifest else {}
    list_columns = set(manifest.list_columns) if manifest else {"labels"}
    extra_columns = manifest.extra_columns if manifest else ()
    scans, ordinals, manual = [], [], []
    for row in index_rows:
        entry = manifest_rows.get(row["path"])
        if entry is not None and entry.subject:
            subject = pseudonyms.subject(entry.subject)
        else:
            subject = row["subject"] or pseudonyms.subject("file:" + row["path"])
        if entry is not None and entry.date is not None:
            ordinal = entry.date.toordinal()
        elif row["day"] is not None and row["subject"]:
            ordinal = row["day"] - pseudonyms.shift(row["subject"])
        else:
            ordinal = None
        if entry is not None and entry.slice is not None:
            slice_number = entry.slice
        elif row["frames"] > 1:
            slice_number = row["frame"]
        else:
            slice_number = row["instance_number"]
        scan = {
            "scan_id": scan_id(dataset, row["path"], row["frame"]),
            "pixel_sha256": row["pixel_sha256"],
            "dataset": dataset,
            "subject": subject,
            "time_index": None,
            "days_from_baseline": None,
            "view": entry.view if entry is not None and entry.view is not None else _view(row, layout),
            "slice": slice_number,
            "frame": row["frame"],
            "path": row["path"],
            "modality": row["modality"] or "",
            "rows": row["rows"],
            "cols": row["cols"],
            "channels": row["channels"],
            "window_center": row["window_center"],
            "window_width": row["window_width"],
            "label": entry.label if entry is not None else None,
            "labels": list(entry.labels) if entry is not None else [],
        }
        for column in extra_columns:
            value = entry.extra.get(column) if entry is not None else None
            scan[column] = (list(value) if value else []) if column in list_columns else value
        scans.append(scan)
        ordinals.append(ordinal)
        manual.append(entry.time if entry is not None else None)

    baseline: dict[str, int] = {}
    for scan, ordinal in zip(scans, ordinals):
        if ordinal is not None:
            baseline[scan["subject"]] = min(ordinal, baseline.get(scan["subject"], ordinal))
    used_dates = used_manual = False
    for scan, ordinal, given_time in zip(scans, ordinals, manual):
        days = ordinal - baseline[scan["subject"]] if ordinal is not None else None
        scan["days_from_baseline"] = days
        if layout.constant_time_index is not None:
            scan["time_index"] = layout.constant_time_index
        elif given_time is not None:
            scan["time_index"], used_manual = given_time, True
        else:
            scan["time_index"] = time_index_from_days(layout, days)
            used_dates = used_dates or scan["time_index"] is not None
    _rank_slice_locations(scans, index_rows)
    scans.sort(key=lambda s: (s["path"], s["frame"]))
    if layout.time_unit != "auto":
        unit = layout.time_unit
    else:
        unit = "week" if used_dates else ("index" if used_manual else "none")
    return scans, unit


def _rank_slice_locations(scans: list[dict], index_rows: list[dict]) -> None:
    """Number slices without InstanceNumber by SliceLocation within subject, time and view (1-based)."""
    groups: dict[tuple, list[tuple[float, str, dict]]] = defaultdict(list)
    for scan, row in zip(scans, index_rows):
        if scan["slice"] is None and row["slice_location"] is not None:
            key = (scan["subject"], scan["time_index"], scan["view"])
            groups[key].append((row["slice_location"], scan["path"], scan))
    for members in groups.values():
        for rank, (_, _, scan) in enumerate(sorted(members, key=lambda m: (m[0], m[1])), start=1):
            scan["slice"] = rank


def _scans_table(scans: list[dict], manifest: Manifest | None) -> pa.Table:
    fields = list(SCANS_CORE)
    list_columns = set(manifest.list_columns) if manifest else set()
    for column in manifest.extra_columns if manifest else ():
        fields.append(pa.field(column, pa.list_(pa.string()) if column in list_columns else pa.string()))
    schema = pa.schema(fields)
    columns = {f.name: [s.get(f.name) for s in scans] for f in schema}
    return pa.table(columns, schema=schema)


def _replace_dataset_rows(store: Store, name: str, dataset: str, new: pa.Table) -> int:
    """Make ``new`` the rows of ``dataset`` in the shared table ``name``; return the table's size for it."""
    if table_exists(store, name):
        old = read_table(store, name)
        keep = old.filter(pc.not_equal(old.column("dataset"), dataset))
        try:
            combined = pa.concat_tables([keep, new], promote_options="default") if keep.num_rows else new
        except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
            raise DatasetError(
                f"Dataset {dataset!r} has a column whose type differs from the same column of another dataset "
                f"in table {name!r} ({exc}). Rename that column in {MANIFEST_NAME}."
            ) from None
    elif new.num_rows:
        combined = new
    else:
        return 0
    replace_table(store, name, combined, metadata=part_metadata(producer=PRODUCER))
    return new.num_rows


def _given_failures(store: Store, dataset: str, unresolved: list[GivenPair]) -> int:
    """Record ``pairs.csv`` lines whose files have no scans (once per line); return how many there are."""
    if not unresolved:
        return 0
    known = set()
    if table_exists(store, "failures"):
        table = read_table(store, "failures", columns=["key", "dataset"])
        known = set(table.filter(pc.equal(table.column("dataset"), dataset)).column("key").to_pylist())
    new = []
    for given in unresolved:
        key = pair_id(given.reference_path, given.comparison_path, "given-unresolved")
        if key in known:
            continue
        new.append(Failure(
            key=key, dataset=dataset, path=PAIRS_NAME, stage="ingest:pairs", error_class="DatasetError",
            message=(
                f"{PAIRS_NAME} line {given.line}: {given.reference_path} -> {given.comparison_path} has no scans "
                "for one of its files (missing, misspelt, or failed to decode: see the failures of those "
                "paths). Fix the path or the file, then ingest again."
            ),
        ))
    record_failures(store, new, producer=PRODUCER)
    return len(unresolved)


def _write_dataset_row(store: Store, dataset: str, root: Path, layout: str, synthetic: bool, unit: str) -> None:
    row = pa.table(
        {
            "dataset": [dataset], "root": [str(root)], "layout": [layout], "synthetic": [synthetic],
            "time_unit": [unit], "ingested_at": [datetime.now(timezone.utc)],
        },
        schema=DATASETS,
    )
    _replace_dataset_rows(store, "datasets", dataset, row)


# ------------------------------------------------------------------------------------------ public


def ingest_dataset(
    store: Store,
    dataset: str,
    *,
    root: str | os.PathLike | None = None,
    layout: str | None = None,
    workers: int = 1,
    progress: bool = True,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    retry_failed: bool = False,
) -> IngestSummary:
    """Ingest the folder ``root`` as ``dataset`` with ``layout``; build ``scans`` (and ``pairs``).

    ``root=None``: the built-in names crmo/chronomid/impc/spine generate their synthetic demo folder
    (``store.demo.ensure_demo``) and ingest it; a dataset ingested before reuses its recorded root;
    anything else raises ``DatasetError``. ``layout`` defaults to the dataset's own name for the four
    built-ins, else ``generic``. ``workers`` > 1 decodes in that many processes; ``chunk_size`` files
    make one index part (the unit of resumption). Files already indexed, or already recorded as
    failed (unless ``retry_failed``), are not read again. Unreadable inputs go to ``failures`` and
    the run goes on. Progress (files/s) goes to stderr.
    """
    started = time.perf_counter()
    _check_dataset_name(dataset)
    check_param("ingest", "workers", workers, kind="an int in [1, inf)", ok=isinstance(workers, int) and workers >= 1)
    check_param(
        "ingest", "chunk_size", chunk_size, kind="an int in [1, inf)",
        ok=isinstance(chunk_size, int) and chunk_size >= 1,
    )
    layout_name = layout or default_layout(dataset)
    spec = get_layout(layout_name)
    record = _dataset_record(store, dataset)
    synthetic = False
    if root is None:
        if dataset in DEMO_DATASETS and (record is None or record["synthetic"]):
            from store.demo import ensure_demo

            root, synthetic = ensure_demo(store, dataset, progress=progress), True
        elif record is not None:
            root = record["root"]
        else:
            raise DatasetError(
                f"Dataset {dataset!r} is not a built-in demo (those are {', '.join(DEMO_DATASETS)}) and has not "
                "been ingested before: pass --root with the folder holding its files."
            )
    elif dataset in DEMO_DATASETS and Path(root).expanduser().resolve() == (store.datasets_dir / dataset).resolve():
        synthetic = True
    root_dir, manifest_file = _resolve_root(root)
    if record is not None and Path(record["root"]) != root_dir and not (synthetic and record["synthetic"]):
        raise DatasetError(
            f"Dataset {dataset!r} was ingested from {record['root']}, not {root_dir}. Ingest the new folder under "
            "another dataset name, or pass the original --root."
        )
    manifest = read_manifest(manifest_file, list_columns=spec.list_columns) if manifest_file else None
    pairs_file = root_dir / PAIRS_NAME
    given = None
    if spec.given_pairs != "none" and pairs_file.is_file():
        given = read_pairs_csv(pairs_file)
    elif spec.given_pairs == "required":
        raise DatasetError(
            f"The {spec.name} layout takes its pairs from {pairs_file} (columns reference_path, comparison_path, "
            "label), which does not exist. Write it, or use --layout generic."
        )
    items = _list_files(root_dir, spec, manifest, manifest_file)
    secret = store.secret()
    index_store, index_table = index_location(store, dataset)

    with table_lock(index_store, index_table):
        indexed = existing_keys(index_store, index_table, "path")
        failed_before = _failed_paths(store, dataset)
        pending = [i for i in items if i.path not in indexed and (retry_failed or i.path not in failed_before)]
        ingested = 0
        if pending:
            # One decoding process with a core to spare shares the hashing with a helper process.
            hasher = FrameHasher(helper=workers == 1 and _spare_core(workers) and len(pending) > 1)
            work = partial(  # worker processes hash in their own process: no hasher crosses to them
                _decode_chunk, root=str(root_dir), dataset=dataset, secret=secret,
                hasher=hasher if workers == 1 else None,
            )
            chunks = _chunks(pending, chunk_size)
            from tqdm import tqdm

            with hasher, _decoded_chunks(chunks, work, workers) as results, tqdm(
                total=len(pending), unit="file", desc=f"ingest {dataset}", file=sys.stderr, disable=not progress,
                dynamic_ncols=True,
            ) as bar:
                for chunk, (rows, failures) in results:
                    if rows:
                        table = pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)
                        write_part(index_store, index_table, table, metadata=_index_metadata(), locked=True)
                        ingested += len({r["path"] for r in rows})
                    record_failures(store, failures, producer=PRODUCER)
                    bar.update(len(chunk))
        index_rows = read_table(index_store, index_table).to_pylist() if table_exists(index_store, index_table) else []

        listed = {i.path for i in items}
        latest: dict[tuple[str, int], dict] = {}
        for row in index_rows:
            if row["path"] in listed:
                latest[(row["path"], row["frame"])] = row
        index_rows = [latest[k] for k in sorted(latest)]
        present = {row["path"] for row in index_rows}
        pseudonyms = Pseudonymizer(secret)
        scans, unit = _derive_scans(index_rows, dataset=dataset, layout=spec, manifest=manifest, pseudonyms=pseudonyms)
        pair_rows, unpaired = longitudinal_pairs(scans, spec, dataset)
        unresolved: list[GivenPair] = []
        if given is not None:
            given_rows, unresolved = given_pairs(scans, given, dataset)
            pair_rows += given_rows
        pair_rows.sort(key=lambda p: (p["subject"], p["reference_mode"], p["time_index"] is None,
                                      p["time_index"] or 0, p["pair_id"]))

        with table_lock(index_store, "store_tables"):
            scans_rows = _replace_dataset_rows(store, "scans", dataset, _scans_table(scans, manifest))
            pairs_table = pa.Table.from_pylist(pair_rows, schema=PAIRS_CORE)
            pairs_rows = _replace_dataset_rows(store, "pairs", dataset, pairs_table)
            _write_dataset_row(store, dataset, root_dir, spec.name, synthetic, unit)
        bad_pairs = _given_failures(store, dataset, unresolved)

    skipped = sum(1 for i in items if i.path in indexed and i.path in present)
    return IngestSummary(
        dataset=dataset,
        layout=spec.name,
        root=str(root_dir),
        synthetic=synthetic,
        files=len(items),
        ingested=ingested,
        skipped=skipped,
        failed=len(items) - len(present) + bad_pairs,
        scans_rows=scans_rows,
        pairs_rows=pairs_rows,
        unpaired_slices=unpaired,
        seconds=time.perf_counter() - started,
    )
