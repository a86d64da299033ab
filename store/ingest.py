"""Ingest a dataset folder into the ``scans`` and ``pairs`` tables (``cli.py ingest``).

Two stages, so that an interrupted run (even SIGKILL) resumes and ends with exactly the rows an
uninterrupted run writes:

1. **Index** (resumable). Files are listed in sorted order; those already indexed or already in
   ``failures`` for this dataset are skipped; the rest are decoded in chunks (in worker processes
   with ``workers > 1``) and each chunk is appended as one atomic Parquet part to the dataset's
   private index (``<store>/ingest/tables/<dataset table>/``), failures to ``failures``. An index row
   holds what the file itself says: keyed pixel hash, size, header pseudonym, coded view values, and
   the study day *shifted by a secret per-subject offset* (no calendar date, no PHI). The dataset's
   index lock is taken before anything pending is computed and held until the derived tables are
   written, so two runs of one dataset at once never decode or write a file twice.
2. **Derive** (quick, rerun in full every time). From the whole index plus the current
   ``manifest.csv``/``pairs.csv``: subjects (manifest ``subject``, else PatientID, pseudonymised),
   time indices (the manifest's ``time`` when given, else whole weeks/days per the layout since the
   subject's first date: manifest ``date``, else StudyDate, else AcquisitionDate; missing stays
   missing), slices (manifest ``slice``, else the frame of a multi-frame file, else InstanceNumber,
   else rank of SliceLocation), labels, then ``scans`` and ``pairs`` rows for the dataset replace
   its previous rows (read-modify-write of the shared tables under a store-wide ingest lock), and the dataset's row
   in ``datasets`` is written.

Editing the manifest and ingesting again relabels without decoding anything.

Hostile inputs never stop a run: only regular files are opened (a FIFO, socket or device is recorded
in ``failures`` without being opened), a symbolic link leading out of the dataset root (found in the
folder or named by the manifest) is refused and recorded, a file whose header claims more pixels
than the decoding budget (``store.limits``, ``max_decoded_mb``) is recorded without being decoded,
and a file or folder name that is not UTF-8 is ingested under a stored path (``store.paths``).

Identities and paths: a file is known by its *key*, ``scan_id`` of frame 0, keyed by the store secret
over its real relative path (so the same file has unrelated ids in two stores). Its stored path
(``scans.path``, the index, ``failures``) is relative to the root with every component that holds one
of the file's identifying values (PatientID, name, birth date, other IDs, the manifest's subject)
replaced by a keyed marker, consistently across the dataset; ``store.pixels`` resolves it. Views are
coded values (``features.dataset_layouts.coded_view``); free-text descriptions are never stored.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc

from features.dataset_layouts import (
    DEMO_DATASETS,
    OTHER_VIEW,
    VIEW_TERMS,
    Layout,
    coded_view,
    default_layout,
    get_layout,
    given_pairs,
    has_time_course,
    longitudinal_pairs,
    pair_id,
    scan_id,
)
from features.errors import ChronofeatError, DatasetError, check_param
from store._frame_hasher import FrameHasher
from store.bids import read_bids_tree
from store.cores import usable_cores
from store.digest import keyed_sha256
from store.failures import Failure, open_failures, record_failures, resolve_failures
from store.ingest_derive import derive_scans, scans_table
from store.ingest_inputs import InputFile, list_inputs, resolve_root
from store.layout import Store
from store.limits import max_decoded_bytes
from store.manifest import (
    MANIFEST_NAME,
    PAIRS_NAME,
    GivenPair,
    Manifest,
    read_manifest,
    read_pairs_csv,
)
from store.paths import IdentifyingValues, redact_components, redacted_tags, stored_path
from store.pixels import read_contents
from store.provenance import part_metadata
from store.pseudonym import Pseudonymizer, redact
from store.schema import DATASETS, PAIRS_CORE
from store.secret import SECRET_FINGERPRINT_KEY, load_secret, secret_fingerprint
from store.tables import read_table, replace_table, table_exists, table_lock, write_part
from store.volume_index import VolumeIndex, index_volumes, record_volume_failures
from store.volumes import VOLUME_PAIRS, VOLUME_PAIRS_TABLE, VOLUMES, VOLUMES_TABLE

__all__ = ["IngestSummary", "INDEX_SCHEMA", "IndexLocation", "ingest_dataset", "index_location", "DEFAULT_CHUNK_SIZE"]

PRODUCER = "store.ingest"
DEFAULT_CHUNK_SIZE = 128
INDEX_VERSION = 2
_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_FILE = "\u241f"  # stands for the file's path in messages until its stored path is known
_VIEW_LAYOUT = Layout("index", "auto", (), views=VIEW_TERMS)  # the vocabulary index rows are coded with
_MODALITY = re.compile(r"^[A-Z0-9 _]{1,16}$")

INDEX_SCHEMA = pa.schema(
    [
        ("file_key", pa.string()),  # scan_id of frame 0: the file's keyed identity (resumption, failures)
        ("scan_id", pa.string()),
        ("path", pa.string()),  # stored path (store.paths): relative, identifying components redacted
        ("frame", pa.int32()),
        ("frames", pa.int32()),
        ("kind", pa.string()),
        ("pixel_sha256", pa.string()),  # keyed by the store secret (store.digest.keyed_sha256)
        ("subject", pa.string()),  # pseudonym from the header (PatientID, else StudyInstanceUID, else file key)
        ("day", pa.int32()),  # study (else acquisition) date ordinal + secret per-subject shift
        ("instance_number", pa.int32()),
        ("slice_location", pa.float64()),
        ("view_position", pa.string()),  # ViewPosition coded: '' | a view term | other
        ("description_view", pa.string()),  # the view term SeriesDescription names: '' | term | other
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
    pairs_note: str = ""

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
            f"{self.pairs_rows} rows, {self.unpaired_slices} unpaired slices{self.pairs_note}; {self.seconds:.1f}s"
        )
        if self.failed:
            line += (
                f". See: python cli.py sql \"SELECT path, message FROM failures WHERE dataset = '{self.dataset}' "
                "AND resolved_at IS NULL\""
            )
        return line



@dataclass(frozen=True)
class _Failed:
    """A failure before its stored path is known: ``message`` holds ``_FILE`` where the path goes,
    ``identifying`` the file's identifying values (memory only)."""

    key: str
    path: str
    stage: str
    error_class: str
    message: str
    identifying: tuple[str, ...] = field(default=(), repr=False)



