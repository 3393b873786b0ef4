"""Storage commitment reports a destination sends us on an association it opens
(EVT_N_EVENT_REPORT on our listener): only peers with ``commit = true`` may."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from agent.archive.pacs_commits import PacsCommits
from agent.dicom.contexts import STORAGE_COMMITMENT
from agent.dicom.status import NOT_AUTHORIZED, SOP_CLASS_NOT_SUPPORTED
from agent.net.access import Caller
from agent.net.commit_scu import settle_event

log = logging.getLogger(__name__)


class CommitReports:
    """Takes N-EVENT-REPORTs of Storage Commitment and settles them in the archive."""

    def __init__(self, commits: PacsCommits, caller_of: Callable[[Any], Caller | None]) -> None:
        self.commits = commits
        self.caller_of = caller_of

    def on_event_report(self, event: Any) -> tuple[int, None]:
        """EVT_N_EVENT_REPORT: settle the transaction it reports, for commit-enabled peers."""
        caller = self.caller_of(event.assoc)
        if caller is None or caller.peer is None or not caller.peer.commit:
            log.warning("refused a storage commitment report from %s: not a commit = true peer",
                        caller)
            return NOT_AUTHORIZED, None
        if str(event.request.AffectedSOPClassUID) != STORAGE_COMMITMENT:
            return SOP_CLASS_NOT_SUPPORTED, None
        code, _ = settle_event(self.commits, event, caller.peer.name)
        return code, None
