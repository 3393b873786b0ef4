"""The ``[metrics]`` table: where the metrics endpoint listens, and who may read it.

```toml
[metrics]
port = 9110              # the endpoint is on when [metrics] has a port; off without the table
bind = "127.0.0.1"       # another address exposes it to the network: a warning at start
token_file = "/etc/edge-agent/metrics.token"  # then "Authorization: Bearer <its content>"
tls = false              # true: HTTPS over the [tls] table's certificate and key
```

The token file's content is never kept in the configuration (which is compared, listed
and logged by key on a reload), only its path: the endpoint reads it (``read_token``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from agent import validation as v
from agent.errors import ConfigError
from agent.reloading import LIVE, RESTART

TOKEN_KEY = "metrics.token_file"


@dataclass(frozen=True)
class MetricsSettings:
    """The metrics endpoint's address, its optional bearer token file and HTTPS."""

    port: Annotated[int, RESTART]  # 0: any free port (tests)
    bind: Annotated[str, RESTART] = "127.0.0.1"
    # its content is the token; read again when it changes (a reload may name another)
    token_file: Annotated[Path | None, LIVE] = None
    tls: Annotated[bool, RESTART] = False  # serve HTTPS with the [tls] certificate and key

    @property
    def loopback(self) -> bool:
        """Whether only this machine can reach the endpoint."""
        if self.bind == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.bind).is_loopback
        except ValueError:
            return False  # a host name: it may well resolve to an outside address


def parse_metrics(table: Mapping[str, Any], base_dir: Path) -> MetricsSettings | None:
    """Validate ``[metrics]``; None (the endpoint off) without a port. A token file is
    read here, so that ``check-config`` and a reload refuse one that cannot be used."""
    v.reject_unknown(table, set(MetricsSettings.__dataclass_fields__), "metrics")
    d = MetricsSettings(port=0)
    bind = v.get(table, "metrics.bind", str, d.bind, v.host)
    use_tls = v.get(table, "metrics.tls", bool, d.tls, None)
    token_file = None
    if "token_file" in table:
        name = v.get(table, TOKEN_KEY, str, "", v.non_empty)
        token_file = Path(name) if Path(name).is_absolute() else (base_dir / name).resolve()
        try:
            read_token(token_file)
        except ConfigError as exc:
            v.problem(exc)
    if "port" not in table:
        return None
    port = v.get(table, "metrics.port", int, d.port, v.port(allow_zero=True))
    return MetricsSettings(port=port, bind=bind, token_file=token_file, tls=use_tls)


def read_token(path: Path) -> str:
    """The token in ``path`` (surrounding white space removed); ConfigError naming
    ``metrics.token_file`` (never the content) if it cannot be read or is empty."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(TOKEN_KEY, f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise ConfigError(TOKEN_KEY, f"cannot read {path}: {why or exc}") from None
    if not token:
        raise ConfigError(TOKEN_KEY, f"{path} is empty: it must hold the bearer token")
    return token
