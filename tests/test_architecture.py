"""The package layers only point down, and no package reaches into another's private modules.

Layers, bottom to top: ``features`` (pure arrays and rules, no disk) -> ``store`` (disk) ->
``extractors`` -> ``classifiers`` -> ``cli``. A module may import from its own layer or any layer below
it, and only public modules (no ``_name`` component) of another package. Every import counts, also the
ones inside functions: a lazy import that points up is still a layer pointing up. Module-level import
cycles inside a package are refused too (two modules that each need the other are one idea in two places).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"features": 0, "store": 1, "extractors": 2, "classifiers": 3, "cli": 4}


def _modules() -> dict[str, Path]:
    found = {"cli": ROOT / "cli.py"}
    for package in ("features", "store", "extractors", "classifiers"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import in ``path``, ``from a import b`` giving ``a.b`` when
    ``a.b`` is a module of ours, else ``a``; relative imports resolved against ``module``."""
    modules = _modules()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append((node.lineno, candidate if candidate in modules else base))
    return [(line, name) for line, name in found if name.split(".")[0] in LAYERS]


def _violations() -> list[str]:
    problems = []
    for module, path in _modules().items():
        own = module.split(".")[0]
        for line, target in _imports(path, module):
            top = target.split(".")[0]
            where = f"{path.relative_to(ROOT)}:{line} imports {target}"
            if LAYERS[top] > LAYERS[own]:
                problems.append(f"{where}: {top} is above {own}")
            if top != own and any(part.startswith("_") for part in target.split(".")[1:]):
                problems.append(f"{where}: a private module of another package")
    return problems


def test_imports_point_down_and_stay_public():
    problems = _violations()
    assert not problems, (
        "Imports against the layering (features -> store -> extractors -> classifiers -> cli):\n" + "\n".join(problems)
    )


def test_no_import_cycles_between_modules():
    modules = _modules()
    graph = {m: {t for _, t in _imports(p, m) if t in modules and t != m} for m, p in modules.items()}
    cycles = set()

    def visit(node: str, stack: list[str]) -> None:
        for nxt in graph[node]:
            if nxt in stack:
                cycle = stack[stack.index(nxt):]
                start = cycle.index(min(cycle))
                cycles.add(" -> ".join(cycle[start:] + cycle[:start] + [min(cycle)]))
            elif nxt not in done:
                visit(nxt, stack + [nxt])
        done.add(node)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    # a package's __init__ re-exporting its modules is not a cycle of ideas
    cycles = {c for c in cycles if not any(part.count(".") == 0 and part in LAYERS for part in c.split(" -> "))}
    assert not cycles, "Modules that import each other:\n" + "\n".join(sorted(cycles))


@pytest.mark.parametrize("bad, expected", [
    ("from store.tables import read_table\n", "store is above features"),
    ("from extractors._cnn_data import x\n", "private module of another package"),
])
def test_the_checker_sees_a_bad_import(tmp_path, monkeypatch, bad, expected):
    fake = ROOT / "features" / "_architecture_probe.py"
    assert not fake.exists()
    try:
        fake.write_text(bad, encoding="utf-8")
        assert any(expected in p for p in _violations())
    finally:
        fake.unlink()


MAX_COMPLEXITY = 20  # radon's cyclomatic complexity (branches, loops, boolean operators, comprehensions)
MAX_LINES = 80  # from ``def`` to the last line, docstring included


def test_every_library_function_stays_readable():
    from radon.complexity import cc_visit
    from radon.visitors import Function

    problems = []
    for _module, path in _modules().items():
        source = path.read_text(encoding="utf-8")
        for block in cc_visit(source):
            for item in [b for b in [block, *getattr(block, "methods", [])] if isinstance(b, Function)]:
                where = f"{path.relative_to(ROOT)}:{item.lineno} {item.name}"
                if item.complexity > MAX_COMPLEXITY:
                    problems.append(f"{where}: complexity {item.complexity} > {MAX_COMPLEXITY}")
                if item.endline - item.lineno + 1 > MAX_LINES:
                    problems.append(f"{where}: {item.endline - item.lineno + 1} lines > {MAX_LINES}")
    assert not problems, "Functions to split (named results, one job each):\n" + "\n".join(sorted(set(problems)))


def test_ruff_finds_nothing():
    """The lint configuration in pyproject.toml (E, F, W, B, UP, SIM, I, C90; line length 120) holds everywhere."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
