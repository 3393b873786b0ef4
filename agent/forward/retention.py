"""Retention: a local copy goes only once every destination has it.

Delivered instances are kept ``keep_days``; when free space is under the floor, the
earliest arrived of the delivered ones go first, whatever their age. An instance with any
job still pending, retrying, quarantined or held for its study (``forward.when =
"complete"``), or that was never routed anywhere, is never removed.

Only the age rule reads the clock. While the system clock is not trusted (the archive's
``clock_trusted``: unsynchronised, or implausible), nothing goes by age: a clock a year
ahead would make every delivered copy look a year old. The floor rule goes on freeing
space meanwhile, in the index's arrival order, which no clock can disturb.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection

from agent.archive import Archive
from agent.forward.settings import ForwardSettings

log = logging.getLogger(__name__)

BATCH = 200
BUDGET = 5.0  # seconds one sweep may take: it runs in the loop that feeds the watchdog


def sweep(
    archive: Archive,
    settings: ForwardSettings,
    now: float | None = None,
    budget: float = BUDGET,
    commit_enabled: Collection[str] = (),
) -> int:
    """Remove what retention allows, for at most about ``budget`` seconds (at least one
    batch); return how many instances went. A full batch may mean more is left.
    ``commit_enabled``: the peers with ``commit = true``."""
    now = time.time() if now is None else now
    deadline = time.monotonic() + budget
    committed_by = committers(settings, commit_enabled)
    removed = 0
    if archive.clock_trusted():
        archive.outbox.clamp_future(now)  # delivered "in the future": a jump nobody re-based
        removed = _remove(
            archive, now - settings.keep_days * 86400, deadline, lambda: False, committed_by
        )
    else:
        log.debug("the clock is not trusted: nothing is removed by age")
    if archive.below_floor() and (removed == 0 or time.monotonic() < deadline):
        removed += _remove(
            archive, None, deadline, lambda: not archive.below_floor(), committed_by
        )
    return removed


def committers(settings: ForwardSettings, commit_enabled: Collection[str]) -> tuple[str, ...]:
    """The destinations whose commitment retention waits for (none unless
    ``retain_until = "committed"``)."""
    if settings.retain_until != "committed":
        return ()
    return tuple(sorted(set(commit_enabled) & settings.destinations))


def _remove(
    archive: Archive,
    delivered_before: float | None,  # None: whenever (the floor rule, by arrival)
    deadline: float,
    enough: Callable[[], bool],
    committed_by: tuple[str, ...],
) -> int:
    removed = 0
    while not enough() and (removed == 0 or time.monotonic() < deadline):
        batch = archive.outbox.delivered(delivered_before, BATCH, committed_by)
        if not batch:
            break
        archive.remove(batch)
        removed += len(batch)
        log.info("retention removed %d delivered instances", len(batch))
    return removed
