"""DuckDB over the store: one in-memory connection on which every table is a view of its parts.

Two guards keep ``python cli.py sql`` from changing the store, each enough on its own for the
statements we know of:

1. an allow-list of statements, decided on DuckDB's own parse (``extract_statements``, statement type)
   refined with DuckDB's tokenizer: SELECT (WITH, FROM-first, VALUES, DESCRIBE, SHOW, SUMMARIZE,
   PIVOT), EXPLAIN of those, a few PRAGMAs that only read, ``SET/RESET VARIABLE`` and temporary tables,
   views and macros. ``--write`` adds statements on the in-memory database (CREATE, INSERT, DROP...)
   and ``COPY ... TO 'file'`` to a file outside the store. Everything else is refused before anything
   runs: settings, ATTACH, IMPORT/EXPORT DATABASE, CALL, INSTALL/LOAD, secrets, transactions...
2. a locked sandbox on the connection itself: after the views are made, DuckDB may open only the
   store's parts (and, with ``--write``, the one checked COPY target); external access, extension
   loading and every setting (``log_query_path``, ``profiling_output``, ``temp_directory``...) are
   locked, so even a statement that slipped the list cannot open, redirect or write a file.

Reading files outside the store (``read_csv('labels.csv')``) is therefore refused too: the store's
views are the only inputs. DuckDB itself (``duckdb`` on the Parquet parts) is the tool for joins with
files of your own.
"""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from features.errors import (
    DamagedPartError,
    InputError,
    ReadOnlyQueryError,
    UnsafeLocationError,
)
from store.layout import Store
from store.render import check_output_location
from store.tables import PART_GLOB, list_tables, table_parts

__all__ = ["connect", "query", "check_statements", "check_read_only", "relation_to_arrow", "READ_PRAGMAS"]

# PRAGMAs that only report: none of them changes a setting or touches a file
READ_PRAGMAS = frozenset({
    "version", "platform", "user_agent", "database_size", "database_list", "show_databases", "show_tables",
    "show_tables_expanded", "table_info", "storage_info", "functions", "collations", "metadata_info",
})
# Statements that only touch the in-memory database (the views cannot be written through): --write
_MEMORY_WRITES = frozenset({"CREATE", "INSERT", "UPDATE", "DELETE", "DROP", "ALTER", "MERGE_INTO"})
_TEMP_OBJECTS = frozenset({"TABLE", "VIEW", "MACRO", "FUNCTION"})
_WRITE_OBJECTS = _TEMP_OBJECTS | {"SEQUENCE", "TYPE", "SCHEMA", "INDEX", "UNIQUE"}
# Keywords that start work other than reading; inside an allowed statement (a WITH clause can hold
# ``INSERT ... RETURNING`` or even ``COPY ... TO``) they are refused unless they name a column (``AS copy``)
_NON_READ_WORDS = frozenset({
    "INSERT", "UPDATE", "DELETE", "MERGE", "COPY", "CREATE", "DROP", "ALTER", "ATTACH", "DETACH", "INSTALL",
    "LOAD", "TRUNCATE", "EXPORT", "IMPORT", "PRAGMA", "CALL", "VACUUM", "CHECKPOINT", "SET", "RESET", "USE",
})
# Table functions that change settings or start writing logs/profiles (DuckDB 1.4 aborts on some of them
# once the configuration is locked, so they are refused before anything runs)
_SETTING_FUNCTIONS = frozenset({
    "enable_logging", "disable_logging", "truncate_duckdb_logs", "enable_profiling", "disable_profiling",
    "enable_checkpoint_on_shutdown", "disable_checkpoint_on_shutdown", "force_checkpoint",
})
_EXPORT_WORDS = _NON_READ_WORDS - {"INSERT", "UPDATE", "DELETE", "MERGE", "CREATE", "DROP", "ALTER", "TRUNCATE"}
_NEVER = {
    "SET": "settings cannot be changed from 'sql' (log_query_path, profiling_output, temp_directory... could "
           "redirect DuckDB's own file writes into the store); SET VARIABLE name = value is allowed",
    "ATTACH": "the store is queried through its views only; other database files cannot be attached",
    "DETACH": "the store is queried through its views only; other database files cannot be attached",
    "LOAD": "extensions cannot be installed or loaded from 'sql'",
    "EXTENSION": "extensions cannot be installed or loaded from 'sql'",
    "EXPORT": "export one result with COPY (SELECT ...) TO 'file.parquet' and --write instead",
    "COPY_DATABASE": "export one result with COPY (SELECT ...) TO 'file.parquet' and --write instead",
    "CALL": "read a table function with SELECT * FROM function(...) instead",
    "PRAGMA": f"only these PRAGMAs, which only read, are allowed: {', '.join(sorted(READ_PRAGMAS))}",
}
_ALLOWED = (
    "'sql' runs read statements (SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN, read-only PRAGMAs, "
    "SET VARIABLE, CREATE TEMP TABLE/VIEW/MACRO) and, with --write, statements on in-memory tables and "
    "COPY ... TO 'file' outside the store"
)
_DAMAGE_NOTE = "check --repair"
_PART_IN_MESSAGE = re.compile(r"""['"]?([^'"\s]+\.parquet)['"]?""")


