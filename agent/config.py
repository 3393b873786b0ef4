"""TOML configuration: loaded once, validated at the boundary, frozen afterwards.

Every error names the dotted key at fault (``peers.CT1.port``) so an installer can
fix the file without reading code.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from agent.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib

SYSTEM_CONFIG = Path("/etc/edge-agent/agent.toml")
CONFIG_ENV = "EDGE_AGENT_CONFIG"
SERVICES = frozenset({"echo", "store", "find", "move", "get"})
DEFAULT_ALLOW_UNKNOWN = ("echo", "store")

_PEER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
_LOG_LEVELS = ("debug", "info", "warning", "error")

T = TypeVar("T")


@dataclass(frozen=True)
class AgentSettings:
    """The ``[agent]`` table: who we are and where we keep data."""

    ae_title: str = "EDGE"
    port: int = 11112
    bind: str = "0.0.0.0"
    data_dir: Path = Path("edge-data")
    min_free_mb: int = 1024
    max_pdu: int = 1048576
    network_timeout: float = 60.0
    max_associations: int = 16
    allow_unknown: frozenset[str] = frozenset()
    log_level: str = "info"


@dataclass(frozen=True)
class Peer:
    """A remote AE we know, by a short name, and what it may ask of us."""

    name: str
    ae_title: str
    host: str
    port: int
    allow: frozenset[str] = frozenset({"echo"})
    verify_host: bool = True


@dataclass(frozen=True)
class Config:
    """The whole validated configuration; ``source`` is None for the built-in default."""

    agent: AgentSettings
    peers: Mapping[str, Peer] = field(default_factory=dict)
    source: Path | None = None

    def peer_by_ae(self, ae_title: str) -> Peer | None:
        """Return the peer whose AE title is ``ae_title``, if any."""
        for peer in self.peers.values():
            if peer.ae_title == ae_title:
                return peer
        return None


def builtin_default() -> Config:
    """The configuration used when no file is found: open to echo and store from anyone."""
    settings = AgentSettings(
        data_dir=Path("edge-data").resolve(),
        allow_unknown=frozenset(DEFAULT_ALLOW_UNKNOWN),
    )
    return Config(agent=settings, peers={}, source=None)


def locate(explicit: str | os.PathLike[str] | None) -> Path | None:
    """Find the config file: ``--config``, then ``$EDGE_AGENT_CONFIG``, then /etc; else None."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get(CONFIG_ENV)
    if from_env:
        return Path(from_env)
    if SYSTEM_CONFIG.is_file():
        return SYSTEM_CONFIG
    return None


def load(explicit: str | os.PathLike[str] | None = None) -> Config:
    """Locate and load the configuration, or return the built-in default."""
    path = locate(explicit)
    return builtin_default() if path is None else load_file(path)