# ----------------------------------------------------------------------------------------- locations


class IndexLocation(NamedTuple):
    """Where a dataset's private index lives: a store rooted at ``<store>/ingest`` and the table in it."""

    store: Store
    table: str


def index_location(store: Store, dataset: str) -> IndexLocation:
    """The private index of ``dataset``: a store rooted at ``<store>/ingest`` and the table name in it.

    The name carries the index version: an index written by an older version (unkeyed identities) is
    left alone and the dataset is indexed afresh.
    """
    slug = re.sub(r"[^a-z0-9_]", "_", dataset.lower())[:40]
    digest = hashlib.sha256(dataset.encode("utf-8")).hexdigest()[:8]
    return IndexLocation(Store(store.root / "ingest"), f"ds_{slug}_{digest}_v{INDEX_VERSION}")


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


# ------------------------------------------------------------------------------------------- index


def _coded(value: str, layout: Layout, identifying: IdentifyingValues, *, free_text: bool = False) -> str:
    view = coded_view(value, layout, free_text=free_text)
    return OTHER_VIEW if view and identifying.found_in(view) else view


def _header_fields(decoded, item: InputFile, pseudonyms: Pseudonymizer, identifying: IdentifyingValues) -> dict:
    header = decoded.header
    if header is None:
        return {
            "subject": None, "day": None, "instance_number": None, "slice_location": None, "view_position": "",
            "description_view": "", "modality": None, "window_center": None, "window_width": None,
        }
    if header.patient_id:
        subject = pseudonyms.subject(header.patient_id)
    elif header.study_uid:
        subject = pseudonyms.subject("study-uid:" + header.study_uid)
    else:
        subject = pseudonyms.subject("file:" + item.key)
    date = header.study_date or header.acquisition_date
    modality = header.modality.upper()
    if modality and (not _MODALITY.match(modality) or identifying.found_in(modality)):
        modality = "OT"  # DICOM's term for "other": a modality is a code, never free text
    return {
        "subject": subject,
        "day": date.toordinal() + pseudonyms.shift(subject) if date else None,
        "instance_number": header.instance_number,
        "slice_location": header.slice_location,
        "view_position": _coded(header.view_position, _VIEW_LAYOUT, identifying),
        "description_view": _coded(header.series_description, _VIEW_LAYOUT, identifying, free_text=True),
        "modality": modality,
        "window_center": header.window_center,
        "window_width": header.window_width,
    }


