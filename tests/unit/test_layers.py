"""The rooms import in one direction: nothing outside `cli/` imports the CLI
(a library that needs a rendering finds it in `views/`), `views/` renders
without I/O and without the CLI, and neither hides an import inside a function
(an import cycle dodged that way is a layer running backwards)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ("contracts", "services", "audit", "bench", "infra", "api", "views")
"""Folders that ship as `tokenhub.*` besides `cli/`."""
NO_IO_IMPORTS = frozenset({"asyncpg", "aiokafka", "httpx", "os", "shutil", "socket", "subprocess", "sys"})
NO_IO_CALLS = frozenset({"print", "open", "input"})
WRITES_ALLOWED = {("views/outputs.py", "export")}
"""`make schemas` writes the --json schemas it declares: the one function in views/ that writes a file."""


def _modules(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py") if "__pycache__" not in path.parts)


def _imported(tree: ast.AST) -> list[tuple[ast.AST, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node, node.module))
    return found


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", _modules(*LIBRARY), ids=_name)
def test_nothing_outside_the_cli_imports_it(path: Path) -> None:
    tree = ast.parse(path.read_text())
    assert not [name for _, name in _imported(tree) if name == "tokenhub.cli" or name.startswith("tokenhub.cli.")]


@pytest.mark.parametrize("path", _modules("cli", "views"), ids=_name)
def test_imports_are_at_module_level(path: Path) -> None:
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    hidden = [f"line {node.lineno}: {name}" for node, name in _imported(tree) if id(node) not in top]
    assert not hidden, f"{_name(path)} imports inside a function or block: {hidden}"


@pytest.mark.parametrize("path", _modules("views"), ids=_name)
def test_views_are_pure(path: Path) -> None:
    tree = ast.parse(path.read_text())
    io_imports = [name for _, name in _imported(tree) if name.split(".")[0] in NO_IO_IMPORTS]
    assert not io_imports, f"{_name(path)} imports {io_imports}: views turn values into text, without I/O"
    calls = []
    for function in (node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)):
        if (_name(path), function.name) in WRITES_ALLOWED:
            continue
        calls += [f"{function.name}: {call.func.id if isinstance(call.func, ast.Name) else call.func.attr}"
                  for call in ast.walk(function) if isinstance(call, ast.Call)
                  and ((isinstance(call.func, ast.Name) and call.func.id in NO_IO_CALLS)
                       or (isinstance(call.func, ast.Attribute) and call.func.attr in {"write_text", "read_text", "mkdir"}))]
    assert not calls, f"{_name(path)} does I/O: {calls}"