def load_file(path: Path) -> Config:
    """Read and validate one TOML file."""
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError("", f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{path} is not valid TOML: {exc}") from None
    return parse(raw, source=path)


def parse(raw: Mapping[str, Any], source: Path | None = None) -> Config:
    """Validate a decoded TOML document and build the frozen configuration."""
    _reject_unknown(raw, {"agent", "peers"}, "")
    base_dir = source.resolve().parent if source else Path.cwd()
    agent = _parse_agent(_table(raw, "agent", ""), base_dir)
    peers_raw = _table(raw, "peers", "")
    peers = {name: _parse_peer(name, _table(peers_raw, name, "peers")) for name in peers_raw}
    _check_unique_ae_titles(agent, peers)
    return Config(agent=agent, peers=peers, source=source)


def _parse_agent(table: Mapping[str, Any], base_dir: Path) -> AgentSettings:
    d = AgentSettings()
    _reject_unknown(table, set(AgentSettings.__dataclass_fields__), "agent")
    data_dir = Path(_get(table, "agent.data_dir", str, str(d.data_dir), _non_empty))
    return AgentSettings(
        ae_title=_get(table, "agent.ae_title", str, d.ae_title, _ae_title),
        port=_get(table, "agent.port", int, d.port, _port(allow_zero=True)),
        bind=_get(table, "agent.bind", str, d.bind, _host),
        data_dir=data_dir if data_dir.is_absolute() else (base_dir / data_dir).resolve(),
        min_free_mb=_get(table, "agent.min_free_mb", int, d.min_free_mb, _at_least(0)),
        max_pdu=_get(table, "agent.max_pdu", int, d.max_pdu, _max_pdu),
        network_timeout=float(
            _get(table, "agent.network_timeout", (int, float), d.network_timeout, _positive)
        ),
        max_associations=_get(
            table, "agent.max_associations", int, d.max_associations, _at_least(1)
        ),
        allow_unknown=_services(table, "agent.allow_unknown", frozenset()),
        log_level=_get(table, "agent.log_level", str, d.log_level, _one_of(_LOG_LEVELS)),
    )


def _parse_peer(name: str, table: Mapping[str, Any]) -> Peer:
    where = f"peers.{name}"
    if not _PEER_NAME.match(name):
        raise ConfigError(where, "a peer name is 1-32 letters, digits, '-' or '_'")
    _reject_unknown(table, set(Peer.__dataclass_fields__) - {"name"}, where)
    for required in ("ae_title", "host", "port"):
        if required not in table:
            raise ConfigError(f"{where}.{required}", "is required")
    return Peer(
        name=name,
        ae_title=_get(table, f"{where}.ae_title", str, "", _ae_title),
        host=_get(table, f"{where}.host", str, "", _host),
        port=_get(table, f"{where}.port", int, 0, _port(allow_zero=False)),
        allow=_services(table, f"{where}.allow", frozenset({"echo"})),
        verify_host=_get(table, f"{where}.verify_host", bool, True, None),
    )


def _check_unique_ae_titles(agent: AgentSettings, peers: Mapping[str, Peer]) -> None:
    seen: dict[str, str] = {agent.ae_title: "agent"}
    for peer in peers.values():
        other = seen.get(peer.ae_title)
        if other is not None:
            raise ConfigError(
                f"peers.{peer.name}.ae_title",
                f"AE title {peer.ae_title!r} is already used by {other}",
            )
        seen[peer.ae_title] = f"peers.{peer.name}"


# -- small validators: each raises ConfigError naming the key ---------------------------


def _get(
    table: Mapping[str, Any],
    key: str,
    kind: type[T] | tuple[type, ...],
    default: T,
    check: Callable[[str, Any], None] | None,
) -> T:
    leaf = key.rsplit(".", 1)[-1]
    if leaf not in table:
        return default
    value = table[leaf]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = " or ".join(_type_name(k) for k in kinds)
        raise ConfigError(key, f"must be {names}, not {_type_name(type(value))}")
    if check is not None:
        check(key, value)
    return cast(T, value)


def _type_name(kind: type) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list",
        dict: "a table",
    }.get(kind, kind.__name__)


def _table(raw: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}.{key}".lstrip("."), "must be a table")
    return value


def _reject_unknown(table: Mapping[str, Any], known: set[str], where: str) -> None:
    for key in table:
        if key not in known:
            hint = ", ".join(sorted(known))
            raise ConfigError(f"{where}.{key}".lstrip("."), f"unknown key (known: {hint})")


def _services(table: Mapping[str, Any], key: str, default: frozenset[str]) -> frozenset[str]:
    values = _get(table, key, list, list(default), None)
    for value in values:
        if value not in SERVICES:
            raise ConfigError(key, f"{value!r} is not one of {', '.join(sorted(SERVICES))}")
    return frozenset(values)


def _ae_title(key: str, value: str) -> None:
    if not value.strip():
        raise ConfigError(key, "an AE title cannot be empty")
    if len(value) > 16:
        raise ConfigError(key, f"an AE title is at most 16 characters ({value!r} has {len(value)})")
    if not value.isascii() or "\\" in value or any(ord(c) < 32 for c in value):
        raise ConfigError(key, "an AE title is printable ASCII without backslash")
    if value != value.strip():
        raise ConfigError(key, "an AE title has no leading or trailing spaces")


def _host(key: str, value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOSTNAME.match(value):
            raise ConfigError(key, f"{value!r} is neither an IP address nor a host name") from None


def _port(*, allow_zero: bool) -> Callable[[str, int], None]:
    low = 0 if allow_zero else 1

    def check(key: str, value: int) -> None:
        if not low <= value <= 65535:
            raise ConfigError(key, f"a port is {low}-65535, not {value}")

    return check


def _at_least(low: int) -> Callable[[str, int], None]:
    def check(key: str, value: int) -> None:
        if value < low:
            raise ConfigError(key, f"must be at least {low}")

    return check


def _positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(key, "must be greater than 0")


def _max_pdu(key: str, value: int) -> None:
    if not 4096 <= value <= 16 * 1048576:
        raise ConfigError(key, "must be between 4096 and 16777216 bytes")


def _non_empty(key: str, value: str) -> None:
    if not value.strip():
        raise ConfigError(key, "cannot be empty")


def _one_of(choices: tuple[str, ...]) -> Callable[[str, str], None]:
    def check(key: str, value: str) -> None:
        if value not in choices:
            raise ConfigError(key, f"must be one of {', '.join(choices)}")

    return check
