"""The pynetdicom names the engine relies on beyond pynetdicom's public API, read from the
engine's source with ``ast``, and where pynetdicom's own source defines each.

The rule (tests/test_engine_contract.py holds ``engine.PRIVATE_NAMES`` equal to it):

- a name with one leading underscore that agent/net/engine/*.py reads, writes, deletes,
  tests or imports (``x._name``, ``getattr(x, "_name")`` and the like, ``from pynetdicom.m
  import _name``) on anything but an object of the engine's own;
- any name but a dunder that the engine writes on a pynetdicom module or class (a
  replaced function, a setting): if pynetdicom renamed it, the write would go unnoticed.

The engine's own objects are ``self`` and ``super()`` in a class of its own; in a class
that derives from a pynetdicom class, a private name is the engine's own only if its
class body or ``self.`` assignments introduce it and pynetdicom's base does not define
it. Everything else (``assoc``, ``self.assoc``, a parameter) is pynetdicom's.

Each name gets the pynetdicom module or class it belongs to: the receiver's, when the
engine's source says what it is (an imported pynetdicom module or class, a base class, a
parameter or variable annotated with a pynetdicom class); otherwise the one class or
module whose source defines the name (``def``, a class attribute, a ``self.`` assignment,
a module-level name). In a class hierarchy the topmost definer is the owner. A name that
nothing in pynetdicom defines, or several unrelated classes do, is a problem.

Not seen: a name the engine builds at run time (``getattr(x, variable)``), and pynetdicom
behaviour it relies on without naming it (``engine.RELIED_ON`` lists that by hand).
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pynetdicom

ENGINE = Path(__file__).resolve().parent.parent / "agent" / "net" / "engine"
PYNETDICOM = Path(pynetdicom.__file__).resolve().parent
NOT_LIBRARY = {"tests", "apps", "benchmarks"}  # pynetdicom's directories that are not the library
ACCESSORS = {"getattr", "hasattr", "setattr", "delattr"}
Owner = Any  # a pynetdicom module or class


def private(name: str) -> bool:
    """One leading underscore, not a dunder."""
    return name.startswith("_") and not name.startswith("__")


@dataclass
class Definitions:
    """What pynetdicom's source defines: names per class and per module (by dotted name)."""

    by_class: dict[str, set[str]] = field(default_factory=dict)  # "pynetdicom.dul.DUL..." -> names
    by_module: dict[str, set[str]] = field(default_factory=dict)

    def defines(self, owner: Owner, name: str) -> bool:
        if isinstance(owner, ModuleType):
            return name in self.by_module.get(owner.__name__, set())
        return name in self.by_class.get(f"{owner.__module__}.{owner.__qualname__}", set())


def _module_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements at module level, those inside if/try/with blocks too."""
    for node in body:
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for block in ("body", "orelse", "finalbody"):
            yield from _module_level(getattr(node, block, []))
        for handler in getattr(node, "handlers", []):
            yield from _module_level(handler.body)


def _targets(node: ast.AST) -> list[ast.expr]:
    if isinstance(node, ast.Assign):
        return [t for target in node.targets for t in _flat(target)]
    if isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        return [node.target]
    return []


def _flat(target: ast.expr) -> list[ast.expr]:
    if isinstance(target, (ast.Tuple, ast.List)):
        return [t for element in target.elts for t in _flat(element)]
    return [target]


def _class_names(node: ast.ClassDef) -> set[str]:
    """Names a class body defines, and those its methods assign on ``self``."""
    names: set[str] = set()
    for statement in node.body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(statement.name)
        names.update(t.id for t in _targets(statement) if isinstance(t, ast.Name))
    for inner in ast.walk(node):
        for target in _targets(inner):
            if (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                    and target.value.id == "self"):
                names.add(target.attr)
    return names


def pynetdicom_definitions(root: Path = PYNETDICOM) -> Definitions:
    """Every name pynetdicom's source (the package at ``root``) defines, by class and module."""
    found = Definitions()
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if NOT_LIBRARY & set(parts) or parts[-1] == "__main__":  # the CLI: not to be imported
            continue
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names = found.by_module.setdefault(module, set())
        if parts[-1] != "__init__":  # a submodule is an attribute of its package
            found.by_module.setdefault(".".join(parts[:-1]), set()).add(parts[-1])
        for node in _module_level(ast.parse(path.read_text(), str(path)).body):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            if isinstance(node, ast.ClassDef):
                found.by_class[f"{module}.{node.name}"] = _class_names(node)
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
            names.update(t.id for t in _targets(node) if isinstance(t, ast.Name))
    return found