@dataclass(frozen=True)
class _Token:
    text: str
    kind: str  # keyword | identifier | string_const | numeric_const | operator
    start: int  # offset in the statement's text

    @property
    def word(self) -> str:
        return self.text.upper() if self.kind == "keyword" else ""


def _tokens(sql: str) -> list[_Token]:
    """DuckDB's tokens of ``sql`` without comments, each with its text."""
    raw = duckdb.tokenize(sql)
    out = []
    for i, (start, kind) in enumerate(raw):
        end = raw[i + 1][0] if i + 1 < len(raw) else len(sql)
        if kind.name != "comment":
            out.append(_Token(sql[start:end].strip().rstrip(";").strip(), kind.name, start))
    return [t for t in out if t.text]


def _parse(sql: str) -> list:
    try:
        with duckdb.connect(":memory:") as con:
            return con.extract_statements(sql)
    except (duckdb.Error, ValueError) as exc:
        raise InputError(f"The SQL could not be parsed: {exc}") from None


def _short(sql: str) -> str:
    return " ".join(sql.split())[:80]


def _refuse(kind: str, sql: str, *, write: bool, needs_write: bool, reason: str | None = None) -> ReadOnlyQueryError:
    if needs_write and not write:
        return ReadOnlyQueryError(
            f"Refused the {kind} statement ({_short(sql)!r}): 'sql' is read-only so the store cannot be changed "
            "or exported by accident. Add --write if you mean it; nothing was run."
        )
    return ReadOnlyQueryError(
        f"Refused the {kind} statement ({_short(sql)!r}), even with --write: {reason or _ALLOWED}. Nothing was run."
    )


def _check_words(tokens: Sequence[_Token], sql: str, words: frozenset) -> None:
    """Refuse a keyword of ``words`` inside an allowed statement, unless it is a column name, and any call
    of a table function that changes settings (``_SETTING_FUNCTIONS``)."""
    for i, token in enumerate(tokens):
        if token.text.strip('"').lower() in _SETTING_FUNCTIONS and i + 1 < len(tokens) and tokens[i + 1].text == "(":
            raise ReadOnlyQueryError(
                f"Refused {_short(sql)!r}: {token.text}() changes DuckDB's settings (where it logs or profiles to), "
                f"which 'sql' never does. {_ALLOWED}. Nothing was run."
            )
        if token.word in words and not (i and (tokens[i - 1].word == "AS" or tokens[i - 1].text == ".")):
            raise ReadOnlyQueryError(
                f"Refused {_short(sql)!r}: it holds {token.word}, which does more than read (a WITH clause can "
                f"hide INSERT or COPY). {_ALLOWED}; a column named {token.text} must be written in double quotes. "
                "Nothing was run."
            )


def _skip_parens(tokens: Sequence[_Token], i: int) -> int:
    """Index after the parenthesised group starting at ``tokens[i]`` (``i`` itself when it is not '(')."""
    if i >= len(tokens) or tokens[i].text != "(":
        return i
    depth = 0
    for j in range(i, len(tokens)):
        depth += {"(": 1, ")": -1}.get(tokens[j].text, 0)
        if depth == 0:
            return j + 1
    return len(tokens)