def _clean(text: str) -> str:
    """``text`` as valid UTF-8 (a surrogate left by an undecodable file name becomes ``?``)."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _scrub(text: str, item: InputFile, base: Path) -> str:
    """A third-party message with the file's absolute and relative paths replaced by ``_FILE``."""
    for form in (str(base / item.path), item.path):
        text = text.replace(form, _FILE)
    return text


_NOT_READ = {
    "missing": (
        "DatasetError", "ingest:read",
        f"{_FILE}: listed in {MANIFEST_NAME} but not found under the dataset root. Fix the path or remove the row.",
    ),
    "special": (
        "DatasetError", "ingest:read",
        f"{_FILE}: a {{detail}}, not a regular file; it was skipped without being opened. Move it out of the "
        "dataset folder.",
    ),
    "unlisted": (
        "DatasetError", "ingest:read",
        f"{_FILE}: a folder that could not be listed ({{detail}}); the files in it were not ingested. Check its "
        "permissions, then ingest again.",
    ),
    "outside": (
        "DatasetError", "ingest:read",
        f"{_FILE}: a symbolic link leading out of the dataset root; refused (only files under the root are "
        "ingested). Copy the file into the dataset folder, or ingest the folder it lives in as its own dataset.",
    ),
}


class _ChunkResult(NamedTuple):
    """What decoding a chunk gave: index rows (one per frame) and failures."""

    rows: list[dict]
    failures: list[_Failed]


class _ReadFile(NamedTuple):
    """A decoded file: its contents, its index fields from the header, and its identifying values."""

    decoded: object
    fields: dict
    identifying: tuple[str, ...]


def _not_read(item: InputFile) -> _Failed:
    """The failure of an input that is not a regular file (missing, special, outside, unlisted)."""
    error_class, stage, message = _NOT_READ[item.status]
    return _Failed(
        item.key, item.path, stage, error_class, message.format(detail=item.detail or "special file"),
        (item.subject,) if item.subject else (),
    )


def _identifiers(item: InputFile, decoded) -> tuple[str, ...]:
    """The file's identifying values: the manifest's subject and the header's identifiers."""
    manifest_values = (item.subject,) if item.subject else ()
    return manifest_values + (decoded.header.identifiers if decoded is not None and decoded.header else ())


def _read_file(
    item: InputFile, *, base: Path, pseudonyms: Pseudonymizer, hasher: FrameHasher, max_bytes: int | None
) -> _ReadFile | _Failed:
    """Decode one regular file, or the failure that names why it could not be."""
    decoded = None
    try:
        decoded = read_contents(base / item.path, name=_FILE, defer_pixels=hasher.helper, max_bytes=max_bytes)
        if decoded.kind != "dicom" and not item.in_manifest:
            raise DatasetError(
                f"{_FILE}: a {decoded.kind.upper()} image needs a row in {MANIFEST_NAME} (columns path, "
                "subject, time or date, view, label...) to say whose it is. Add the row."
            )
        values = _identifiers(item, decoded)
        return _ReadFile(decoded, _header_fields(decoded, item, pseudonyms, IdentifyingValues(values)), values)
    except ChronofeatError as exc:
        values = _identifiers(item, decoded)
        message = _scrub(str(exc), item, base)
        return _Failed(item.key, item.path, "ingest:decode", type(exc).__name__, message, values)
    except Exception as exc:  # a bug or an exotic file must not stop the run: record it
        values = _identifiers(item, decoded)
        detail = _scrub(" ".join(str(exc).split())[:200], item, base)
        message = redact(
            f"{_FILE}: unexpected {type(exc).__name__} while reading it ({detail}). "
            "Check the file; report this if it is a valid image.", values,
        )
        return _Failed(item.key, item.path, "ingest:decode", type(exc).__name__, message, values)


def _frame_rows(item: InputFile, read: _ReadFile, *, secret: bytes, dataset: str) -> list[dict]:
    """One index row per frame of a decoded file (``pixel_sha256`` still to be computed)."""
    shape = read.decoded.shape
    stored = stored_path(item.path, secret=secret, identifying=IdentifyingValues(read.identifying))
    return [
        {
            "file_key": item.key, "scan_id": scan_id(secret, dataset, item.path, index), "path": stored,
            "_path": item.path, "_identifying": read.identifying, "frame": index, "frames": int(shape[0]),
            "kind": read.decoded.kind, "pixel_sha256": None, "rows": int(shape[1]), "cols": int(shape[2]),
            "channels": int(shape[3]) if len(shape) == 4 else 1, **read.fields,
        }
        for index in range(len(read.decoded.contents))
    ]


