"""Retrieve a study (or some series) from a peer into the archive, by C-MOVE or C-GET."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from agent.config import Config
from agent.net.scu import resolve_target
from agent.pull import Landing, PullResult, check_pull, pull
from agent.qr import Progress, RetrieveRequest
from agent.qr.retrieve import Method

SHOWN_FAILURES = 20
# where instances land: called with True when the retrieve needs a Storage SCP (C-MOVE)
Lands = Callable[[bool], AbstractContextManager[Landing]]


@dataclass(frozen=True)
class RetrieveReport:
    """What a retrieve brought, how it ended and what it queued afterwards."""

    pulled: PullResult
    seconds: float = field(compare=False)

    @property
    def succeeded(self) -> bool:
        """Every instance arrived and the peer said so."""
        return self.pulled.retrieved.complete

    def lines(self) -> list[str]:
        """Counts, the final status, failed instances, queueing: as CLI and console show."""
        result = self.pulled
        got = result.retrieved
        lines = [
            f"{got.progress.completed} instances retrieved from {got.target} by "
            f"C-{got.method.upper()} into {result.landing} in {self.seconds:.1f} s; "
            f"{got.progress.failed} failed, {got.progress.warning} with warnings",
            f"final status: {got.outcome}",
        ]
        if got.failed_uids:
            shown = ", ".join(got.failed_uids[:SHOWN_FAILURES])
            more = len(got.failed_uids) - SHOWN_FAILURES
            lines.append(f"failed instances: {shown}" + (f" and {more} more" if more > 0 else ""))
        if result.send_to:
            when = (
                "edge-agent queue shows their progress"
                if result.landing in ("the running agent", "this agent")
                else "the agent is not running: they go once it runs"
            )
            lines.append(f"queued {result.queued} instances for {result.send_to} ({when})")
        return lines


def retrieve_from(
    config: Config,
    peer: str,
    request: RetrieveRequest,
    *,
    method: Method,
    lands: Lands,
    send_to: str | None = None,
    on_progress: Callable[[Progress], None] = lambda progress: None,
    timeout: float = 60.0,
) -> RetrieveReport:
    """Pull from a configured peer or AET@HOST:PORT into where ``lands`` says.

    The field mistakes we can see are refused before a landing is opened.
    """
    target = resolve_target(config, peer)
    check_pull(config, target, method, send_to)
    started = time.monotonic()
    with lands(method == "move") as land:
        pulled = pull(
            config,
            target,
            request,
            method=method,
            land=land,
            send_to=send_to,
            on_progress=on_progress,
            timeout=timeout,
        )
    return RetrieveReport(pulled, time.monotonic() - started)