def _string_literal(token: _Token) -> str | None:
    """The value of a plain ``'...'`` literal (``''`` is a quote); None for any other form."""
    text = token.text
    if token.kind != "string_const" or len(text) < 2 or text[0] != "'" or text[-1] != "'":
        return None
    inner = text[1:-1]
    if re.search(r"(?<!')'(?!')", inner.replace("''", "")):
        return None
    return inner.replace("''", "'")


def _copy_target(tokens: Sequence[_Token], sql: str) -> str:
    """The file of ``COPY <table or (query)> TO 'file' [options]``; refuse any other COPY form."""
    i = 1
    depth = 0
    while i < len(tokens):
        depth += {"(": 1, ")": -1}.get(tokens[i].text, 0)
        if depth == 0 and tokens[i].word in ("TO", "FROM"):
            break
        i += 1
    if i >= len(tokens) or tokens[i].word != "TO":
        raise ReadOnlyQueryError(
            f"Refused {_short(sql)!r}: only COPY <table or (query)> TO 'file' is allowed (it exports a result); "
            "COPY ... FROM loads files, which 'sql' does not read. Nothing was run."
        )
    target = _string_literal(tokens[i + 1]) if i + 1 < len(tokens) else None
    if not target:
        raise ReadOnlyQueryError(
            f"Refused {_short(sql)!r}: write the COPY target as one plain quoted file name, e.g. "
            "COPY (SELECT ...) TO 'result.parquet', so it can be checked to lie outside the store. Nothing was run."
        )
    rest = tokens[i + 2:]
    if rest and rest[0].word == "WITH":
        rest = rest[1:]
    if rest and _skip_parens(rest, 0) != len(rest):
        raise ReadOnlyQueryError(
            f"Refused {_short(sql)!r}: after the COPY target only an option list in parentheses may follow. "
            "Nothing was run."
        )
    _check_words(tokens[1:], sql, _EXPORT_WORDS)
    return target


@dataclass(frozen=True)
class _Statement:
    """One parsed statement: DuckDB's kind, its SQL, its tokens and the first word."""

    kind: str
    sql: str
    tokens: list[_Token]
    first: str


def _read_words_start(s: _Statement) -> int | None:
    """Where the words to check of a plain read statement begin: a query (SELECT, PIVOT), a read PRAGMA
    or SET/RESET VARIABLE; ``None`` for any other statement."""
    tokens = s.tokens
    if s.kind == "SELECT" or (s.kind == "MULTI" and s.first in ("PIVOT", "PIVOT_WIDER")):
        return 0
    if (s.kind == "PRAGMA" and s.first == "PRAGMA" and len(tokens) > 1 and tokens[1].text.lower() in READ_PRAGMAS
            and _skip_parens(tokens, 2) == len(tokens)):
        return 1
    if s.kind == "SET" and s.first in ("SET", "RESET") and len(tokens) > 2 and tokens[1].word == "VARIABLE":
        return 2
    return None


def _read(s: _Statement, write: bool) -> list[str] | None:
    start = _read_words_start(s)
    if start is None:
        return None
    _check_words(s.tokens[start:], s.sql, _NON_READ_WORDS)
    return []


def _explain(s: _Statement, write: bool) -> list[str] | None:
    """EXPLAIN (ANALYZE) of one read statement: it runs or plans it, so that one is checked too."""
    if s.kind != "EXPLAIN" or s.first != "EXPLAIN":
        return None
    tokens = s.tokens
    i = 1
    if i < len(tokens) and tokens[i].word in ("ANALYZE", "ANALYSE"):
        i += 1
    i = _skip_parens(tokens, i)
    inner = s.sql[tokens[i].start:] if i < len(tokens) else ""
    inner_statements = _parse(inner) if inner else []
    if len(inner_statements) != 1:
        raise _refuse(s.kind, s.sql, write=write, needs_write=False, reason="EXPLAIN one read statement")
    try:
        return _check_one(inner_statements[0], write=False)
    except ReadOnlyQueryError:
        raise _refuse(
            s.kind,
            s.sql,
            write=write,
            needs_write=False,
            reason="EXPLAIN (ANALYZE) runs or plans its statement, so it must be a read statement too",
        ) from None


