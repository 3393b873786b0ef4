"""The ``[qr]`` table: which peers a query or retrieve falls through to, and how long
the remote part may take.

```toml
[qr]
fall_through = ["PACS"]        # peers asked for what the box does not hold, in this order
fall_through_timeout = 5       # seconds the remote part of a C-FIND may take
```

A requester is left out with ``[peers.X] fall_through = false`` (agent.config.Peer).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from agent import validation as v
from agent.errors import ConfigError
from agent.reloading import LIVE


@dataclass(frozen=True)
class QrSettings:
    """Fall-through Query/Retrieve: off while ``fall_through`` is empty."""

    fall_through: Annotated[tuple[str, ...], LIVE] = ()
    fall_through_timeout: Annotated[float, LIVE] = 5.0
    # a pull that brings nothing new for this long ends; what has not come is failed
    pull_timeout: Annotated[float, LIVE] = 60.0


def parse_qr(table: Mapping[str, Any], peers: Mapping[str, object]) -> QrSettings:
    """Validate ``[qr]`` against the configured peers (each named once)."""
    d = QrSettings()
    v.reject_unknown(table, set(QrSettings.__dataclass_fields__), "qr")
    names = v.get(table, "qr.fall_through", list, [], None)
    for name in names:
        if not isinstance(name, str) or name not in peers:
            v.problem(ConfigError("qr.fall_through", f"{name!r} is not a configured peer"))
    if len(set(map(str, names))) != len(names):
        v.problem(ConfigError("qr.fall_through", "names a peer twice"))
    return QrSettings(
        fall_through=tuple(dict.fromkeys(n for n in names if isinstance(n, str) and n in peers)),
        fall_through_timeout=float(v.get(
            table, "qr.fall_through_timeout", (int, float), d.fall_through_timeout,
            v.between(0.1, 600),
        )),
        pull_timeout=float(v.get(
            table, "qr.pull_timeout", (int, float), d.pull_timeout, v.between(1, 3600)
        )),
    )
