"""The ``[tls]`` table: the agent's certificate, key and CA (checked by loading them,
agent.tls.load), its TLS port, and what it asks of clients."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent import validation as v
from agent.errors import ConfigError
from agent.tls import VERSIONS, TlsSettings

_TLS_FILES = ("certificate", "private_key", "ca")


def parse_tls(raw: Any, base_dir: Path) -> TlsSettings:
    """The ``[tls]`` table; its files are checked by loading them (agent.tls.load)."""
    table = v.table({"tls": raw}, "tls", "")
    v.reject_unknown(table, set(TlsSettings.__dataclass_fields__), "tls")
    certificate, private_key, ca = [_tls_file(table, key, base_dir) for key in _TLS_FILES]
    d = TlsSettings(certificate, private_key, ca)
    timeout = v.get(table, "tls.handshake_timeout", (int, float), d.handshake_timeout,
                    v.between(0.5, 120))
    return TlsSettings(
        certificate,
        private_key,
        ca,
        port=v.get(table, "tls.port", int, d.port, v.port(allow_zero=True)),
        require_client_certificate=v.get(
            table, "tls.require_client_certificate", bool, d.require_client_certificate, None
        ),
        min_version=v.get(table, "tls.min_version", str, d.min_version, v.one_of(tuple(VERSIONS))),
        handshake_timeout=float(timeout),
    )


def _tls_file(table: Mapping[str, Any], key: str, base_dir: Path) -> Path:
    if key not in table:
        v.problem(ConfigError(f"tls.{key}", "is required"))
    path = Path(v.get(table, f"tls.{key}", str, "", v.non_empty))
    return path if path.is_absolute() else (base_dir / path).resolve()