def _create(s: _Statement, write: bool) -> list[str] | None:
    """CREATE TEMP objects always; tables, views... in memory only with ``write``; never a secret."""
    if s.kind != "CREATE" or s.first != "CREATE":
        return None
    tokens = s.tokens
    i = 3 if len(tokens) > 2 and tokens[1].word == "OR" and tokens[2].word == "REPLACE" else 1
    temp = i < len(tokens) and tokens[i].word in ("TEMP", "TEMPORARY")
    what = tokens[i + temp].word if i + temp < len(tokens) else ""
    if (temp and what in _TEMP_OBJECTS) or (write and not temp and what in _WRITE_OBJECTS):
        _check_words(tokens[i + temp + 1:], s.sql, _NON_READ_WORDS if not write else _EXPORT_WORDS)
        return []
    if what == "SECRET" or (i < len(tokens) and tokens[i].word == "PERSISTENT"):
        raise _refuse("CREATE SECRET", s.sql, write=write, needs_write=False,
                      reason="secrets are for remote files, which 'sql' does not read")
    raise _refuse(s.kind, s.sql, write=write, needs_write=what in _WRITE_OBJECTS)


def _write(s: _Statement, write: bool) -> list[str] | None:
    """COPY ... TO a file and statements that change only the in-memory database: with ``write`` only."""
    if s.kind != "COPY" and s.kind not in _MEMORY_WRITES:
        return None
    if not write:
        raise _refuse(s.kind, s.sql, write=write, needs_write=True)
    if s.kind == "COPY":
        return [_copy_target(s.tokens, s.sql)]
    _check_words(s.tokens[1:], s.sql, _EXPORT_WORDS)
    return []


def _import_database(s: _Statement, write: bool) -> list[str] | None:
    if s.kind == "PRAGMA" and s.first != "PRAGMA":  # IMPORT DATABASE and COPY FROM DATABASE parse as PRAGMAs
        raise _refuse(" ".join(t.word for t in s.tokens[:2]) or s.kind, s.sql, write=write, needs_write=False,
                      reason="it runs the SQL files of a folder or copies a whole database; "
                             "export one result with COPY (SELECT ...) TO 'file' and --write instead")
    return None


_CHECKS = (_read, _explain, _create, _write, _import_database)


def _check_one(statement, *, write: bool) -> list[str]:
    """Check one parsed statement against the allow-list; return the COPY targets it writes.

    Each check answers for the statements it knows (targets, or ``ReadOnlyQueryError``) and ``None``
    for the others; a statement no check answers for is refused.
    """
    tokens = _tokens(statement.query)
    s = _Statement(statement.type.name, statement.query, tokens, tokens[0].word if tokens else "")
    for check in _CHECKS:
        targets = check(s, write)
        if targets is not None:
            return targets
    raise _refuse(s.kind, s.sql, write=write, needs_write=False, reason=_NEVER.get(s.kind))


def check_statements(sql: str, *, write: bool = False) -> list[str]:
    """Check every statement of ``sql`` against the allow-list; return the COPY target files (``write``).

    Raises ``ReadOnlyQueryError`` naming the first statement refused (nothing has run then) and
    ``InputError`` when the SQL does not parse.
    """
    targets: list[str] = []
    for statement in _parse(sql):
        targets += _check_one(statement, write=write)
    return targets


def check_read_only(con: duckdb.DuckDBPyConnection | None, sql: str) -> None:
    """Raise ``ReadOnlyQueryError`` if any statement in ``sql`` would do more than read (``con`` is unused)."""
    check_statements(sql, write=False)


def _duckdb_scalar(dtype: pa.DataType) -> str | None:
    return {pa.float32(): "FLOAT", pa.float64(): "DOUBLE", pa.int32(): "INTEGER", pa.int64(): "BIGINT"}.get(dtype)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _damage_message(store: Store, name: str, damaged: Sequence[Path]) -> str:
    listed = ", ".join(str(p) for p in damaged)
    return (
        f"Table {name!r} has {len(damaged)} damaged part(s) that cannot be read: {listed}. Run "
        f"'python cli.py check --repair --store {store.root}' to move them to quarantine/, then re-run the "
        "command that wrote the table. Other tables can still be queried."
    )


