"""What the Q/R handlers need from fall-through Query/Retrieve (``agent.fallthrough``),
which sits above the network layer: the agent passes one in, as the archive's routing.

A ``RemoteFind`` is the remote part of one C-FIND, started once the archive's answers
are out: on a small box the two would compete for the one interpreter, and the local
answers are the ones a requester is waiting for.
A ``RemotePull`` is the part of one C-MOVE or C-GET held only at the peer, already
being pulled into the archive; the handler sends each instance on as it lands.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from typing import Protocol

from pydicom.dataset import Dataset

from agent.dicom.models import Model
from agent.net.access import Caller


class RemoteFind(Protocol):
    """The answers of the fall-through peers to one C-FIND."""

    def start(self) -> None:
        """Ask the peers (on a thread of its own)."""

    def answers(self, until: float, cancelled: Callable[[], bool]) -> Iterator[Dataset]:
        """Each remote answer as it comes (only the requested keys), until the peers are
        done, ``until`` (monotonic seconds) passes, or ``cancelled()``."""

    def incomplete(self) -> str | None:
        """After ``answers``: why the remote part is incomplete, in words (None: it is not)."""

    def close(self) -> None:
        """Stop asking (a C-CANCEL, then the association ends); idempotent."""


class RemotePull(Protocol):
    """Instances held only at a fall-through peer, coming into the archive."""

    @property
    def uids(self) -> tuple[str, ...]:
        """Their SOP Instance UIDs: the sub-operations this retrieve adds."""

    @property
    def sop_classes(self) -> Collection[str]:
        """Their SOP classes (a C-MOVE proposes contexts for them before they land)."""

    def next(self, timeout: float) -> str | None:
        """The next one archived, or None when none came within ``timeout`` s."""

    def finished(self) -> str | None:
        """None while the pull runs; once it has ended, why the rest will not come
        ("" when it ended well)."""

    def close(self) -> None:
        """Stop the pull (C-CANCEL) and stop waiting; idempotent."""


class FallThrough(Protocol):
    """Asks the ``[qr] fall_through`` peers, for callers the configuration lets fall through."""

    def find(self, caller: Caller | None, model: Model, identifier: Dataset) -> RemoteFind | None:
        """The remote part of a C-FIND, to ``start``; None when it does not fall through."""

    def pull(
        self, caller: Caller | None, identifier: Dataset, held: Collection[str]
    ) -> RemotePull | None:
        """Start pulling what a retrieve names and the archive does not hold (``held``:
        the SOP Instance UIDs it does), whatever the model it was asked in (the peers
        are listed and pulled from in Study Root, or Patient Root); None when it does
        not fall through or nothing is missing. PeerError when the peers cannot say
        what they hold."""


class NoFallThrough:
    """The archive alone answers."""

    def find(self, caller: Caller | None, model: Model, identifier: Dataset) -> RemoteFind | None:
        """Never."""
        return None

    def pull(
        self, caller: Caller | None, identifier: Dataset, held: Collection[str]
    ) -> RemotePull | None:
        """Never."""
        return None
