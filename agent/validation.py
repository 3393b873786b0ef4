"""Validators for the TOML configuration: each raises ConfigError naming the dotted key."""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any, TypeVar, cast

from agent.errors import ConfigError

SERVICES = frozenset({"echo", "store", "find", "move", "get", "commit", "mpps"})
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")

T = TypeVar("T")
# the errors found so far while a configuration is validated (None: raise the first)
_found: ContextVar[list[ConfigError] | None] = ContextVar("found", default=None)


@contextlib.contextmanager
def collecting() -> Iterator[list[ConfigError]]:
    """Within the block, ``problem`` collects errors instead of raising: a configuration
    is checked whole, and every error in it reported at once."""
    errors: list[ConfigError] = []
    token = _found.set(errors)
    try:
        yield errors
    finally:
        _found.reset(token)


def problem(error: ConfigError) -> None:
    """An error in the configuration: collected inside ``collecting()``, else raised."""
    errors = _found.get()
    if errors is None:
        raise error
    errors.append(error)


def get(
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
    try:
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            names = " or ".join(type_name(k) for k in kinds)
            raise ConfigError(key, f"must be {names}, not {type_name(type(value))}")
        if check is not None:
            check(key, value)
    except ConfigError as exc:
        problem(exc)  # collected: go on with the default, to find the other errors
        return default
    return cast(T, value)


def type_name(kind: type) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list",
        dict: "a table",
    }.get(kind, kind.__name__)


def table(raw: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        problem(ConfigError(f"{where}.{key}".lstrip("."), "must be a table"))
        return {}
    return value


def reject_unknown(table: Mapping[str, Any], known: set[str], where: str) -> None:
    for key in table:
        if key not in known:
            hint = ", ".join(sorted(known))
            problem(ConfigError(f"{where}.{key}".lstrip("."), f"unknown key (known: {hint})"))


def services(table: Mapping[str, Any], key: str, default: frozenset[str]) -> frozenset[str]:
    values = get(table, key, list, list(default), None)
    for value in values:
        if value not in SERVICES:
            problem(ConfigError(key, f"{value!r} is not one of {', '.join(sorted(SERVICES))}"))
    return frozenset(value for value in values if value in SERVICES)


def ae_title(key: str, value: str) -> None:
    if not value.strip():
        raise ConfigError(key, "an AE title cannot be empty")
    if len(value) > 16:
        raise ConfigError(key, f"an AE title is at most 16 characters ({value!r} has {len(value)})")
    if not value.isascii() or "\\" in value or any(ord(c) < 32 for c in value):
        raise ConfigError(key, "an AE title is printable ASCII without backslash")
    if value != value.strip():
        raise ConfigError(key, "an AE title has no leading or trailing spaces")


def host(key: str, value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOSTNAME.match(value):
            raise ConfigError(key, f"{value!r} is neither an IP address nor a host name") from None


def port(*, allow_zero: bool) -> Callable[[str, int], None]:
    low = 0 if allow_zero else 1

    def check(key: str, value: int) -> None:
        if not low <= value <= 65535:
            raise ConfigError(key, f"a port is {low}-65535, not {value}")

    return check


def at_least(low: int) -> Callable[[str, int], None]:
    def check(key: str, value: int) -> None:
        if value < low:
            raise ConfigError(key, f"must be at least {low}")

    return check


def positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(key, "must be greater than 0")


def not_negative(key: str, value: float) -> None:
    if value < 0:
        raise ConfigError(key, "must be 0 or more")


def between(low: float, high: float) -> Callable[[str, float], None]:
    def check(key: str, value: float) -> None:
        if not low <= value <= high:
            raise ConfigError(key, f"must be between {low:g} and {high:g}, not {value:g}")

    return check


def max_pdu(key: str, value: int) -> None:
    if not 4096 <= value <= 16 * 1048576:
        raise ConfigError(key, "must be between 4096 and 16777216 bytes")


def non_empty(key: str, value: str) -> None:
    if not value.strip():
        raise ConfigError(key, "cannot be empty")


def one_of(choices: tuple[str, ...]) -> Callable[[str, str], None]:
    def check(key: str, value: str) -> None:
        if value not in choices:
            raise ConfigError(key, f"must be one of {', '.join(choices)}")

    return check
