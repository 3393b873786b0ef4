"""The metrics endpoint as the operator asks about it: on or off, where, whether a token
is needed, when it was last scraped. ``edge-agent metrics`` and the console's ``metrics``
share it; it reads the running agent's status (its own model at the console, the file it
publishes otherwise), never the index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.archive import Layout
from agent.config import Config
from agent.procfs import process_alive
from agent.status import Snapshot
from agent.status_file import LIVE_STATES, read_published


@dataclass(frozen=True)
class MetricsReport:
    """What ``metrics`` shows, as the plain JSON data ``metrics --json`` prints."""

    info: dict[str, Any]

    @property
    def on(self) -> bool:
        """Whether the running agent serves the endpoint."""
        return self.info["endpoint"] is not None

    def to_json(self) -> dict[str, Any]:
        """The report as ``edge-agent metrics --json`` prints it."""
        return dict(self.info)

    @property
    def summary(self) -> str:
        """One line: on at where, or off and why."""
        info = self.info
        if info["endpoint"] is not None:
            return f"on at {info['endpoint']}/metrics and /healthz"
        if info["configured"] is None:
            return "off: the configuration has no [metrics] port"
        if not info["running"]:
            return f"off: the agent is not running (configured for {info['configured']})"
        return (f"off in the running agent: configured for {info['configured']}, "
                "which waits for a restart")

    def lines(self) -> list[str]:
        """The report as text, as the CLI prints it and the console shows it."""
        info = self.info
        lines = [f"metrics   {self.summary}"]
        if info["endpoint"] is not None or info["configured"] is not None:
            lines.append("          a bearer token is required (metrics.token_file)"
                         if info["token_required"] else "          no token is required")
        if info["endpoint"] is not None or info["scrapes"]:
            last = info["last_scrape"]
            lines.append(f"          last scrape {last}, {info['scrapes']} since the agent "
                         "started" if last else "          not scraped since the agent started")
        return lines


def metrics_report(config: Config, layout: Layout, live: Snapshot | None = None) -> MetricsReport:
    """The endpoint of the agent serving ``layout``: ``live`` is its own model (the
    console); otherwise the status it last published is read. Whether a token is needed
    is the configuration's (``config``: the running one at the console, the file else)."""
    published = live.to_json() if live is not None else read_published(layout.run_dir)
    running = published is not None and (live is not None or _is_live(published))
    state: dict[str, Any] = ((published or {}).get("metrics") or {}) if running else {}
    settings = config.metrics
    configured = None
    if settings is not None:
        scheme = "https" if settings.tls else "http"
        configured = f"{scheme}://{settings.bind}:{settings.port}"
    return MetricsReport({
        "running": running,
        "endpoint": state.get("endpoint"),
        "configured": configured,
        "token_required": settings is not None and settings.token_file is not None,
        "last_scrape": state.get("last_scrape"),
        "scrapes": int(state.get("scrapes") or 0),
    })


def _is_live(published: dict[str, Any]) -> bool:
    return published.get("state") in LIVE_STATES and process_alive(int(published.get("pid", 0)))