def _hashed(rows: list[dict], failures: list[_Failed], hasher: FrameHasher, secret: bytes) -> list[dict]:
    """``rows`` with their keyed pixel hashes, less the files whose frames could not be hashed (those are
    added to ``failures``)."""
    unhashed: dict[str, tuple[str, tuple[str, ...], str]] = {}
    for row, message in hasher.finish():
        unhashed.setdefault(row["file_key"], (row["_path"], row["_identifying"], message))
    if unhashed:  # a file that changed under us: its other frames go too, so a rerun reads it whole
        rows = [row for row in rows if row["file_key"] not in unhashed]
        for key, (path, values, message) in unhashed.items():
            failures.append(_Failed(key, path, "ingest:decode", "DecodeError", message, values))
    for row in rows:
        row["pixel_sha256"] = keyed_sha256(secret, row["pixel_sha256"])
    return rows


def _decode_chunk(
    items: Sequence[InputFile], *, root: str, dataset: str, secret: bytes, max_bytes: int | None = None,
    hasher: FrameHasher | None = None,
) -> _ChunkResult:
    """Decode ``items`` (runs in a worker process or in the caller); index rows and failures back.

    A row's ``path`` is the file's own stored path; rows also carry the real path (``_path``) and
    identifying values (``_identifying``) so that the caller can redact consistently across files;
    those two never reach a table. Messages hold ``_FILE`` where the stored path goes. ``max_bytes``:
    the decoding budget (``None``: ``store.limits``). ``hasher`` (kept across chunks by the caller)
    may hash frames on a helper process while the next files are parsed; without one every frame is
    hashed here, from memory.
    """
    if hasher is None:
        with FrameHasher() as own:
            return _decode_chunk(
                items, root=root, dataset=dataset, secret=secret, max_bytes=max_bytes, hasher=own
            )
    pseudonyms = Pseudonymizer(secret)
    rows: list[dict] = []
    failures: list[_Failed] = []
    base = Path(root)
    for item in items:
        if item.status != "file":
            failures.append(_not_read(item))
            continue
        read = _read_file(item, base=base, pseudonyms=pseudonyms, hasher=hasher, max_bytes=max_bytes)
        if isinstance(read, _Failed):
            failures.append(read)
            continue
        for row, content in zip(_frame_rows(item, read, secret=secret, dataset=dataset), read.decoded.contents,
                                strict=True):
            rows.append(row)
            hasher.add(row, content)
    return _ChunkResult(_hashed(rows, failures, hasher, secret), failures)

