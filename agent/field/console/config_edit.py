"""Staged edits of the TOML config file: set, diff, apply (atomic write), revert.

Edits go to a tomlkit document, so comments and layout survive. Every change is checked
at once by parsing the whole staged document with ``agent.config.parse``: a change that
would make the file invalid is refused and nothing is staged.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.container import Container
from tomlkit.items import Table

from agent import config as config_module
from agent.config import Config
from agent.errors import ConfigError

_MISSING = object()


class ConfigStage:
    """The config file as on disk, and the edits staged on top of it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._original: str | None = None
        self._staged: tomlkit.TOMLDocument | None = None

    @property
    def dirty(self) -> bool:
        """True if any edit is staged."""
        return self._staged is not None and self.staged_text() != self._original

    def document(self) -> tomlkit.TOMLDocument:
        """The staged document (the file itself when nothing is staged)."""
        if self._staged is not None:
            return self._staged
        return tomlkit.parse(self.path.read_text())

    def staged_text(self) -> str:
        """The staged document as TOML text."""
        return tomlkit.dumps(self.document())

    def get(self, key: str) -> Any:
        """The staged value at a dotted key, or KeyError."""
        value = _lookup(self.document(), _split(key))
        if value is _MISSING:
            raise KeyError(key)
        return value

    def set(self, key: str, value: Any) -> None:
        """Stage ``key = value`` if the whole document stays valid; else ConfigError.

        An inline table (``{host = "x", port = 104}``) becomes a ``[section]`` of its own.
        """
        parts = _split(key)
        document = self.document()
        depth = 1
        while depth < len(parts) and _lookup(document, parts[:depth]) is not _MISSING:
            depth += 1
        for part in reversed(parts[depth:]):
            value = {part: value}
        section = _as_section(value)

        def put(table: Any, leaf: str) -> None:
            if isinstance(table, tomlkit.TOMLDocument) and isinstance(section, Table):
                _end_with_blank_line(table)
            table[leaf] = section

        self._change(".".join(parts[:depth]), put)

    def unset(self, key: str) -> None:
        """Stage the removal of ``key`` (a value or a whole table)."""

        def remove(table: Any, leaf: str) -> None:
            if leaf not in table:
                raise ConfigError(key, "is not set in the file")
            del table[leaf]

        self._change(key, remove)

    def _change(self, key: str, edit: Any) -> None:
        parts = _split(key)
        text = self.path.read_text() if self._staged is None else None
        candidate = tomlkit.parse(text if text is not None else self.staged_text())
        edit(_table_for(candidate, parts), parts[-1])
        validate(candidate, self.path)
        if text is not None:
            self._original = text
        self._staged = candidate

    def changed_keys(self) -> list[str]:
        """Dotted keys whose staged value differs from the file's."""
        if self._staged is None or self._original is None:
            return []
        before = _flatten(tomlkit.parse(self._original).unwrap())
        after = _flatten(self._staged.unwrap())
        return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))

    def diff(self) -> list[str]:
        """A unified diff from the file to the staged document."""
        if self._staged is None or self._original is None:
            return []
        lines = difflib.unified_diff(
            self._original.splitlines(),
            self.staged_text().splitlines(),
            f"{self.path.name} (file)",
            f"{self.path.name} (staged)",
            lineterm="",
        )
        return list(lines)

    def revert(self) -> bool:
        """Drop the staged edits; True if there were any."""
        had = self.dirty
        self._staged = self._original = None
        return had

    def apply(self) -> Config:
        """Write the staged document atomically and return the configuration it makes."""
        if self._staged is None or self._original is None:
            raise ConfigError("", "nothing staged")
        if self.path.read_text() != self._original:
            raise ConfigError(
                "", f"{self.path} changed on disk since editing began; 'config revert' first"
            )
        text = self.staged_text()
        new_config = validate(self._staged, self.path)
        write_atomically(self.path, text)
        self._staged = self._original = None
        return new_config


def validate(document: tomlkit.TOMLDocument, path: Path) -> Config:
    """The Config a document makes, or ConfigError naming the key at fault."""
    return config_module.parse(document.unwrap(), source=path)


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``: temp file in the same directory, fsync, rename."""
    target = path.resolve()
    mode = target.stat().st_mode & 0o7777
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
            out.flush()
            os.fchmod(out.fileno(), mode)
            os.fsync(out.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def parse_value(text: str) -> Any:
    """A TOML value (``11112``, ``true``, ``["echo"]``, ``"x"``); a bare word is a string."""
    try:
        return tomlkit.parse(f"value = {text}")["value"]
    except Exception:  # tomlkit raises several kinds; anything unparsable is a string
        return text


def _as_section(value: Any) -> Any:
    """An inline table as a standard table; anything else unchanged."""
    if not isinstance(value, Mapping):
        return value
    value = value.unwrap() if hasattr(value, "unwrap") else value  # fresh items lay out well
    nested = bool(value) and all(isinstance(item, Mapping) for item in value.values())
    section = tomlkit.table(is_super_table=nested)
    for key, item in value.items():
        section[key] = _as_section(item)
    if not nested:
        section.add(tomlkit.nl())  # a blank line before whatever table follows
    return section


def _end_with_blank_line(document: tomlkit.TOMLDocument) -> None:
    """Separate a new top-level table from what comes before it."""
    text = tomlkit.dumps(document)
    if text and not text.endswith("\n\n"):
        document.add(tomlkit.nl())


def _split(key: str) -> list[str]:
    parts = key.split(".")
    if not key or any(not part for part in parts):
        raise ConfigError(key, "a key is dotted names such as agent.ae_title")
    return parts


def _lookup(document: Any, parts: list[str]) -> Any:
    node = document
    for part in parts:
        if not isinstance(node, (Container, Table, Mapping)) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _table_for(document: tomlkit.TOMLDocument, parts: list[str]) -> Any:
    """The table holding the last part of a key."""
    node: Any = document
    for depth, part in enumerate(parts[:-1]):
        if part not in node:
            raise ConfigError(".".join(parts[: depth + 1]), "is not in the file")
        node = node[part]
        if not isinstance(node, (Container, Table, Mapping)):
            raise ConfigError(".".join(parts[: depth + 1]), "is a value, not a table")
    return node


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
