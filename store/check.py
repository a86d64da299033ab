"""Verify every part of every table (``cli.py check``) and move bad parts to quarantine (``--repair``).

What is checked, per table of ``<store>/tables`` and of the datasets' ingest indexes
(``<store>/ingest/tables``):

* the Parquet footer opens, every row group decodes, and the rows read equal the footer's count;
* the schema agrees with the table's other parts (the schema most parts share is the reference; a
  part whose column types cannot be unified with it breaks every reader of the table);
* keys are unique: ``scans.scan_id``, ``pairs.pair_id``, ``runs.run_id`` and, for feature tables, the
  key column named in the parts' ``chronofeat.key`` metadata together with ``source_sha256`` (a scan
  whose pixels changed legitimately has a second row under its key, with the new hash);
* provenance: ``chronofeat.producer``, ``.params`` and ``.params_hash`` are present and the hash is
  the hash of the params; all parts of a feature table share one ``params_hash`` (the one most parts
  carry is the table's); parts stamped with a secret fingerprint carry the store's recorded one
  (``secret.fingerprint``);
* no stray temporary files (``.tmp-*``, left by a killed writer) while no writer holds the table.

Repair (``repair=True``) never deletes: it moves each part found unreadable, short of rows, of a
conflicting schema, without a key column, without or with inconsistent provenance, of another
configuration, or *wholly* duplicated (every key already in older parts: the newer copy goes), and
each stray temporary file, to ``<store>/quarantine/<table>/``, appends what moved and why to
``<store>/quarantine/manifest.jsonl``, and names the command that recomputes what was lost. A part
only *partly* duplicated is reported, not moved (moving it would lose its other rows); feature loading
keeps the first row of a key, SQL shows both. A secret-fingerprint mismatch is reported: the fix is
the right ``secret``, not moving parts.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from features.errors import DamagedPartError, StoreError
from store._fs import exclusive_lock, fsync_dir
from store.layout import DEFAULT_STORE, Store
from store.provenance import params_hash
from store.secret import SECRET_FINGERPRINT_KEY
from store.tables import PARAMS_HASH_KEY, PART_GLOB, TMP_PREFIX, part_kv_metadata

__all__ = ["Finding", "CheckResult", "check_store", "QUARANTINE_MANIFEST"]

QUARANTINE_MANIFEST = "manifest.jsonl"
QUARANTINE = "quarantine"
REPORT = "report"
_FIXED_KEYS = {"scans": ("scan_id",), "pairs": ("pair_id",), "runs": ("run_id",)}
_RESERVED = frozenset({"scans", "pairs", "failures", "datasets", "runs", "metrics", "predictions"})
_FEATURE_KEYS = ("scan_id", "pair_id", "specimen_id")
_PROVENANCE = ("chronofeat.producer", "chronofeat.params", PARAMS_HASH_KEY)
_LOCK_WAIT_S = 10.0


@dataclass(frozen=True)
class Finding:
    """One problem (or note) about a table: where, what, and what repair does with it.

    ``action`` is ``quarantine`` (``--repair`` moves ``path`` away) or ``report`` (left in place);
    ``problem`` is ``False`` for notes that do not make the store unhealthy. ``rerun`` is the command
    that recomputes what a quarantined part held; ``moved_to`` is set once repair moved it.
    """

    table: str
    path: Path | None
    kind: str
    detail: str
    action: str = REPORT
    rerun: tuple[str, ...] = ()
    problem: bool = True
    moved_to: Path | None = None


@dataclass
class CheckResult:
    """What ``check_store`` saw and did: counts, findings, the quarantine manifest when repair moved parts."""

    store: Path
    tables: int = 0
    parts: int = 0
    rows: int = 0
    repair: bool = False
    findings: list[Finding] = field(default_factory=list)
    manifest: Path | None = None

    @property
    def problems(self) -> list[Finding]:
        """Findings that make the store unhealthy (notes left out)."""
        return [f for f in self.findings if f.problem]

    @property
    def moved(self) -> list[Finding]:
        """Findings whose file repair moved to quarantine."""
        return [f for f in self.findings if f.moved_to is not None]

    @property
    def exit_code(self) -> int:
        """0 when no problem was found, 1 otherwise (also after a repair: what was moved must be recomputed)."""
        return 1 if self.problems else 0

    def findings_table(self) -> pa.Table:
        """The findings as rows: table, file (relative to the store), problem, detail, action taken or advised."""
        def where(f: Finding) -> str:
            return _relative(f.path, self.store) if f.path is not None else ""

        def action(f: Finding) -> str:
            if f.moved_to is not None:
                return "moved to " + _relative(f.moved_to, self.store)
            if f.action == QUARANTINE:
                return "quarantine (--repair)"
            return "report only" if f.problem else "note"

        return pa.table({
            "table": [f.table for f in self.findings],
            "file": [where(f) for f in self.findings],
            "problem": [f.kind for f in self.findings],
            "detail": [f.detail for f in self.findings],
            "action": [action(f) for f in self.findings],
        })

    def summary_lines(self) -> list[str]:
        """Lines for a person: the verdict, then (after a repair) where the manifest is and what to re-run."""
        problems = self.problems
        head = f"checked {self.tables} tables, {self.parts} parts, {self.rows} rows in {self.store}: "
        if not problems:
            return [head + "no problems found"]
        lines = [head + f"{len(problems)} problem(s) found"]
        moved = self.moved
        if moved:
            lines.append(
                f"moved {len(moved)} file(s) to {self.store / 'quarantine'} (list: {self.manifest}); "
                "nothing was deleted"
            )
            reruns = list(dict.fromkeys(command for f in moved for command in f.rerun))
            if reruns:
                lines.append("to recompute what was moved, run:")
                lines += [f"  {command}" for command in reruns]
        pending = [f for f in problems if f.moved_to is None and f.action == QUARANTINE]
        if pending:
            lines.append(f"run 'python cli.py check --repair' to move the {len(pending)} bad file(s) to quarantine/")
        left = [f for f in problems if f.action == REPORT]
        if left:
            lines.append(f"{len(left)} problem(s) are reported, not moved (moving would lose good rows, or the fix "
                         "lies elsewhere): see 'detail' for what to do")
        return lines


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


@dataclass
class _Part:
    """A part that decoded: its rows, schema, ``chronofeat.*`` metadata and its possible key columns."""

    path: Path
    rows: int
    schema: pa.Schema
    meta: dict[str, str]
    key_batches: list[pa.Table]


def _table_folders(store: Store) -> list[tuple[str, Path]]:
    """(label, folder) of every table: ``scans`` ... and ``ingest/<index>`` for the ingest indexes."""
    found = []
    for base, prefix in ((store.tables_dir, ""), (store.root / "ingest" / "tables", "ingest/")):
        if base.is_dir():
            found += [(prefix + p.name, p) for p in sorted(base.iterdir()) if p.is_dir()]
    return found


def _writer_active(folder: Path) -> bool:
    """True when another process holds the table's writer lock right now."""
    lock = folder / ".lock"
    if not lock.exists():
        return False
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return False