def _chunks(items: list[InputFile], size: int) -> list[list[InputFile]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@contextmanager
def _decoded_chunks(
    chunks: list[list[InputFile]], work, workers: int
) -> Iterator[Iterator[tuple[list[InputFile], _ChunkResult]]]:
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

    def results() -> Iterator[tuple[list[InputFile], _ChunkResult]]:
        queued = deque(chunks)
        running: dict[Future, list[InputFile]] = {}
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


def _open_failures(store: Store, dataset: str) -> pa.Table:
    """This dataset's open ingest failures (every ``ingest:*`` stage)."""
    return open_failures(store, dataset=dataset, stage="ingest")


def _metadata(secret: bytes, **params) -> dict[str, str]:
    """Part metadata of every table ingest writes: provenance plus the secret's fingerprint."""
    metadata = part_metadata(producer=PRODUCER, params=params) if params else part_metadata(producer=PRODUCER)
    return {**metadata, SECRET_FINGERPRINT_KEY: secret_fingerprint(secret)}


class _StoredPaths:
    """Stored paths of one dataset's files, redacted consistently: a component redacted for one file
    (it holds that file's identifying value) is redacted for every file of the dataset."""

    def __init__(self, secret: bytes, known: Iterable[str] = ()) -> None:
        self.secret = secret
        self.redacted: set[str] = set()
        for path in known:
            self.redacted |= redacted_tags(path)

    def learn(self, entries: Iterable[tuple[str, tuple[str, ...]]]) -> None:
        """Note the components that ``(real path, identifying values)`` entries redact."""
        for path, values in entries:
            self.redacted |= redacted_tags(stored_path(path, secret=self.secret, identifying=IdentifyingValues(values)))

    def of(self, path: str, values: tuple[str, ...]) -> str:
        """The stored path of the file at real path ``path`` with identifying ``values``."""
        return stored_path(path, secret=self.secret, identifying=IdentifyingValues(values), redacted=self.redacted)

    def again(self, stored: str) -> str:
        """An earlier stored path with the components redacted since then redacted too."""
        return redact_components(stored, secret=self.secret, redacted=self.redacted)


def _redact_recorded(store: Store, dataset: str, paths: _StoredPaths) -> None:
    """Rewrite this dataset's open ingest failures whose stored path holds a component redacted since they
    were recorded (a folder found to identify a patient by a file decoded later)."""
    changed = []
    for row in _open_failures(store, dataset).to_pylist():
        path = paths.again(row["path"])
        if path != row["path"]:
            changed.append(Failure(
                key=row["key"], dataset=dataset, path=path, stage=row["stage"], error_class=row["error_class"],
                message=row["message"].replace(row["path"], path), time=row["time"],
            ))
    record_failures(store, changed, producer=PRODUCER)


def _failure_rows(failed: list[_Failed], dataset: str, paths: _StoredPaths) -> list[Failure]:
    out = []
    for item in failed:
        path = paths.of(item.path, item.identifying)
        message = redact(_clean(item.message.replace(_FILE, path)), item.identifying)
        out.append(Failure(
            key=item.key, dataset=dataset, path=path, stage=item.stage, error_class=item.error_class, message=message,
        ))
    return out


# ----------------------------------------------------------------------------------------- write


def _replace_dataset_rows(store: Store, name: str, dataset: str, new: pa.Table, metadata: dict[str, str]) -> int:
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
    replace_table(store, name, combined, metadata=metadata)
    return new.num_rows


def _write_volumes(store: Store, dataset: str, volumes: VolumeIndex, metadata: dict[str, str]) -> None:
    """Make ``volumes`` the dataset's rows of ``volumes`` and ``volume_pairs`` (caller holds the tables lock)."""
    _replace_dataset_rows(store, VOLUMES_TABLE, dataset, pa.Table.from_pylist(volumes.volumes, schema=VOLUMES),
                          metadata)
    _replace_dataset_rows(store, VOLUME_PAIRS_TABLE, dataset, pa.Table.from_pylist(volumes.pairs, schema=VOLUME_PAIRS),
                          metadata)


def _given_key(file_key, given: GivenPair) -> str:
    return pair_id(file_key(given.reference_path), file_key(given.comparison_path), "given-unresolved")


def _given_failures(store: Store, dataset: str, unresolved: list[GivenPair], file_key) -> int:
    """Record ``pairs.csv`` lines whose files have no scans (once per line), mark lines that resolve since
    resolved; return how many lines are unresolved. Messages name line numbers, never paths (a path in
    ``pairs.csv`` may hold an identifier)."""
    failures = _open_failures(store, dataset)
    mask = pc.equal(failures.column("stage"), "ingest:pairs")
    known = set(failures.filter(mask).column("key").to_pylist())
    wanted = {_given_key(file_key, g): g for g in unresolved}
    new = [
        Failure(
            key=key, dataset=dataset, path=PAIRS_NAME, stage="ingest:pairs", error_class="DatasetError",
            message=(
                f"{PAIRS_NAME} line {g.line}: one of its two files has no scans (missing, misspelt, or failed to "
                "decode: see that file's row in failures). Fix the path or the file, then ingest again."
            ),
        )
        for key, g in wanted.items() if key not in known
    ]
    record_failures(store, new, producer=PRODUCER)
    fixed = known - set(wanted)  # lines that resolve now, or are no longer in pairs.csv
    if fixed:
        resolve_failures(store, dataset=dataset, keys=fixed, producer=PRODUCER)
    return len(unresolved)


def _write_dataset_row(
    store: Store, dataset: str, root: Path, layout: str, synthetic: bool, unit: str, metadata: dict[str, str]
) -> None:
    row = pa.table(
        {
            "dataset": [dataset], "root": [str(root)], "layout": [layout], "synthetic": [synthetic],
            "time_unit": [unit], "ingested_at": [datetime.now(timezone.utc)],
        },
        schema=DATASETS,
    )
    _replace_dataset_rows(store, "datasets", dataset, row, metadata)


# ------------------------------------------------------------------------------------------- steps


class _Source(NamedTuple):
    """Where a dataset's files are: the folder, its manifest file (or ``None``), whether it is a demo."""

    folder: Path
    manifest: Path | None
    synthetic: bool


def _locate_source(store: Store, dataset: str, root: str | os.PathLike | None, *, progress: bool) -> _Source:
    """The dataset's folder: ``root``, else the generated demo folder, else the root recorded at its last ingest."""
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
    folder, manifest_file = resolve_root(root)
    if record is not None and Path(record["root"]) != folder and not (synthetic and record["synthetic"]):
        raise DatasetError(
            f"Dataset {dataset!r} was ingested from {record['root']}, not {folder}. Ingest the new folder under "
            "another dataset name, or pass the original --root."
        )
    return _Source(folder, manifest_file, synthetic)


def _read_given_pairs(spec: Layout, folder: Path) -> list[GivenPair] | None:
    """The lines of the dataset's ``pairs.csv`` when its layout takes pairs from one (``None`` otherwise)."""
    pairs_file = folder / PAIRS_NAME
    if spec.given_pairs != "none" and pairs_file.is_file():
        return read_pairs_csv(pairs_file)
    if spec.given_pairs == "required":
        raise DatasetError(
            f"The {spec.name} layout takes its pairs from {pairs_file} (columns reference_path, comparison_path, "
            "label), which does not exist. Write it, or use --layout generic."
        )
    return None


@dataclass(frozen=True)
class _Run:
    """One ingest run: the store, the dataset, the store secret and the dataset's private index."""

    store: Store
    dataset: str
    secret: bytes
    index_store: Store
    index_table: str

    def file_key(self, path: str) -> str:
        """The keyed identity of the file at real relative ``path`` (``scan_id`` of its frame 0)."""
        return scan_id(self.secret, self.dataset, path, 0)


@dataclass(frozen=True)
class _Decoding:
    """How pending files are decoded: the root, worker processes, files per part, budget, progress bar."""

    root: str
    workers: int
    chunk_size: int
    max_bytes: int | None
    progress: bool


@dataclass(frozen=True)
class _IndexState:
    """The index before this run: files indexed, open failures, and the stored paths known so far."""

    indexed: set[str]
    failed_table: pa.Table
    failed_before: set[str]
    paths: _StoredPaths


def _index_state(run: _Run) -> _IndexState:
    if table_exists(run.index_store, run.index_table):
        indexed_paths = read_table(run.index_store, run.index_table, columns=["file_key", "path"])
    else:
        indexed_paths = INDEX_SCHEMA.empty_table().select(["file_key", "path"])
    failed_table = _open_failures(run.store, run.dataset)
    paths = _StoredPaths(
        run.secret, indexed_paths.column("path").to_pylist() + failed_table.column("path").to_pylist()
    )
    return _IndexState(
        set(indexed_paths.column("file_key").to_pylist()), failed_table,
        set(failed_table.column("key").to_pylist()), paths,
    )


def _index_files(run: _Run, pending: list[InputFile], paths: _StoredPaths, decoding: _Decoding) -> set[str]:
    """Decode ``pending`` in chunks, append each chunk to the index (failures to ``failures``); return the
    keys of the files indexed."""
    workers = decoding.workers
    # One decoding process with a core to spare shares the hashing with a helper process.
    hasher = FrameHasher(helper=workers == 1 and _spare_core(workers) and len(pending) > 1)
    work = partial(  # worker processes hash in their own process: no hasher crosses to them
        _decode_chunk, root=decoding.root, dataset=run.dataset, secret=run.secret, max_bytes=decoding.max_bytes,
        hasher=hasher if workers == 1 else None,
    )
    from tqdm import tqdm

    ingested_keys: set[str] = set()
    with hasher, _decoded_chunks(_chunks(pending, decoding.chunk_size), work, workers) as results, tqdm(
        total=len(pending), unit="file", desc=f"ingest {run.dataset}", file=sys.stderr,
        disable=not decoding.progress, dynamic_ncols=True,
    ) as bar:
        for chunk, (rows, failed) in results:
            paths.learn([(r["_path"], r["_identifying"]) for r in rows])
            paths.learn([(f.path, f.identifying) for f in failed])
            if rows:
                for row in rows:
                    row["path"] = paths.of(row["_path"], row["_identifying"])
                table = pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)
                write_part(
                    run.index_store, run.index_table, table,
                    metadata=_metadata(run.secret, index_version=INDEX_VERSION), locked=True,
                )
                ingested_keys.update(r["file_key"] for r in rows)
            record_failures(run.store, _failure_rows(failed, run.dataset, paths), producer=PRODUCER)
            bar.update(len(chunk))
    return ingested_keys