def _view_sql(store: Store, info, parts: Sequence[Path]) -> str:
    """``CREATE VIEW`` of one table over ``parts``; a table with damaged parts raises when queried."""
    guard = ""
    if info.damaged:
        # An uncorrelated subquery in WHERE is evaluated whatever the filters on the parts (a plain
        # error() predicate is skipped when filter pushdown leaves no row), so no query of this
        # table can return a silently partial answer.
        guard = f" WHERE (SELECT error({_literal(_damage_message(store, info.name, info.damaged))})) IS NULL"
        if not parts or info.schema is None:
            return f'CREATE VIEW "{info.name}" AS SELECT * FROM (SELECT NULL AS damaged_table){guard}'
    # Parquet has no fixed-size list: cast embeddings back to the FLOAT[d] arrays they were written as
    casts = [
        f'"{f.name}"::{_duckdb_scalar(f.type.value_type)}[{f.type.list_size}] AS "{f.name}"'
        for f in info.schema
        if pa.types.is_fixed_size_list(f.type) and _duckdb_scalar(f.type.value_type)
    ]
    replace = f" REPLACE ({', '.join(casts)})" if casts else ""
    files = ", ".join(_literal(str(p)) for p in parts)
    return f'CREATE VIEW "{info.name}" AS SELECT *{replace} FROM read_parquet([{files}], union_by_name = true){guard}'


def _sandbox(con: duckdb.DuckDBPyConnection, store: Store, readable: Sequence[str], export_to: Sequence[Path]) -> None:
    """Let DuckDB open only ``readable`` and the checked ``export_to`` targets, then lock every setting."""
    paths = list(readable)
    directories = []
    for target in export_to:
        # as written too: DuckDB 1.x compares a relative target literally (it lies where it was checked)
        for form in {str(target), os.path.abspath(target), str(Path(target).resolve())}:
            # the file, DuckDB's temporary sibling when it replaces one, and the folder PARTITION_BY makes
            paths += [form, str(Path(form).with_name("tmp_" + Path(form).name))]
            directories.append(form.rstrip(os.sep) + os.sep)
    spill = Path(tempfile.gettempdir()) / f"chronofeat-duckdb-{uuid.uuid4().hex}"
    if spill.resolve() == store.root or store.root in spill.resolve().parents:
        spill = None  # a temporary folder inside the store: keep DuckDB's spill files out of it
    con.execute("SET temp_directory = ?", [str(spill) if spill else ""])
    con.execute("SET allowed_paths = ?", [paths])
    con.execute("SET allowed_directories = ?", [directories])
    con.execute("SET enable_external_access = false")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET lock_configuration = true")


def _open(store: Store, *, threads: int | None, export_to: Sequence[Path]) -> tuple[duckdb.DuckDBPyConnection, dict]:
    """The sandboxed connection and ``{table: its damaged parts}`` for the tables that have some."""
    con = duckdb.connect(":memory:")
    damaged_tables: dict[str, tuple[Path, ...]] = {}
    try:
        if threads:
            con.execute(f"SET threads = {int(threads)}")
        readable: list[str] = []
        for info in list_tables(store):
            damaged = set(info.damaged)
            if damaged:
                damaged_tables[info.name] = info.damaged
            parts = [p for p in sorted(store.table_dir(info.name).glob(PART_GLOB)) if p not in damaged]
            readable += [str(p) for p in parts]
            con.execute(_view_sql(store, info, parts))
        _sandbox(con, store, readable, export_to)
    except BaseException:
        con.close()
        raise
    return con, damaged_tables


def connect(
    store: Store, *, threads: int | None = None, export_to: Sequence[str | os.PathLike] = ()
) -> duckdb.DuckDBPyConnection:
    """Open an in-memory DuckDB connection with one view per store table (``SELECT * FROM scans``).

    Views read the table's Parquet parts as listed when the connection opens (``union_by_name``).
    A table with damaged parts (unreadable footer) gets a view that raises, when queried, an error
    naming them; other tables work. The connection is sandboxed and locked: it may open only those
    parts, plus the ``export_to`` files (COPY targets already checked to lie outside the store),
    and no setting can be changed afterwards.
    """
    return _open(store, threads=threads, export_to=[Path(t) for t in export_to])[0]


def relation_to_arrow(relation) -> pa.Table:
    """Materialise a DuckDB relation as an Arrow table (``None``, from a statement with no result, gives an
    empty table)."""
    if relation is None:
        return pa.table({})
    to_arrow = getattr(relation, "to_arrow_table", None) or relation.arrow  # duckdb >= 1.4 / older
    result = to_arrow()
    return result.read_all() if isinstance(result, pa.RecordBatchReader) else result


