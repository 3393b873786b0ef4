"""The shape of the code, read from its source with ``ast``: who may import whom, and who
may talk to SQLite.

``LAYERS`` is the one place the layer order is written, lowest first: a module may import
from its own layer and the layers below it, never from above, and no import may close a
cycle.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "agent"

# lowest first; a module belongs to the first layer with a prefix of its name
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundations", ("agent.errors", "agent.validation", "agent.words", "agent.dicom",
                     "agent.threads", "agent.tls", "agent.procfs", "agent.reloading")),
    ("configuration", ("agent.config", "agent.forward.settings", "agent.forward.pace_settings",
                       "agent.forward.link_settings",
                       "agent.field.settings",
                       "agent.metrics.settings", "agent.fallthrough.settings",
                       "agent.prefetch.settings", "agent.reconfigure", "agent.web.settings",
                       "agent.outgoing.settings", "agent.tls_settings")),
    ("archive", ("agent.archive",)),
    ("status", ("agent.status", "agent.status_mpps", "agent.status_file",
                "agent.status_destinations", "agent.status_parts", "agent.status_timings",
                "agent.status_disk", "agent.status_prefetch",
                "agent.timekeeping")),
    ("network", ("agent.net", "agent.metrics", "agent.web")),
    ("services", ("agent.qr", "agent.forward", "agent.pull", "agent.studies",
                  "agent.fallthrough", "agent.prefetch", "agent.outgoing")),
    ("operations", ("agent.ops",)),
    ("agent", ("agent.app",)),
    ("field", ("agent.field",)),
    ("commands", ("agent.cli", "agent.__main__")),
]
ENFORCED = {name for name, _prefixes in LAYERS}

# The only layer that opens SQLite or runs statements.
DATABASE_LAYER = "archive"
DATABASE_MODULES = ("sqlite3",)
STATEMENT_METHODS = {"execute", "executemany", "executescript"}
CONNECTION_METHODS = {"reading", "transaction"}  # the Index's, which hand out its connection
NOT_SQL: set[tuple[str, str]] = set()  # (file, call) named like SQL but not SQL; none now
SQL_TEXT = re.compile(
    r"\b(SELECT\s.+\sFROM|INSERT\s+(OR\s+\w+\s+)?INTO|DELETE\s+FROM|UPDATE\s+\w+\s+SET"
    r"|CREATE\s+(TABLE|INDEX)|PRAGMA\s+\w+)\b",
    re.DOTALL,
)


@dataclass(frozen=True)
class Module:
    """One source file of the package and its parsed tree."""

    name: str
    path: Path
    tree: ast.Module

    @property
    def relative(self) -> str:
        """The file's path from the repository root, with forward slashes."""
        return self.path.relative_to(ROOT).as_posix()


def modules() -> Iterator[Module]:
    """Every module under agent/, parsed."""
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield Module(".".join(parts), path, ast.parse(path.read_text(), str(path)))


def layer_of(module: str) -> int | None:
    """The position of a module's layer in ``LAYERS`` (None: not an agent module)."""
    for position, (_name, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return position
    return None


def imported(module: Module) -> Iterator[tuple[int, str]]:
    """(line, module name) of every import, those inside functions and TYPE_CHECKING too."""
    package = module.name if module.path.name == "__init__.py" else module.name.rpartition(".")[0]
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield node.lineno, base
            for alias in node.names:  # ``from agent import app`` imports agent.app
                yield node.lineno, f"{base}.{alias.name}"


def upward_imports(module: Module) -> list[str]:
    """Imports of a module from layers above its own."""
    own = layer_of(module.name)
    if own is None:
        return []
    found = []
    for line, name in imported(module):
        other = layer_of(name)
        if other is not None and other > own:
            found.append(f"{module.relative}:{line} imports {name} ({LAYERS[other][0]})")
    return found


def database_use(module: Module) -> list[str]:
    """Where a module outside the database layer imports sqlite3, runs a statement, takes
    the index's connection or holds SQL text."""
    found = []
    for node in ast.walk(module.tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            if any(n and n.split(".")[0] in DATABASE_MODULES for n in names):
                found.append(f"{module.relative}:{node.lineno} imports sqlite3")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            called = (module.relative, ast.unparse(node.func))
            wanted = STATEMENT_METHODS | CONNECTION_METHODS
            if node.func.attr in wanted and called not in NOT_SQL:
                found.append(f"{module.relative}:{node.lineno} calls {called[1]}()")
        elif isinstance(node, ast.Constant) and _is_sql(node.value):
            found.append(f"{module.relative}:{node.lineno} holds SQL text")
    return found


def _is_sql(value: object) -> bool:
    return isinstance(value, str) and SQL_TEXT.search(value) is not None


def in_layer(module: Module, name: str) -> bool:
    """The module belongs to the layer called ``name``."""
    position = layer_of(module.name)
    return position is not None and LAYERS[position][0] == name


def test_every_agent_module_has_a_layer() -> None:
    unplaced = [m.name for m in modules() if layer_of(m.name) is None and m.name != "agent"]
    assert unplaced == [], "add these modules to LAYERS in tests/test_layering.py"


@pytest.mark.parametrize("layer", sorted(ENFORCED))
def test_no_layer_imports_from_a_layer_above(layer: str) -> None:
    upward = [line for m in modules() if in_layer(m, layer) for line in upward_imports(m)]
    assert upward == []


def test_only_the_archive_talks_to_sqlite() -> None:
    outside = [m for m in modules() if not in_layer(m, DATABASE_LAYER)]
    assert [line for m in outside for line in database_use(m)] == []


def test_the_checks_see_what_they_look_for() -> None:
    """The checks themselves: each finds the thing it forbids in a made-up module."""
    source = (
        "import sqlite3\nfrom agent.forward.queue import add_jobs\n"
        "def f(conn):\n    from ..net import scu\n"
        "    conn.execute('SELECT pk FROM instances')\n"
        "    with index.reading() as conn:\n        pass\n"
    )
    fake = Module("agent.archive.fake", PACKAGE / "archive" / "fake.py", ast.parse(source))
    assert len(upward_imports(fake)) == 4  # agent.forward(.queue...) twice, agent.net(.scu)
    assert {line.split(" ", 1)[1] for line in database_use(fake)} == {
        "imports sqlite3", "calls index.reading()", "calls conn.execute()", "holds SQL text"}


def import_graph() -> dict[str, set[str]]:
    """Module -> the agent modules it imports; a module's own ancestor packages are left
    out (a package's __init__ re-exporting its modules is no cycle of meaning)."""
    found = {m.name: m for m in modules()}
    return {
        module.name: {
            name
            for _line, name in imported(module)
            if name in found and name != module.name and not module.name.startswith(name + ".")
        }
        for module in found.values()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first walk (each reported once, from where it closes)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_check_sees_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