@dataclass(frozen=True)
class Use:
    """One place the engine uses a pynetdicom name, and on what, if its source says so.

    ``owner``: a pynetdicom module or class; ("used", base) for a name used on ``self`` of
    an engine subclass of ``base``, ("defined", base) for one such a class introduces; None:
    look for it in pynetdicom's definitions.
    """

    name: str
    where: str  # file:line
    owner: Owner | tuple[str, type] | None = None


def _pynetdicom_object(value: Any) -> bool:
    name = value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", "")
    return isinstance(value, (ModuleType, type)) and str(name).split(".")[0] == "pynetdicom"


@dataclass(frozen=True)
class _Self:
    """``self`` in a class of the engine's: its pynetdicom base (if any), and its own names."""

    base: type | None
    own: frozenset[str]


class _Reader(ast.NodeVisitor):
    """Collects a module's uses of pynetdicom names, knowing what each receiver is."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.imported: dict[str, Any] = {}  # local name -> pynetdicom module or class
        self.uses: list[Use] = []
        self.scopes: list[dict[str, Any]] = [{}]  # name -> pynetdicom classes, or a _Self
        self.returns: dict[str, ast.expr | None] = {}  # the module's functions' return types

    def resolve(self, node: ast.expr | None) -> Any:
        """The pynetdicom module/class an expression is, the pynetdicom classes a variable
        holds, a _Self, or None (not known)."""
        if isinstance(node, ast.Name):
            for scope in reversed(self.scopes):
                if node.id in scope:
                    return scope[node.id]
            return self.imported.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self.resolve(node.value)
            inner = getattr(base, node.attr, None) if _pynetdicom_object(base) else None
            return inner if _pynetdicom_object(inner) else None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and (
                node.func.id == "super"):
            return self.resolve(ast.Name("self"))
        return None

    def annotated(self, node: ast.expr | None) -> tuple[type | None, ...]:
        """The pynetdicom classes an annotation names (quoted or not, ``A | B | None``)."""
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            node = ast.parse(node.value, mode="eval").body
        if isinstance(node, ast.Constant) and node.value is None:
            return ()
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return self.annotated(node.left) + self.annotated(node.right)
        value = self.resolve(node)
        return (value if isinstance(value, type) else None,)

    def classes(self, node: ast.expr | None) -> tuple[type, ...]:
        """The annotation's classes, if all of it names pynetdicom classes; else none."""
        found = self.annotated(node)
        return tuple(cls for cls in found if cls is not None) if None not in found else ()

    def add(self, receiver: ast.expr, name: str, line: int, *, written: bool = False) -> None:
        owner = self.resolve(receiver)
        where = f"{self.where}:{line}"
        if isinstance(owner, _Self):  # self in an engine class
            if owner.base is not None and private(name) and name not in owner.own:
                self.uses.append(Use(name, where, ("used", owner.base)))
            return  # else the engine's own object, or a name its class introduces (see below)
        if isinstance(owner, tuple):  # a variable holding one of these pynetdicom classes
            if private(name):
                self.uses.extend(Use(name, where, cls) for cls in owner)
        elif private(name) or (written and _pynetdicom_object(owner) and not name.startswith("__")):
            self.uses.append(Use(name, where, owner))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if (node.module or "").split(".")[0] == "pynetdicom":
            module = importlib.import_module(node.module or "")
            for alias in node.names:
                value = getattr(module, alias.name, None)
                if value is None:  # a submodule not imported yet
                    value = importlib.import_module(f"{node.module}.{alias.name}")
                if _pynetdicom_object(value):
                    self.imported[alias.asname or alias.name] = value
                if private(alias.name):
                    self.uses.append(Use(alias.name, f"{self.where}:{node.lineno}", module))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] == "pynetdicom":
                self.imported[alias.asname or alias.name] = importlib.import_module(alias.name)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        bases = [b for b in map(self.resolve, node.bases) if isinstance(b, type)]
        base = bases[0] if bases else None
        if base is not None:  # what this class introduces may be its own, or an override
            for name in sorted(_class_names(node)):
                if private(name):
                    self.uses.append(Use(name, f"{self.where}:{node.lineno}", ("defined", base)))
        me = _Self(base, frozenset(_class_names(node)))
        self.scopes.append({"self": me, "cls": me})
        self.generic_visit(node)
        self.scopes.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        arguments = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
        scope = {a.arg: self.classes(a.annotation) or None for a in arguments}
        # a parameter hides an outer name; an unannotated self stays the method's own
        self.scopes.append({name: classes for name, classes in scope.items()
                            if classes or name not in ("self", "cls")})
        self.generic_visit(node)
        self.scopes.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        annotated = self.classes(node.annotation)
        if isinstance(node.target, ast.Name) and annotated:
            self.scopes[-1][node.target.id] = annotated
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        """``x = C_STORE()``, or ``x = f()`` where the module's ``f`` returns pynetdicom's."""
        call = node.value
        if len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) and isinstance(
                call, ast.Call):
            made = self.resolve(call.func)
            if isinstance(made, type):
                self.scopes[-1][node.targets[0].id] = (made,)
            elif isinstance(call.func, ast.Name) and self.classes(self.returns.get(call.func.id)):
                self.scopes[-1][node.targets[0].id] = self.classes(self.returns[call.func.id])
        self.generic_visit(node)

    def visit_Module(self, node: ast.Module) -> None:
        for statement in node.body:
            if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.returns[statement.name] = statement.returns
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        written = isinstance(node.ctx, (ast.Store, ast.Del))
        self.add(node.value, node.attr, node.lineno, written=written)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if (isinstance(node.func, ast.Name) and node.func.id in ACCESSORS and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
            written = node.func.id in ("setattr", "delattr")
            self.add(node.args[0], node.args[1].value, node.lineno, written=written)
        self.generic_visit(node)


def engine_uses(engine: Path = ENGINE) -> list[Use]:
    """Every use of a pynetdicom name the engine's modules (``engine``/*.py) make."""
    uses = []
    for path in sorted(engine.glob("*.py")):
        reader = _Reader(path.name)
        reader.visit(ast.parse(path.read_text(), str(path)))
        uses += reader.uses
    return uses


def _topmost(cls: type, name: str, known: Definitions) -> type | None:
    """The pynetdicom class highest in ``cls``'s MRO whose source defines ``name``."""
    definers = [k for k in cls.__mro__ if _pynetdicom_object(k) and known.defines(k, name)]
    return definers[-1] if definers else None


def _definers(name: str, known: Definitions) -> list[Owner]:
    """The pynetdicom modules and classes that define ``name``; a subclass's is its base's."""
    owners: list[Owner] = []
    for module_name, names in known.by_module.items():
        if name in names:
            owners.append(importlib.import_module(module_name))
    for qualified, names in known.by_class.items():
        module_name, _, class_name = qualified.rpartition(".")
        cls = getattr(importlib.import_module(module_name), class_name, None)
        if name in names and isinstance(cls, type):
            owners.append(cls)
    classes = [o for o in owners if isinstance(o, type)]
    return [o for o in owners if not (isinstance(o, type) and any(
        c is not o and issubclass(o, c) for c in classes))]


def inventory(
    engine: Path = ENGINE, known: Definitions | None = None
) -> tuple[dict[tuple[Owner, str], list[str]], list[str]]:
    """(owner, name) -> where the engine uses it, and the problems: names pynetdicom lacks."""
    known = known or pynetdicom_definitions()
    found: dict[tuple[Owner, str], list[str]] = {}
    problems: list[str] = []
    for use in engine_uses(engine):
        owner = use.owner
        if isinstance(owner, tuple):  # on self of an engine subclass of a pynetdicom class
            how, base = owner
            owner = _topmost(base, use.name, known)
            if owner is None and how == "defined":
                continue  # introduced by the engine: its own
            if owner is None:
                problems.append(f"{use.where}: {_label(base)} has no {use.name}")
                continue
        elif isinstance(owner, type):
            top = _topmost(owner, use.name, known)
            if top is None:
                problems.append(f"{use.where}: {_label(owner)} has no {use.name}")
                continue
            owner = top
        elif isinstance(owner, ModuleType):
            if not known.defines(owner, use.name):
                problems.append(f"{use.where}: {_label(owner)} has no {use.name}")
                continue
        else:
            definers = _definers(use.name, known)
            if len(definers) != 1:
                what = ", ".join(sorted(map(_label, definers))) or "nothing in pynetdicom"
                problems.append(f"{use.where}: {use.name} is defined by {what}"
                                + (" (annotate the receiver)" if definers else ""))
                continue
            owner = definers[0]
        found.setdefault((owner, use.name), []).append(use.where)
    return found, problems


def _label(owner: Owner) -> str:
    if isinstance(owner, ModuleType):
        return owner.__name__
    return f"{owner.__module__}.{owner.__qualname__}"


def exists(owner: Owner, name: str, known: Definitions) -> bool:
    """True if the installed ``owner`` has ``name``, or its source (or a base's) defines it:
    an instance attribute exists only once an instance's ``__init__`` assigns it."""
    if hasattr(owner, name):
        return True
    bases = owner.__mro__ if isinstance(owner, type) else (owner,)
    return any(_pynetdicom_object(base) and known.defines(base, name) for base in bases)


def label(pair: tuple[Owner, str]) -> str:
    """``module.Class.name`` of an inventory entry, for messages and test ids."""
    return f"{_label(pair[0])}.{pair[1]}"
