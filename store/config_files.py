"""Parameter files: ``--config FILE`` (TOML or YAML) for ``extract`` and ``fit``, and writing them back out.

A configuration file holds command options by name -- the option without its dashes, with ``-`` or
``_`` (``batch-size`` / ``batch_size``), or its destination name (``backbone`` for ``fit --model``) --
either flat or in a section named after the command, so one file can serve several commands::

    [extract]
    extractor = "diffstats"
    dataset = "chronomid"

    [fit]
    model = "logistic"
    features = "diffstats_absolute+time"
    seeds = 1

The file's values become the command's defaults: an option also given on the command line wins.
Every value is checked as the command line would check it (type, choices); an unknown option, a
wrong type, or a missing or unreadable file stops the command (exit 2) with a message that names
the file and the option. ``--store`` is never read from a file: a published experiment does not
carry a local path.

The effective options of a command (file and command line merged, ``store.command_options``) are stored
with what it produced: a ``fit`` run's ``runs.config`` holds them under ``cli``, every part an
``extract`` writes holds them in its ``chronofeat.cli`` key-value metadata. ``config_text`` writes
them back out as TOML (``cli.py config --run RUN_ID`` / ``--table TABLE``, or ``--dump-config FILE``
on the command itself), so a published experiment is one file.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from features.errors import ParameterError, StoreError
from store.command_options import NOT_IN_CONFIG, effective_options, recorded_options, recording_options

__all__ = [
    "CONFIG_COMMANDS",
    "CONFIG_SUFFIXES",
    "NOT_IN_CONFIG",
    "add_config_options",
    "read_config",
    "config_defaults",
    "parse_command_line",
    "effective_options",
    "recording_options",
    "recorded_options",  # re-exported from store.command_options
    "config_toml",
    "write_config",
    "config_text",
]

CONFIG_COMMANDS = ("extract", "fit")
CONFIG_SUFFIXES = (".toml", ".yaml", ".yml")


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--config FILE`` and ``--dump-config FILE`` to a command's ``parser``."""
    group = parser.add_argument_group("parameter files")
    group.add_argument("--config", default=None, metavar="FILE",
                       help="read options from a TOML or YAML file (flat, or under [COMMAND]); options given on the "
                            "command line win")
    group.add_argument("--dump-config", default=None, metavar="FILE",
                       help="after the command succeeds, write its effective options (file and command line merged) "
                            "to FILE (.toml, or .yaml/.yml); feed it back with --config")


# ---------------------------------------------------------------------------------- reading files


def _load(path: Path) -> Any:
    suffix = path.suffix.lower()
    if suffix not in CONFIG_SUFFIXES:
        raise ParameterError(
            f"The configuration file {path} must end in .toml, .yaml or .yml (the suffix says how to read it)."
        )
    if not path.is_file():
        raise ParameterError(
            f"The configuration file {path} does not exist (or is not a file). Give --config an existing file; "
            "write one with --dump-config FILE or 'cli.py config --run RUN_ID'."
        )
    try:
        if suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib

            with open(path, "rb") as handle:
                return tomllib.load(handle)
        import yaml

        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except UnicodeDecodeError:
        raise ParameterError(f"The configuration file {path} is not UTF-8 text.") from None
    except OSError as exc:
        raise ParameterError(f"The configuration file {path} cannot be read ({exc.strerror}).") from None
    except ValueError as exc:  # tomllib.TOMLDecodeError
        raise ParameterError(f"The configuration file {path} is not valid TOML: {exc}.") from None
    except Exception as exc:  # yaml.YAMLError: its message gives the line and column
        if type(exc).__module__.startswith("yaml"):
            where = " ".join(str(exc).replace(f'"{path}", ', "").split())  # one line: what and where
            raise ParameterError(f"The configuration file {path} is not valid YAML: {where}.") from None
        raise


def read_config(path: str | Path, *, command: str, commands: Sequence[str] = CONFIG_COMMANDS) -> dict[str, Any]:
    """The options a configuration file gives ``command``: its flat keys, overridden by its ``[command]``
    section; sections of the other ``commands`` are skipped. Values are as the file wrote them (checked
    later by ``config_defaults``). ``ParameterError`` for a missing, unreadable or malformed file."""
    path = Path(path)
    data = _load(path)
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ParameterError(
            f"The configuration file {path} must hold option = value entries (a table / mapping); "
            f"it holds a {type(data).__name__}."
        )
    flat = {str(k): v for k, v in data.items() if not (k in commands and isinstance(v, Mapping))}
    section = data.get(command)
    if isinstance(section, Mapping):
        flat.update({str(k): v for k, v in section.items()})
    return flat