def _key_columns(label: str, metas: list[dict[str, str]], schemas: list[pa.Schema]) -> tuple[str, ...]:
    """The columns that must be unique together in table ``label`` (empty: not a keyed table)."""
    if label in _FIXED_KEYS:
        return _FIXED_KEYS[label]
    if label in _RESERVED or label.startswith("ingest/"):
        return ()
    named = Counter(m["chronofeat.key"] for m in metas if m.get("chronofeat.key"))
    key = named.most_common(1)[0][0] if named else None
    if key is None:
        key = next((k for s in schemas for k in _FEATURE_KEYS if k in s.names), None)
    if key is None:
        return ()
    return (key, "source_sha256") if any("source_sha256" in s.names for s in schemas) else (key,)


def _read_part(path: Path, label: str, findings: list[Finding]) -> _Part | None:
    """Open and fully decode one part; a finding (and ``None``) when it cannot be read."""
    try:
        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
        expected = parquet.metadata.num_rows
    except (pa.ArrowException, OSError) as exc:
        findings.append(Finding(label, path, "unreadable footer", _reason(exc), QUARANTINE))
        return None
    meta = {k.decode(): v.decode(errors="replace") for k, v in (schema.metadata or {}).items()
            if k.startswith(b"chronofeat.")}
    # every row group is decoded (that is the check) but only the possible key columns are kept
    candidates = {*_FEATURE_KEYS, "run_id", "source_sha256", meta.get("chronofeat.key", "")}
    kept_columns = [name for name in schema.names if name in candidates]
    rows, batches = 0, []
    try:
        for group in range(parquet.num_row_groups):
            batch = parquet.read_row_group(group)
            rows += batch.num_rows
            batches.append(batch.select(kept_columns))
            del batch
    except (pa.ArrowException, OSError) as exc:
        findings.append(Finding(label, path, "unreadable data", _reason(exc), QUARANTINE))
        return None
    if rows != expected:
        findings.append(
            Finding(label, path, "row count", f"footer says {expected} rows, {rows} could be read", QUARANTINE)
        )
        return None
    return _Part(path, rows, schema.remove_metadata(), meta, batches)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if text.startswith("Could not open Parquet input source"):
        text = text.split("': ", 1)[-1]
    return text[:160]