def _resolve_fixed(run: _Run, items: list[InputFile], state: _IndexState, ingested_keys: set[str]) -> None:
    """Mark resolved the failures of files a retry ingested and of inputs that are gone (removed, renamed,
    a folder listable again)."""
    listed_keys = {i.key for i in items}
    failed = state.failed_table
    gone = {
        key for key, stage in zip(failed.column("key").to_pylist(), failed.column("stage").to_pylist(), strict=True)
        if stage not in ("ingest:pairs", "ingest:volume") and key not in listed_keys
    }
    fixed = (ingested_keys & state.failed_before) | gone
    if fixed:
        resolve_failures(run.store, dataset=run.dataset, keys=fixed, producer=PRODUCER)


def _current_index_rows(run: _Run, items: list[InputFile], paths: _StoredPaths) -> list[dict]:
    """The newest index row of every frame of every listed regular file, sorted by file key and frame, with
    stored paths redacted as the whole dataset requires."""
    if not table_exists(run.index_store, run.index_table):
        return []
    listed = {i.key for i in items if i.status == "file"}
    latest: dict[tuple[str, int], dict] = {}
    for row in read_table(run.index_store, run.index_table).to_pylist():
        if row["file_key"] in listed:
            latest[(row["file_key"], row["frame"])] = row
    index_rows = [latest[k] for k in sorted(latest)]
    for row in index_rows:
        row["path"] = paths.again(row["path"])
    return index_rows


