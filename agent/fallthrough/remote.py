"""``Remote``: the agent's ``FallThrough`` (agent.net.fallthrough_port), from the
configuration in force: which peers are asked, for which callers.

A caller falls through when it is a configured peer (never an unknown AE let in by
``allow_unknown``) whose ``fall_through`` is not false; it never falls through to
itself (a PACS asking the box is not sent back to the PACS). Its rights were judged by
the handler already: the remote part asks nothing the caller could not ask us.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection

from pydicom.dataset import Dataset

from agent.archive import Archive
from agent.config import Config, Peer
from agent.dicom.models import Model
from agent.errors import PeerError
from agent.fallthrough.find import RemoteQuery
from agent.fallthrough.listing import list_instances
from agent.fallthrough.pulling import Plan, Pull, landing
from agent.net.access import Caller
from agent.net.scu import Target
from agent.qr.retrieve import Method
from agent.status import StatusModel

log = logging.getLogger(__name__)


class Remote:
    """Falls through to ``[qr] fall_through`` for callers allowed to."""

    def __init__(
        self, current: Callable[[], Config], archive: Archive, status: StatusModel
    ) -> None:
        self.current = current
        self.archive = archive
        self.status = status
        # peers that do not know us as a move destination (one dict assignment at a time)
        self._methods: dict[str, Method] = {}

    def peers_for(self, caller: Caller | None) -> list[Peer]:
        """The peers ``caller``'s requests fall through to, in order (none: local only)."""
        config = self.current()
        if caller is None or caller.peer is None or not caller.peer.fall_through:
            return []
        names = [name for name in config.qr.fall_through if name != caller.peer.name]
        return [config.peers[name] for name in names if name in config.peers]

    def find(self, caller: Caller | None, model: Model, identifier: Dataset) -> RemoteQuery | None:
        """The remote part of a C-FIND (to start); None when the caller does not fall through."""
        peers = self.peers_for(caller)
        if not peers:
            return None
        return RemoteQuery(self.current(), [_target(p) for p in peers], model, identifier)

    def pull(
        self, caller: Caller | None, identifier: Dataset, held: Collection[str]
    ) -> Pull | None:
        """Start pulling what the peers hold under ``identifier`` and the archive does not;
        None if nothing; PeerError when no peer could say what it holds."""
        peers = self.peers_for(caller)
        if not peers:
            return None
        config = self.current()
        started = time.monotonic()
        plans, problems = [], []
        known = set(held)
        for peer in peers:
            try:
                used, instances = list_instances(config, _target(peer), identifier,
                                                 config.qr.fall_through_timeout)
            except PeerError as exc:
                log.warning("fall-through: cannot list what %s holds: %s", peer.name, exc)
                problems.append(str(exc))
                continue
            lacking = frozenset(i.sop_uid for i in instances) - known
            known |= lacking
            if lacking:
                plans.append(Plan(peer, used, tuple(instances), lacking))
        if len(problems) == len(peers):
            raise PeerError("; ".join(problems))
        log.debug("fall-through: %d peers listed in %.3f s", len(peers), time.monotonic() - started)
        if not plans:
            return None
        return Pull(config, landing(self.archive, self.status), plans, self._methods)


def _target(peer: Peer) -> Target:
    return Target(peer.ae_title, peer.host, peer.port, peer.name)