def _check_schemas(label: str, parts: list[_Part], findings: list[Finding]) -> list[_Part]:
    """Parts whose schema unifies with the table's reference (the schema most parts share)."""
    if len(parts) < 2:
        return parts
    counts = Counter(p.schema.to_string() for p in parts)
    top = max(counts.values())
    reference = next(p.schema for p in parts if counts[p.schema.to_string()] == top)
    kept = []
    for part in parts:
        try:
            pa.unify_schemas([reference, part.schema], promote_options="default")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            findings.append(Finding(label, part.path, "schema conflict",
                                    f"column types differ from the table's other parts: {_reason(exc)}", QUARANTINE))
            continue
        kept.append(part)
    return kept


def _provenance_finding(label: str, part: _Part) -> Finding | None:
    """Why ``part`` has no usable provenance (missing keys, or params that do not hash to its params_hash)."""
    missing = [k.removeprefix("chronofeat.") for k in _PROVENANCE if k not in part.meta]
    if missing:
        return Finding(label, part.path, "no provenance",
                       f"metadata lacks {', '.join(missing)}: not written by chronofeat's part writer", QUARANTINE)
    recorded = part.meta[PARAMS_HASH_KEY]
    try:
        computed = params_hash(json.loads(part.meta["chronofeat.params"]), length=len(recorded))
    except (ValueError, TypeError):
        computed = None
    if computed != recorded:
        return Finding(label, part.path, "provenance mismatch",
                       f"params_hash {recorded} is not the hash of the recorded params", QUARANTINE)
    return None


def _one_configuration(label: str, kept: list[_Part], findings: list[Finding]) -> list[_Part]:
    """The parts of a feature table carrying its configuration (the one most parts carry, the oldest of equals)."""
    counts = Counter(p.meta[PARAMS_HASH_KEY] for p in kept)
    top = max(counts.values())
    main = next(p.meta[PARAMS_HASH_KEY] for p in kept if counts[p.meta[PARAMS_HASH_KEY]] == top)
    mixed = [p for p in kept if p.meta[PARAMS_HASH_KEY] != main]
    for part in mixed:
        findings.append(Finding(label, part.path, "config mixed",
                                f"configuration {part.meta[PARAMS_HASH_KEY]}, the table's other parts have {main}",
                                QUARANTINE))
    return [p for p in kept if p not in mixed]


