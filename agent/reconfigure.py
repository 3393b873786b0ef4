"""What a changed configuration may change in a running agent, and what waits for a restart.

Peers, who may do what, forwarding and retention, the disk floor and the log level
take effect at once (SIGHUP or the console's ``config apply``). What the listener,
the data directory or the hardware were built from is kept as it runs until the
agent restarts: the running configuration stays coherent, and the operator is told.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from typing import Any

from agent import reloading, tls
from agent.config import Config
from agent.errors import ConfigError


class LiveConfig:
    """The configuration in force, shared by every long-lived part of one process.

    Each part is given ``current`` (this object's bound method) when it is built and
    calls it whenever it acts, so a reload, which ``replace``s the configuration once
    here, reaches every part at once and none keeps a stale copy.
    """

    def __init__(self, config: Config) -> None:
        self._config = config
        self._lock = threading.Lock()

    def current(self) -> Config:
        """The configuration in force now."""
        return self._config

    def replace(self, config: Config) -> Config:
        """Put ``config`` in force; return the one it replaces."""
        with self._lock:
            previous, self._config = self._config, config
        return previous


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf of a configuration under its dotted key (``peers.PACS.port``)."""
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        children: Mapping[str, Any] = {
            f.name: getattr(node, f.name) for f in dataclasses.fields(node) if f.name != "source"
        }
    elif isinstance(node, Mapping):
        children = node
    else:
        return {prefix: node}
    flat: dict[str, Any] = {}
    for name, value in children.items():
        flat.update(flatten(value, f"{prefix}.{name}" if prefix else str(name)))
    return flat


def changed_keys(old: Config, new: Config) -> list[str]:
    """Dotted keys whose value differs (added and removed ones included), sorted."""
    before, after = flatten(old), flatten(new)
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def split(running: Config, new: Config) -> tuple[Config, list[str]]:
    """The configuration to run with now, and the changed keys that wait for a restart.

    The first is ``new`` with every setting marked ``RESTART`` kept as it runs
    (``agent.reloading``); a [tls] table added or removed also waits, since a TLS
    listener is started or stopped only with the agent, and so does a [metrics] table.
    """
    later = reloading.restart_keys(running, new)
    effective: Config = reloading.keep_restart_only(running, new)
    if (running.tls is None) != (new.tls is None):
        effective = dataclasses.replace(effective, tls=running.tls)
        later.append("tls")
    if (running.metrics is None) != (new.metrics is None):  # the endpoint starts with us
        effective = dataclasses.replace(effective, metrics=running.metrics)
        later.append("metrics")
    return effective, sorted(set(later))


def reload_tls(
    running: Config, effective: Config
) -> tuple[Config, tls.Contexts | None, str | None]:
    """Read the TLS files of ``effective`` again (renewed certificates take effect).

    Returns the configuration to run with, the new contexts (None: nothing to reload) and
    why the files were refused (None: they were not): a refused [tls] is kept as it runs.
    """
    if running.tls is None or effective.tls is None:
        return effective, None, None
    try:
        return effective, tls.load(effective.tls), None
    except ConfigError as exc:
        return dataclasses.replace(effective, tls=running.tls), None, str(exc)


def outcome(changed: list[str], later: list[str], refused: str | None) -> str:
    """The one line a reload logs: what took effect, what waits, what was refused."""
    names = ", ".join(sorted({".".join(k.split(".")[:2]) for k in changed}))
    line = f"configuration reloaded: {names}" if names else "configuration unchanged"
    if refused:
        line += f"; the TLS files were refused, still serving the previous certificate: {refused}"
    return line + (f"; wait for a restart: {', '.join(later)}" if later else "")
