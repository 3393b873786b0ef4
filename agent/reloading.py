"""Which settings a reload may change, marked on the settings fields themselves.

Every field of a settings dataclass says, in its annotation, whether a running agent can
take a new value (``Annotated[int, LIVE]``) or keeps the one it started with until it
restarts (``Annotated[int, RESTART]``): the listener's port, the data directory, the
hardware. A field marked ``LIVE`` whose value is itself settings (a dataclass, or a
mapping of them such as the peers) is looked into, field by field. A field nobody
marked is an error (``marks`` raises, and a test walks every settings class), so a new
key can never become live by omission.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from collections.abc import Mapping
from typing import Any


class Reload(enum.Enum):
    """What a reload does with a setting."""

    LIVE = "live"  # the running parts read the new value from then on
    RESTART = "restart"  # kept as it runs; the new value waits for a restart


LIVE = Reload.LIVE
RESTART = Reload.RESTART


def marks(settings: type[Any]) -> dict[str, Reload]:
    """Each field of a settings dataclass and its mark; TypeError naming an unmarked one."""
    hints = typing.get_type_hints(settings, include_extras=True)
    found: dict[str, Reload] = {}
    for item in dataclasses.fields(settings):
        mark = _mark_of(hints[item.name])
        if mark is None:
            raise TypeError(f"{settings.__name__}.{item.name} is marked neither LIVE nor RESTART")
        found[item.name] = mark
    return found


def _mark_of(hint: Any) -> Reload | None:
    if typing.get_origin(hint) is typing.Annotated:
        return next((m for m in hint.__metadata__ if isinstance(m, Reload)), None)
    return None


def settings_classes(settings: type) -> list[type]:
    """The settings class and every one reachable from it through ``LIVE`` fields
    (directly, optionally, or as the values of a mapping), for checks and tests."""
    found: list[type] = []
    pending = [settings]
    while pending:
        cls = pending.pop()
        if cls in found:
            continue
        found.append(cls)
        hints = typing.get_type_hints(cls, include_extras=True)
        for name, mark in marks(cls).items():
            if mark is LIVE:
                pending += [t for t in _inner_types(hints[name]) if _is_settings(t)]
    return found


def _is_settings(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _inner_types(hint: Any) -> list[Any]:
    """The types a hint names: ``Mapping[str, X]``, ``tuple[X, ...]``."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Annotated:
        return _inner_types(args[0])
    if not args:
        return [hint]
    return [t for arg in args if arg is not Ellipsis for t in _inner_types(arg)]


def keep_restart_only(running: Any, new: Any) -> Any:
    """``new``, with every ``RESTART`` setting kept as it is in ``running`` (recursively
    through ``LIVE`` settings; a peer only ``new`` has is taken as it is)."""
    if dataclasses.is_dataclass(new) and not isinstance(new, type):
        if type(running) is not type(new):
            return new
        changes = {
            name: getattr(running, name) if mark is RESTART
            else keep_restart_only(getattr(running, name), getattr(new, name))
            for name, mark in marks(type(new)).items()
        }
        return dataclasses.replace(new, **changes)
    if isinstance(new, Mapping) and isinstance(running, Mapping):
        return {key: keep_restart_only(running.get(key), value) for key, value in new.items()}
    return new


def restart_keys(running: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted keys of ``RESTART`` settings whose value differs, sorted."""
    if not (_is_settings(type(new)) and type(running) is type(new)):
        if isinstance(new, Mapping) and isinstance(running, Mapping):
            return sorted(
                key
                for name in new.keys() & running.keys()
                for key in restart_keys(running[name], new[name], f"{prefix}{name}.")
            )
        return []
    keys: list[str] = []
    for name, mark in marks(type(new)).items():
        before, after = getattr(running, name), getattr(new, name)
        if mark is RESTART:
            keys += _differing(before, after, f"{prefix}{name}")
        else:
            keys += restart_keys(before, after, f"{prefix}{name}.")
    return sorted(keys)


def _differing(before: Any, after: Any, key: str) -> list[str]:
    """The leaves under ``key`` that differ (a whole table marked RESTART, field by field)."""
    if before == after:
        return []
    if dataclasses.is_dataclass(after) and type(before) is type(after):
        return [
            leaf
            for item in dataclasses.fields(after)
            for leaf in _differing(getattr(before, item.name), getattr(after, item.name),
                                   f"{key}.{item.name}")
        ]
    return [key]