def _check_provenance(label: str, parts: list[_Part], findings: list[Finding], fingerprint: str | None) -> list[_Part]:
    """Parts with complete, self-consistent provenance (and, for feature tables, one configuration)."""
    kept = []
    for part in parts:
        problem = _provenance_finding(label, part)
        if problem is not None:
            findings.append(problem)
            continue
        stamped = part.meta.get(SECRET_FINGERPRINT_KEY)
        if fingerprint and stamped and stamped != fingerprint:
            findings.append(Finding(label, part.path, "secret mismatch",
                                    f"pseudonymised under secret {stamped}, the store records {fingerprint}: "
                                    "restore the store's original 'secret' from a backup"))
        kept.append(part)
    if label in _RESERVED or label.startswith("ingest/") or not kept:
        return kept
    return _one_configuration(label, kept, findings)


def _check_keys(label: str, parts: list[_Part], columns: tuple[str, ...], findings: list[Finding]) -> list[_Part]:
    """Drop wholly duplicated parts (finding: quarantine); report parts sharing only some keys."""
    kept, seen, origin = [], set(), {}
    for part in parts:
        batches, part.key_batches = part.key_batches, []
        if not columns:
            kept.append(part)
            continue
        absent = [c for c in columns if c not in part.schema.names]
        if absent:
            findings.append(
                Finding(
                    label,
                    part.path,
                    "missing key",
                    f"no {', '.join(absent)} column: rows cannot be matched to scans/pairs",
                    QUARANTINE,
                )
            )
            continue
        keys = []
        for batch in batches:
            keys += list(zip(*(batch.column(c).to_pylist() for c in columns), strict=True))
        counts = Counter(keys)
        inner = sum(n - 1 for n in counts.values() if n > 1)
        if inner:
            findings.append(
                Finding(
                    label,
                    part.path,
                    "duplicate keys",
                    f"{inner} row(s) repeat a {'/'.join(columns)} within the part "
                    "(SQL shows both; feature loading keeps the first)",
                )
            )
        unique = set(counts)
        repeated = unique & seen
        if unique and repeated == unique:
            older = sorted({origin[k].name for k in repeated})
            findings.append(Finding(label, part.path, "duplicate part",
                                    f"all {len(unique)} keys already in older part(s) {', '.join(older[:2])}"
                                    f"{' …' if len(older) > 2 else ''}; this newer copy is redundant", QUARANTINE))
            continue
        if repeated:
            findings.append(
                Finding(
                    label,
                    part.path,
                    "duplicate keys",
                    f"{len(repeated)} of {len(unique)} keys also in older parts "
                    "(SQL shows both; feature loading keeps the "
                    "first). To rebuild cleanly, move the table folder aside and re-run its command",
                )
            )
        for key in unique - seen:
            origin[key] = part.path
        seen |= unique
        kept.append(part)
    return kept


def _check_table(store: Store, label: str, folder: Path, fingerprint: str | None, result: CheckResult) -> list[Finding]:
    findings: list[Finding] = []
    active = _writer_active(folder)
    for stray in sorted(folder.glob(TMP_PREFIX + "*")):
        if active:
            findings.append(Finding(label, stray, "writer active", "a writer holds the table: its temporary file is "
                                    "not judged; run check again when it finishes", problem=False))
        else:
            findings.append(Finding(label, stray, "stray temp file", "left by a killed writer; readers ignore it",
                                    QUARANTINE))
    for other in sorted(folder.iterdir()):
        if other.name == ".lock" or other.name.startswith(TMP_PREFIX) or other.match(PART_GLOB):
            continue
        findings.append(Finding(label, other, "unexpected file", "not a part (readers ignore it)", problem=False))
    paths = sorted(folder.glob(PART_GLOB))
    parts = [p for p in (_read_part(path, label, findings) for path in paths) if p is not None]
    result.parts += len(paths)
    parts = _check_schemas(label, parts, findings)
    parts = _check_provenance(label, parts, findings, fingerprint)
    columns = _key_columns(label, [p.meta for p in parts], [p.schema for p in parts])
    parts = _check_keys(label, parts, columns, findings)
    result.rows += sum(p.rows for p in parts)
    return findings


# --------------------------------------------------------------------------------------- reruns