def _unreadable(part: Path) -> str | None:
    """Why ``part`` cannot be read whole, row group by row group (None when it reads)."""
    try:
        parquet = pq.ParquetFile(part)
        for group in range(parquet.num_row_groups):
            parquet.read_row_group(group)
    except Exception as exc:  # noqa: BLE001 - a diagnosis: any failure to read the part is the answer
        return f"{type(exc).__name__}: {exc}"
    return None


def _damaged_part_error(store: Store, part: Path, why: str) -> DamagedPartError:
    return DamagedPartError(
        f"Part {part} of table {part.parent.name!r} cannot be read ({why}). Run 'python cli.py check --repair "
        f"--store {store.root}' to move damaged parts to quarantine/, then re-run the command that wrote the "
        "table. Other tables can still be queried."
    )


def _translate(store: Store, exc: duckdb.Error, tables: Sequence[str] = ()) -> Exception:
    """The chronofeat error for a DuckDB error raised while a query of store ``tables`` ran.

    An error that names a part, or that is not about the SQL itself while a part of ``tables`` fails to
    read, becomes ``DamagedPartError`` naming that part (DuckDB does not always name the file).
    """
    text = str(exc).split("\n")[0]
    message = re.sub(r"^[A-Za-z ]+Error: ", "", text)
    if isinstance(exc, duckdb.PermissionException) or "disabled by configuration" in text:
        return UnsafeLocationError(
            f"The query was refused access to a file ({message}). 'sql' opens only the store's own parts (and, "
            "with --write, the one COPY target outside the store); it reads no other file. Query the views "
            "(scans, pairs, feature tables...); to join a file of your own, run duckdb on the parts directly: "
            f"SELECT ... FROM '{store.tables_dir}/scans/*.parquet'."
        )
    if "configuration has been locked" in text:
        return ReadOnlyQueryError(
            f"Refused: {message}. Settings are locked while 'sql' runs so no statement can redirect DuckDB's "
            "file writes; nothing in the store was changed."
        )
    if _DAMAGE_NOTE in text and "damaged part" in text:
        return DamagedPartError(message)
    prefix = str(store.tables_dir) + os.sep
    named = [Path(m) for m in _PART_IN_MESSAGE.findall(text) if m.startswith(prefix)]
    if named:
        if not named[0].exists():
            return InputError(f"A part of the store ({named[0]}) disappeared while the query ran (a table was "
                              "rebuilt); run the query again.")
        return _damaged_part_error(store, named[0], message)
    if not isinstance(exc, (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException)):
        for table in tables:
            for part in table_parts(store, table):
                why = _unreadable(part)
                if why:
                    return _damaged_part_error(store, part, f"{message}; {why}")
    return InputError(f"The query failed: {message}")


def query(store: Store, sql: str, *, write: bool = False) -> pa.Table:
    """Run ``sql`` against the store's views and return the last statement's result as Arrow.

    Every statement is checked first (``check_statements``): without ``write`` only reads run; with
    ``write`` also statements on the in-memory database and ``COPY ... TO 'file'`` where the file lies
    outside the store (``UnsafeLocationError`` otherwise). Refused: ``ReadOnlyQueryError``; a damaged
    part of a queried table: ``DamagedPartError``; any other failure: ``InputError``.
    """
    targets = check_statements(sql, write=write)
    checked = [check_output_location(store, target, export=True) for target in targets]
    con, damaged = _open(store, threads=None, export_to=[*checked, *map(Path, targets)])
    try:
        statements = con.extract_statements(sql)
        for statement in statements[:-1]:
            con.execute(statement)
        return relation_to_arrow(con.sql(statements[-1].query)) if statements else pa.table({})
    except duckdb.Error as exc:
        # A table whose every part is damaged has no columns to bind: name its parts, not the missing column
        named = {t.text.strip('"').lower() for t in _tokens(sql) if t.kind == "identifier"}
        for table in sorted(named & set(damaged)):
            raise DamagedPartError(_damage_message(store, table, damaged[table])) from None
        tables = sorted(named & {info.name for info in list_tables(store)})
        raise _translate(store, exc, tables) from None
    finally:
        con.close()
