"""Retention: a local copy goes only once every destination has it.

Delivered instances are kept ``keep_days``; when free space is under the floor, the
oldest delivered ones go first, whatever their age. An instance with any job still
pending, retrying or quarantined, or that was never routed anywhere, is never removed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from agent.archive import Archive
from agent.archive.durable import remove_quietly
from agent.archive.index import remove_instances
from agent.forward.settings import ForwardSettings

log = logging.getLogger(__name__)

BATCH = 200
_DELIVERED = """
    SELECT i.path, i.size FROM instances i
    JOIN forward_jobs j ON j.SOPInstanceUID = i.SOPInstanceUID
    GROUP BY i.pk
    HAVING min(j.state = 'done') = 1 AND max(j.done_at) <= ?
    ORDER BY max(j.done_at) LIMIT ?
"""


def sweep(archive: Archive, settings: ForwardSettings, now: float | None = None) -> int:
    """Remove what retention allows; return how many instances went."""
    now = time.time() if now is None else now
    removed = _remove(archive, now - settings.keep_days * 86400, enough=lambda: False)
    if archive.below_floor():
        removed += _remove(archive, now, enough=lambda: not archive.below_floor())
    return removed


def _remove(archive: Archive, delivered_before: float, enough: Callable[[], bool]) -> int:
    removed = 0
    while not enough():
        with archive.index.reading() as conn:
            batch = conn.execute(_DELIVERED, (delivered_before, BATCH)).fetchall()
        if not batch:
            break
        for path, _size in batch:  # the file first: a crash leaves a row recovery drops
            remove_quietly(archive.layout.absolute(path))
        paths = {path for path, _size in batch}
        with archive.index.transaction() as conn:
            conn.executemany(
                "DELETE FROM forward_jobs WHERE SOPInstanceUID ="
                " (SELECT SOPInstanceUID FROM instances WHERE path = ?)",
                [(p,) for p in paths],
            )
            remove_instances(conn, paths)
        removed += len(batch)
        log.info("retention removed %d delivered instances", len(batch))
    return removed