class _Written(NamedTuple):
    """Rows the derive stage wrote for the dataset, slices left unpaired, ``pairs.csv`` lines unresolved."""

    scans_rows: int
    pairs_rows: int
    unpaired: int
    bad_pairs: int
    pairs_note: str = ""


def _self_pairs_note(spec: Layout, time_course: bool, self_pairs: bool | None) -> str:
    """What the summary line says about self-pairs when they are not the default of a time course."""
    if not spec.pair_modes:
        return ""
    if time_course:
        return " (no self-pairs, on request)" if self_pairs is False else ""
    if self_pairs:
        return " (no repeated time points; self-pairs on request: each image paired with itself)"
    return " (no repeated time points: no pairs; --self-pairs pairs each image with itself)"


def _derive_and_write(
    run: _Run, index_rows: list[dict], spec: Layout, manifest: Manifest | None, given: list[GivenPair] | None,
    source: _Source, self_pairs: bool | None = None,
) -> _Written:
    """Derive ``scans`` and ``pairs`` from the index and replace the dataset's rows (and its ``datasets`` row)."""
    manifest_by_key = {run.file_key(p): entry for p, entry in manifest.rows.items()} if manifest else {}
    derived = derive_scans(
        index_rows, dataset=run.dataset, layout=spec, manifest=manifest, pseudonyms=Pseudonymizer(run.secret),
        manifest_by_key=manifest_by_key,
    )
    volumes = VolumeIndex()
    if spec.volumes:  # before the scans are written: member slices get their volume_id
        volumes = index_volumes(derived.scans, index_rows, folder=source.folder, secret=run.secret,
                                dataset=run.dataset, layout=spec, self_pairs=self_pairs)
    pair_rows, unpaired = longitudinal_pairs(derived.scans, spec, run.dataset, self_pairs=self_pairs)
    note = _self_pairs_note(spec, has_time_course(derived.scans, spec), self_pairs)
    unresolved: list[GivenPair] = []
    if given is not None:
        given_rows, unresolved = given_pairs(derived.scans, given, run.dataset, file_key=run.file_key)
        pair_rows += given_rows
    pair_rows.sort(key=lambda p: (p["subject"], p["reference_mode"], p["time_index"] is None,
                                  p["time_index"] or 0, p["pair_id"]))
    metadata = _metadata(run.secret)
    store, dataset = run.store, run.dataset
    with table_lock(run.index_store, "store_tables"):
        scans_rows = _replace_dataset_rows(store, "scans", dataset, scans_table(derived.scans, manifest), metadata)
        pairs_table = pa.Table.from_pylist(pair_rows, schema=PAIRS_CORE)
        pairs_rows = _replace_dataset_rows(store, "pairs", dataset, pairs_table, metadata)
        _write_volumes(store, dataset, volumes, metadata)
        _write_dataset_row(store, dataset, source.folder, spec.name, source.synthetic, derived.time_unit, metadata)
    bad_pairs = _given_failures(store, dataset, unresolved, run.file_key)
    bad_pairs += record_volume_failures(store, dataset, volumes.failures, producer=PRODUCER)
    if volumes.volumes:
        note += f"; volumes {len(volumes.volumes)} rows, volume_pairs {len(volumes.pairs)} rows"
    return _Written(scans_rows, pairs_rows, unpaired, bad_pairs, note)


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
    max_decoded_mb: float | None = None,
    self_pairs: bool | None = None,
) -> IngestSummary:
    """Ingest the folder ``root`` as ``dataset`` with ``layout``; build ``scans`` (and ``pairs``).

    ``root=None``: the built-in names crmo/chronomid/impc/spine generate their synthetic demo folder
    (``store.demo.ensure_demo``) and ingest it; a dataset ingested before reuses its recorded root;
    anything else raises ``DatasetError``. ``layout`` defaults to the dataset's own name for the four
    built-ins, else ``generic``. ``workers`` > 1 decodes in that many processes; ``chunk_size`` files
    make one index part (the unit of resumption). Files already indexed, or already recorded as
    failed (unless ``retry_failed``; a retried file that now decodes has its failure marked resolved),
    are not read again. Unreadable inputs go to ``failures`` and the run goes on; so do files whose
    frames would exceed ``max_decoded_mb`` MiB as float32 (``None``: ``store.limits``' budget).
    Progress (files/s) goes to stderr. ``self_pairs``: whether each subject's first time point pairs with
    itself; ``None`` (default): only when the dataset has repeated time points (``has_time_course``).
    """
    started = time.perf_counter()
    _check_dataset_name(dataset)
    check_param("ingest", "workers", workers, kind="an int in [1, inf)", ok=isinstance(workers, int) and workers >= 1)
    check_param(
        "ingest", "chunk_size", chunk_size, kind="an int in [1, inf)",
        ok=isinstance(chunk_size, int) and chunk_size >= 1,
    )
    check_param("ingest", "self_pairs", self_pairs, kind="True, False or None",
                ok=self_pairs is None or isinstance(self_pairs, bool))
    budget = max_decoded_bytes(max_decoded_mb)
    spec = get_layout(layout or default_layout(dataset))
    source = _locate_source(store, dataset, root, progress=progress)
    manifest = read_manifest(source.manifest, list_columns=spec.list_columns) if source.manifest else None
    bids = read_bids_tree(source.folder) if manifest is None else None  # sub-*/ses-*/anat/*.nii.gz
    manifest = bids.manifest if bids is not None else manifest
    given = _read_given_pairs(spec, source.folder)
    secret = load_secret(store)
    items = list_inputs(source.folder, spec, manifest, source.manifest, secret=secret, dataset=dataset,
                        not_inputs=bids.not_inputs if bids is not None else frozenset())
    run = _Run(store, dataset, secret, *index_location(store, dataset))

    # Everything from here on holds the dataset's lock: what is pending is decided, decoded, written and
    # derived by one process at a time.
    with table_lock(run.index_store, run.index_table):
        state = _index_state(run)
        pending = [
            i for i in items if i.key not in state.indexed and (retry_failed or i.key not in state.failed_before)
        ]
        decoding = _Decoding(str(source.folder), workers, chunk_size, budget, progress)
        ingested_keys = _index_files(run, pending, state.paths, decoding) if pending else set()
        _resolve_fixed(run, items, state, ingested_keys)
        index_rows = _current_index_rows(run, items, state.paths)
        _redact_recorded(store, dataset, state.paths)
        written = _derive_and_write(run, index_rows, spec, manifest, given, source, self_pairs)

    present = {row["file_key"] for row in index_rows}
    return IngestSummary(
        dataset=dataset,
        layout=spec.name,
        root=str(source.folder),
        synthetic=source.synthetic,
        files=len(items),
        ingested=len(ingested_keys),
        skipped=sum(1 for i in items if i.key in state.indexed and i.key in present),
        failed=len(items) - len(present) + written.bad_pairs,
        scans_rows=written.scans_rows,
        pairs_rows=written.pairs_rows,
        unpaired_slices=written.unpaired,
        seconds=time.perf_counter() - started,
        pairs_note=written.pairs_note,
    )