def _column_values(folder: Path, column: str) -> set[str]:
    """Distinct values of ``column`` over the readable parts of a table folder (best effort)."""
    return {v for part in sorted(folder.glob(PART_GLOB)) for v in _column_values_of(part, column)}


def _known_datasets(store: Store, quarantined: set[Path]) -> list[str]:
    names = set()
    for table in ("datasets", "scans"):
        for part in sorted((store.tables_dir / table).glob(PART_GLOB)):
            if part not in quarantined:
                names |= _column_values_of(part, "dataset")
    return sorted(names)


def _part_meta(path: Path) -> dict[str, str]:
    try:
        return part_kv_metadata(path)
    except (DamagedPartError, FileNotFoundError):
        return {}


def _rerun_ingest(store: Store, label: str, folder: Path, datasets: list[str], suffix: str) -> tuple[str, ...]:
    """The ingest commands that rebuild a core table (``scans``, ``pairs``, ``datasets``) or an ingest index."""
    if not label.startswith("ingest/"):
        if datasets:  # scans and pairs are rebuilt per dataset from its index: every dataset must be ingested again
            return tuple(f"python cli.py ingest --dataset {d}{suffix}" for d in datasets)
        return (f"python cli.py ingest --dataset NAME{suffix}   (for each dataset of this store)",)
    from store.ingest import (
        index_location,  # index names are hashed: map them back through the dataset names
    )

    owners = [d for d in datasets if index_location(store, d).table == folder.name]
    name = owners[0] if owners else f"NAME   (the dataset whose index is {folder.name})"
    return (f"python cli.py ingest --dataset {name}{suffix}",)


def _rerun_extract(finding: Finding, folder: Path, suffix: str) -> tuple[str, ...]:
    """The extract commands that recompute the rows of a feature table's quarantined part."""
    meta = _part_meta(finding.path) or next(
        (m for m in (_part_meta(p) for p in sorted(folder.glob(PART_GLOB))) if m.get("chronofeat.producer")), {})
    extractor = _extract_alias(meta)
    targets = sorted(
        {meta["chronofeat.dataset"]} if meta.get("chronofeat.dataset") else _column_values(folder, "dataset")
    )
    params = meta.get("chronofeat.params", "")
    shown = params if len(params) <= 240 else params[:239] + "…"
    options = f"   (with the options that made table {finding.table}: {shown})" if params and params != "{}" else ""
    return tuple(f"python cli.py extract --extractor {extractor} --dataset {d}{suffix}{options}"
                 for d in (targets or ["DATASET"]))


def _rerun(store: Store, finding: Finding, folder: Path, datasets: list[str]) -> tuple[str, ...]:
    """The commands that recompute what the quarantined file of ``finding`` held (empty: nothing to redo)."""
    label = finding.table
    suffix = "" if store.root == Path(DEFAULT_STORE).resolve() else f" --store {store.root}"
    if finding.kind in ("stray temp file", "duplicate part", "config mixed", "no provenance"):
        return ()  # nothing of this table was lost: a leftover, a redundant copy, or rows that never belonged here
    if label in ("scans", "pairs", "datasets") or label.startswith("ingest/"):
        return _rerun_ingest(store, label, folder, datasets, suffix)
    if label == "failures":
        return ()  # inputs whose failure rows moved away are simply tried again by the next ingest / extract
    if label in ("runs", "metrics", "predictions"):
        runs = sorted(_column_values_of(finding.path, "run_id"))
        which = f"runs {', '.join(runs[:5])}" if runs else "the runs missing from 'python cli.py runs'"
        return (f"python cli.py fit ...{suffix}   (the fit commands of {which})",)
    return _rerun_extract(finding, folder, suffix)


