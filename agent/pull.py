"""Pulling studies from a peer into the archive (``edge-agent retrieve`` and the console).

Retrieved instances land in the archive exactly as received ones do: durable, indexed,
routed by the forwarding rules (never back to the peer they came from). The caller says
where they land (a ``Landing``); a C-MOVE also needs a Storage SCP listening on it.
``send_to`` then queues the study for another peer.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import UID

from agent.archive import Archive
from agent.config import Config
from agent.errors import ConfigError
from agent.forward.rules import ConfiguredRouting
from agent.net.access import Caller
from agent.net.engine.guards import discard_unarchived
from agent.net.scu import Target
from agent.net.storage import StorageHandlers
from agent.qr.find import find
from agent.qr.identifiers import FindRequest, Key, RetrieveRequest
from agent.qr.retrieve import DEFAULT_STORAGE_CLASSES, Method, Progress, RetrieveResult, retrieve
from agent.status import StatusModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Landing:
    """Where retrieved instances land, and who to wake when forwards are queued."""

    archive: Archive
    status: StatusModel
    wake: Callable[[Sequence[str]], None]
    where: str


@dataclass(frozen=True)
class PullResult:
    """A retrieve, plus how many instances were queued for ``send_to``."""

    retrieved: RetrieveResult
    queued: int
    send_to: str | None
    landing: str


def pull(
    config: Config,
    target: Target,
    request: RetrieveRequest,
    *,
    method: Method,
    land: Landing,
    send_to: str | None = None,
    on_progress: Callable[[Progress], None] = lambda progress: None,
    timeout: float = 60.0,
) -> PullResult:
    """Retrieve into ``land`` (by C-MOVE or C-GET), then queue for ``send_to``."""
    check_pull(config, target, method, send_to)
    if method == "get":
        result = retrieve(
            config,
            target,
            request,
            method="get",
            on_store=keeper(land, target),
            storage_classes=storage_classes(config, target, request, timeout),
            on_progress=on_progress,
            timeout=timeout,
        )
    else:
        result = retrieve(
            config, target, request, method="move", on_progress=on_progress, timeout=timeout
        )
    queued = queue_copies(land, request, send_to) if send_to else 0
    return PullResult(result, queued, send_to, land.where)


def check_pull(config: Config, target: Target, method: Method, send_to: str | None) -> None:
    """The field mistakes we can see before asking the peer anything."""
    if send_to is not None and send_to not in config.peers:
        known = ", ".join(sorted(config.peers)) or "none configured"
        raise ConfigError("", f"--send-to {send_to}: not a configured peer ({known})")
    if method != "move":
        return
    peer = config.peer_by_ae(target.ae_title)
    if peer is None or not peer.allow & {"store"}:
        where = f"peers.{peer.name}.allow" if peer else f"a [peers.X] entry for {target.ae_title}"
        raise ConfigError(
            "",
            f"a C-MOVE makes {target.ae_title} send us the images, and this agent refuses "
            f"them without 'store' in {where}; add it, or use --get",
        )


@contextlib.contextmanager
def open_archive(config: Config) -> Iterator[Archive]:
    """The archive, opened beside whoever else uses it (SQLite serialises the writers).

    Its routing queues what lands for the configured destinations, as the agent's would
    (the running agent's forwarder finds the jobs on its next look at the queue).
    """
    floor = config.agent.min_free_mb * 1048576
    routing = ConfiguredRouting(lambda: config)
    with Archive(config.agent.data_dir, floor=lambda: floor, routing=routing) as archive:
        yield archive


def keeper(land: Landing, target: Target) -> Callable[[object], int | Dataset]:
    """The C-STORE handler for a C-GET: the peer we asked may store what we asked for."""
    caller = Caller(target.ae_title, target.host, None, frozenset({"store"}))
    handlers = StorageHandlers(land.archive, land.status, lambda assoc: caller)

    def keep(event: object) -> int | Dataset:
        status = handlers.on_store(event)
        if status != 0:  # a Dataset (a failure with its comment) is never 0
            discard_unarchived(getattr(event, "assoc", None))
        return status

    return keep


def storage_classes(
    config: Config, target: Target, request: RetrieveRequest, timeout: float
) -> Sequence[str]:
    """The SOP classes to offer for a C-GET: the study's own if the peer says, else common ones."""
    study = next((k for k in request.keys if k.keyword == "StudyInstanceUID" and k.value), None)
    if study is None:
        return DEFAULT_STORAGE_CLASSES
    keys = (study, Key(Tag("SOPClassesInStudy"), ""))
    try:
        found = find(config, target, FindRequest(keys=keys, only=True), timeout=timeout)
    except Exception as exc:  # only an optimisation: fall back to the common classes
        log.debug("could not ask for the study's SOP classes: %s", exc)
        return DEFAULT_STORAGE_CLASSES
    classes = [str(UID(c)) for m in found.matches for c in _values(m.get("SOPClassesInStudy"))]
    return tuple(dict.fromkeys(classes)) or DEFAULT_STORAGE_CLASSES


def queue_copies(land: Landing, request: RetrieveRequest, send_to: str | None) -> int:
    """Queue every archived instance the request names for ``send_to``; return how many."""
    if send_to is None:
        return 0
    found = land.archive.resolve(request.model, request.identifier())
    land.archive.outbox.send_again([i.sop_instance_uid for i in found], send_to, time.time())
    land.wake([send_to])
    return len(found)


def _values(value: object) -> list[str]:
    """An attribute's values as strings (one value, several, or none)."""
    if value is None or value == "":
        return []
    if isinstance(value, Iterable) and not isinstance(value, str):
        return [str(v) for v in value]
    return [str(value)]