# --------------------------------------------------------------------------- checking the values


def _option_names(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every name a file may use for ``parser``'s options: destinations first, then long option names."""
    actions = [a for a in parser._actions if a.dest not in NOT_IN_CONFIG]  # argparse has no public accessor
    names: dict[str, argparse.Action] = {}
    for action in actions:
        names[action.dest] = action
    for action in actions:
        aliases = [action.dest.replace("_", "-")] + [
            s.lstrip("-") for s in action.option_strings
            if s.startswith("--") and not (isinstance(action, argparse.BooleanOptionalAction) and s.startswith("--no-"))
        ]
        for alias in aliases:
            names.setdefault(alias, action)
            names.setdefault(alias.replace("-", "_"), action)
    return names


def _expected(action: argparse.Action) -> str:
    if action.nargs == 0:
        return "true or false"
    kind = {int: "an int", float: "a number"}.get(action.type, "text")
    if action.choices is not None:
        return f"one of {', '.join(map(str, action.choices))}"
    return kind


def _scalar(action: argparse.Action, key: str, value: Any, source: Path) -> Any:
    def bad() -> ParameterError:
        flag = action.option_strings[0] if action.option_strings else action.dest.upper()
        return ParameterError(
            f"The {key!r} option in {source} must be {_expected(action)} (as {flag} on the command line). "
            f"Got {value!r} instead."
        )

    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise bad()
    try:
        if action.type is None:
            converted = value if isinstance(value, str) else str(value)
        elif action.type is int:
            if isinstance(value, float):
                raise ValueError(value)
            converted = int(value)
        elif action.type is float:
            converted = float(value)
        else:
            converted = action.type(str(value))
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        raise bad() from None
    if action.choices is not None and converted not in action.choices:
        raise bad()
    return converted


def _value(action: argparse.Action, key: str, value: Any, source: Path) -> Any:
    """``value`` for ``action`` as the command line would have produced it; ``ParameterError`` otherwise."""
    if action.nargs == 0:  # a flag: store_true / store_const / --x/--no-x
        if not isinstance(value, bool):
            raise ParameterError(
                f"The {key!r} option in {source} must be true or false (a flag on the command line). "
                f"Got {value!r} instead."
            )
        if isinstance(action, argparse.BooleanOptionalAction):
            return value
        return action.const if value else action.default
    if action.nargs in (None, "?"):
        return _scalar(action, key, value, source)
    items = value if isinstance(value, list) else [value]
    return [_scalar(action, key, item, source) for item in items]


def config_defaults(parser: argparse.ArgumentParser, values: Mapping[str, Any], *, source: str | Path,
                    command: str) -> dict[str, Any]:
    """``values`` (from ``read_config``) checked against ``parser``'s options: destination -> value as the
    command line would parse it. ``ParameterError`` naming the file and the option for an unknown option
    (listing the valid ones), a wrong type or a value outside the option's choices."""
    source = Path(source)
    names = _option_names(parser)
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in ("store", "force"):
            raise ParameterError(
                f"{source}: {key!r} cannot be set in a configuration file; give --{key} on the command line "
                "(or $CHRONOFEAT_STORE), so the file describes the experiment, not where it runs."
            )
        action = names.get(key)
        if action is None:
            valid = sorted({a.dest for a in names.values()})
            close = difflib.get_close_matches(key, list(names), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ParameterError(
                f"{source}: unknown option {key!r} for '{command}'.{hint} Valid options: {', '.join(valid)}."
            )
        if value is None:  # YAML null: the command's own default
            continue
        out[action.dest] = _value(action, key, value, source)
    return out


# ------------------------------------------------------------------------------- the parse hook


def _subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser | None:
    for action in parser._actions:  # argparse has no public accessor for its subcommand parsers
        choices = action.choices if isinstance(action.choices, Mapping) else {}
        if isinstance(choices.get(name), argparse.ArgumentParser):
            return choices[name]
    return None


def _config_token(argv: Sequence[str]) -> str | None:
    """The value of ``--config FILE`` / ``--config=FILE`` in ``argv`` (None when absent)."""
    for i, token in enumerate(argv):
        if token == "--":
            break
        if token == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith("--config="):
            return token.split("=", 1)[1]
    return None


def _apply(parser: argparse.ArgumentParser, defaults: Mapping[str, Any]) -> None:
    """Make ``defaults`` the defaults of ``parser``; a required option or positional the file gives becomes
    optional on the command line."""
    for action in parser._actions:
        if action.dest in defaults:
            action.required = False
            if not action.option_strings:
                action.nargs, action.default = "?", defaults[action.dest]
    parser.set_defaults(**defaults)


def parse_command_line(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args(argv)``, with the options of a ``--config FILE`` as the command's defaults.

    The first token names the command; when it has ``--config`` (``add_config_options``) the file is
    read (``read_config``) and checked (``config_defaults``), and a problem ends parsing the way a bad
    argument does (usage, the message, exit status 2).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    path = _config_token(argv)
    sub = _subcommand(parser, argv[0]) if argv else None
    applied = False
    if sub is not None and path is not None and "dump_config" in {a.dest for a in sub._actions}:
        try:
            values = read_config(path, command=argv[0])
            _apply(sub, config_defaults(sub, values, source=path, command=argv[0]))
        except ParameterError as exc:  # exit 2 as for a bad argument; the usage would bury the message
            sub.exit(2, f"error: {exc}\n")
        applied = True
    args = parser.parse_args(argv)
    if getattr(args, "config", None) is not None and not applied:  # an abbreviation such as --conf
        (sub or parser).exit(2, "error: write --config in full: --config FILE or --config=FILE\n")
    return args


# ------------------------------------------------------------------------ recording and writing


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # 0.001, 1e-05, inf, nan: all TOML floats
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def config_toml(command: str, options: Mapping[str, Any], *, comment: str = "") -> str:
    """``options`` as a TOML document with one ``[command]`` section (None values left out: they mean
    the command's default). ``comment`` lines go first, each prefixed with ``#``."""
    lines = [f"# {line}" if line else "#" for line in comment.splitlines()]
    lines.append(f"[{command}]")
    lines += [f"{key} = {_toml_value(value)}" for key, value in options.items() if value is not None]
    return "\n".join(lines) + "\n"


def write_config(path: str | Path, command: str, options: Mapping[str, Any], *, comment: str = "") -> Path:
    """Write ``options`` of ``command`` to ``path``: TOML (``config_toml``), or YAML for ``.yaml``/``.yml``.
    Returns the path. ``ParameterError`` for another suffix or an unwritable place."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CONFIG_SUFFIXES:
        raise ParameterError(f"--dump-config {path}: the file must end in .toml, .yaml or .yml.")
    if suffix == ".toml":
        text = config_toml(command, options, comment=comment)
    else:
        import yaml

        header = "".join(f"# {line}\n" for line in comment.splitlines())
        kept = {k: v for k, v in options.items() if v is not None}
        text = header + yaml.safe_dump({command: kept}, sort_keys=False, allow_unicode=True)
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ParameterError(f"--dump-config {path}: cannot write the file ({exc.strerror}).") from None
    return path


def _stored(store, *, run: str | None, table: str | None) -> tuple[dict, str]:
    """The recorded ``{"command", "options"}`` of a run or a table, and what it came from."""
    if run is not None:
        from store.runs import run_row

        row = run_row(store, run)
        recorded = (row.get("config") or {}).get("cli")
        if recorded and recorded["options"].get("dataset") is None:
            recorded["options"]["dataset"] = row["dataset"]  # the dataset the run picked
        return recorded, f"run {row['run_id']}"
    from store.tables import read_table, table_kv_metadata

    read_table(store, table, columns=[])  # TableNotFoundError naming the known tables
    text = table_kv_metadata(store, table).get("chronofeat.cli")
    return (json.loads(text) if text else None), f"table {table}"


def config_text(store, *, run: str | None = None, table: str | None = None, output: str | Path | None = None) -> str:
    """The effective options recorded with fit run ``run`` (a unique prefix) or feature ``table`` (its
    newest part), as TOML that ``--config`` reads back; with ``output`` they are written to that file
    (``write_config``) and the text says so. ``ParameterError`` unless exactly one of ``run`` and ``table``
    is given; ``StoreError`` when the run or table recorded no options (written through the Python API
    or by an older chronofeat)."""
    if (run is None) == (table is None):
        raise ParameterError("config needs exactly one of --run RUN_ID and --table TABLE.")
    recorded, what = _stored(store, run=run, table=table)
    if not recorded:
        raise StoreError(
            f"The {what} records no command options (it was written through the Python API or by an older "
            "chronofeat), so there is no configuration to write back. Re-run the command to record them."
        )
    command = recorded["command"]
    comment = (f"chronofeat {command} options recorded with {what}\n"
               f"run it again: python cli.py {command} --config THIS_FILE")
    if output is not None:
        path = write_config(output, command, recorded["options"], comment=comment)
        return f"configuration of {what} written: {path} (run it again: python cli.py {command} --config {path})"
    return config_toml(command, recorded["options"], comment=comment)