def _extract_alias(meta: dict[str, str]) -> str:
    """The ``extract --extractor`` name that wrote a part, from its producer (and params for keypoint families)."""
    producer = meta.get("chronofeat.producer", "")
    if not producer.startswith("extractor:"):
        return "NAME"
    name = producer.removeprefix("extractor:")
    if name in ("bovw", "descriptors"):  # one registered family, served as '<descriptor>_bovw' on the command line
        try:
            config = json.loads(meta.get("chronofeat.params", "{}"))
        except ValueError:
            config = {}
        inner = config.get("params", config) if isinstance(config, dict) else {}
        descriptor = inner.get("descriptor") if isinstance(inner, dict) else None
        if isinstance(descriptor, str) and descriptor.isidentifier():
            return f"{descriptor}_bovw"
    return name


def _column_values_of(path: Path, column: str) -> set[str]:
    try:
        return {v for v in pq.read_table(path, columns=[column]).column(0).to_pylist() if v}
    except (pa.ArrowException, OSError, KeyError):
        return set()


# --------------------------------------------------------------------------------------- repair


def _destination(store: Store, label: str, path: Path) -> Path:
    folder = store.quarantine_dir / label
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name.lstrip(".")
    if target.exists():
        target = folder / f"{target.stem}.{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}{target.suffix}"
    return target


def _repair_table(store: Store, label: str, folder: Path, findings: list[Finding], datasets: list[str],
                  manifest: Path) -> list[Finding]:
    """Move the table's quarantine-bound files under its writer lock; return the findings updated."""
    movable = [f for f in findings if f.action == QUARANTINE and f.path is not None]
    if not movable:
        return findings
    busy = (
        f"Table {label!r} is being written; repair skipped it: "
        "run 'python cli.py check --repair' again when it finishes."
    )
    try:
        with exclusive_lock(folder / ".lock", busy_message=busy, timeout_s=_LOCK_WAIT_S):
            updated = []
            for finding in findings:
                if finding not in movable or not finding.path.exists():
                    updated.append(finding)
                    continue
                rerun = _rerun(store, finding, folder, datasets)
                target = _destination(store, label, finding.path)
                os.replace(finding.path, target)
                fsync_dir(target.parent)
                moved = Finding(finding.table, finding.path, finding.kind, finding.detail, finding.action, rerun,
                                finding.problem, target)
                with open(manifest, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps({
                        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "table": label,
                        "from": _relative(finding.path, store.root),
                        "to": _relative(target, store.root),
                        "problem": finding.kind,
                        "detail": finding.detail,
                        "rerun": list(rerun),
                    }) + "\n")
                    handle.flush()
                    os.fsync(handle.fileno())
                updated.append(moved)
            fsync_dir(folder)
            return updated
    except StoreError:
        return findings + [Finding(label, None, "busy", busy)]


def check_store(store: Store, *, repair: bool = False) -> CheckResult:
    """Check every part of every table of ``store``; with ``repair`` move bad files to quarantine.

    Returns a ``CheckResult`` (findings, counts, the manifest path when files moved). Nothing is ever
    deleted; parts that are only partly duplicated are reported, not moved (see the module docstring).
    """
    fingerprint = None
    if store.secret_fingerprint_path.is_file():
        fingerprint = store.secret_fingerprint_path.read_text(encoding="ascii", errors="replace").strip() or None
    result = CheckResult(store=store.root, repair=repair)
    folders = _table_folders(store)
    per_table = []
    for label, folder in folders:
        findings = _check_table(store, label, folder, fingerprint, result)
        per_table.append((label, folder, findings))
    result.tables = sum(1 for _, folder in folders if any(folder.glob(PART_GLOB)))
    if repair and any(f.action == QUARANTINE for _, _, fs in per_table for f in fs):
        quarantined = {f.path for _, _, fs in per_table for f in fs if f.action == QUARANTINE}
        datasets = _known_datasets(store, quarantined) or _known_datasets(store, set())
        result.manifest = store.quarantine_dir / QUARANTINE_MANIFEST
        result.manifest.parent.mkdir(parents=True, exist_ok=True)
        per_table = [(label, folder, _repair_table(store, label, folder, findings, datasets, result.manifest))
                     for label, folder, findings in per_table]
    for _, _, findings in per_table:
        result.findings += sorted(findings, key=lambda f: str(f.path or ""))
    return result
