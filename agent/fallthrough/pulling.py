"""Pulling what a retrieve names and the archive lacks from the fall-through peers, on a
thread of its own, while the requester is sent what the box holds.

Each study the box holds none of is pulled whole (one C-MOVE at the study level), each
series likewise, and only the missing instances of a series it holds in part. By C-MOVE
to our own AE title when the peer may store to us; by C-GET when it may not, or once it
refuses the C-MOVE before any sub-operation (0xA801, or Orthanc's 0xC000 for a
destination it does not know). What lands is archived like any received instance
(durable, indexed, routed, never back to the peer it came from); the archive's
``arrivals`` hand each over to the requester's handler.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Iterable, Iterator, MutableMapping
from dataclasses import dataclass

from pydicom.tag import Tag

from agent.archive import Archive
from agent.config import Config, Peer
from agent.dicom.contexts import COMMON_STORAGE_CLASSES
from agent.dicom.models import Model
from agent.errors import PeerError
from agent.fallthrough.listing import RemoteInstance
from agent.net.scu import Target
from agent.pull import Landing, keeper
from agent.qr.identifiers import Key, RetrieveRequest
from agent.qr.retrieve import Method, RetrieveResult, retrieve
from agent.status import StatusModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """What to pull from one peer: everything it holds under the identifier (to pull
    whole studies and series where possible) and which of those the box lacks."""

    peer: Peer
    model: Model
    instances: tuple[RemoteInstance, ...]
    lacking: frozenset[str]

    @property
    def target(self) -> Target:
        """Where to connect."""
        return Target(self.peer.ae_title, self.peer.host, self.peer.port, self.peer.name)


class Pull:
    """The pull of one retrieve: started when made, ended by itself or by ``close``."""

    def __init__(
        self,
        config: Config,
        land: Landing,
        plans: list[Plan],
        methods: MutableMapping[str, Method],
    ) -> None:
        self.config = config
        self.land = land
        self.plans = plans
        self.methods = methods  # per peer: how it sends to us (C-GET once a C-MOVE was refused)
        lacking = [i for plan in plans for i in plan.instances if i.sop_uid in plan.lacking]
        self._uids = tuple(dict.fromkeys(i.sop_uid for i in lacking))
        self._sop_classes = sop_classes(lacking)
        self._expected = land.archive.arrivals.expect(self._uids)  # before anything is asked
        self._finished: str | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fall-through pull", daemon=True)
        self._thread.start()

    @property
    def uids(self) -> tuple[str, ...]:
        """The SOP Instance UIDs being pulled."""
        return self._uids

    @property
    def sop_classes(self) -> Collection[str]:
        """Their SOP classes."""
        return self._sop_classes

    def next(self, timeout: float) -> str | None:
        """The next one archived, or None within ``timeout``."""
        return self._expected.next(timeout)

    def finished(self) -> str | None:
        """None while pulling; then "" or why some did not come."""
        return self._finished

    def close(self) -> None:
        """Stop pulling (a C-CANCEL at the next pending response) and waiting."""
        self._stopped.set()
        self._expected.close()

    def _run(self) -> None:
        problems: list[str] = []
        started = time.monotonic()
        try:
            for plan in self.plans:
                for request in requests(plan):
                    if self._stopped.is_set():
                        return
                    why = self._pull(plan, request)
                    if why:
                        problems.append(why)
        except Exception as exc:  # the handler waits for ``finished``: always say it
            log.exception("fall-through pull failed")
            problems.append(str(exc))
        finally:
            self._finished = "; ".join(dict.fromkeys(problems))
            log.info("fall-through pull of %d instances ended in %.2f s%s", len(self._uids),
                     time.monotonic() - started, f": {self._finished}" if problems else "")

    def _pull(self, plan: Plan, request: RetrieveRequest) -> str:
        """One retrieve from the plan's peer: "" when it brought everything, else why not."""
        target = plan.target
        method = self.methods.get(plan.peer.name) or (
            "move" if "store" in plan.peer.allow else "get")
        try:
            result = self._retrieve(target, request, method, plan)
            if method == "move" and result.moved_nothing:
                log.warning("%s refused the C-MOVE to %s (%s): pulling by C-GET",
                            target, self.config.agent.ae_title, result.outcome)
                self.methods[plan.peer.name] = "get"
                result = self._retrieve(target, request, "get", plan)
        except PeerError as exc:
            log.warning("fall-through pull from %s failed: %s", target, exc)
            return str(exc)
        if result.complete:
            return ""
        log.warning("fall-through pull from %s ended %s, %d failed", target, result.outcome,
                    result.progress.failed)
        return f"{target.name}: {result.outcome}"

    def _retrieve(
        self, target: Target, request: RetrieveRequest, method: Method, plan: Plan
    ) -> RetrieveResult:
        timeout = self.config.qr.pull_timeout
        cancelled = self._stopped.is_set
        if method == "move":
            return retrieve(self.config, target, request, method="move", timeout=timeout,
                            cancelled=cancelled)
        classes = sorted(sop_classes(plan.instances))
        return retrieve(self.config, target, request, method="get", timeout=timeout,
                        on_store=keeper(self.land, target), storage_classes=classes,
                        cancelled=cancelled)


def sop_classes(instances: Iterable[RemoteInstance]) -> frozenset[str]:
    """Their SOP classes; the common ones too if the peer did not say some."""
    named = [i.sop_class for i in instances]
    known = frozenset(c for c in named if c)
    return known | frozenset(COMMON_STORAGE_CLASSES) if "" in named else known


def requests(plan: Plan) -> Iterator[RetrieveRequest]:
    """The retrieves that bring what the plan lacks: whole studies and series where the
    box holds none of them, else the missing instances of each series."""
    studies: dict[str, list[RemoteInstance]] = {}
    for instance in plan.instances:
        studies.setdefault(instance.study, []).append(instance)
    for study, instances in studies.items():
        lacking = [i for i in instances if i.sop_uid in plan.lacking]
        if not lacking:
            continue
        top = (*_patient(plan.model, instances[0]), Key(Tag("StudyInstanceUID"), study))
        if len(lacking) == len(instances):
            yield RetrieveRequest(plan.model, top)
            continue
        yield from _series_requests(plan, top, instances)


def _series_requests(
    plan: Plan, top: tuple[Key, ...], instances: list[RemoteInstance]
) -> Iterator[RetrieveRequest]:
    series: dict[str, list[RemoteInstance]] = {}
    for instance in instances:
        series.setdefault(instance.series, []).append(instance)
    for uid, members in series.items():
        lacking = [i.sop_uid for i in members if i.sop_uid in plan.lacking]
        if not lacking:
            continue
        keys = (*top, Key(Tag("SeriesInstanceUID"), uid))
        if len(lacking) < len(members):
            keys += (Key(Tag("SOPInstanceUID"), "\\".join(lacking)),)
        yield RetrieveRequest(plan.model, keys)


def _patient(model: Model, instance: RemoteInstance) -> tuple[Key, ...]:
    """Patient Root needs the patient ID above the study level."""
    if model is Model.PATIENT_ROOT and instance.patient_id:
        return (Key(Tag("PatientID"), instance.patient_id),)
    return ()


def landing(archive: Archive, status: StatusModel) -> Landing:
    """Where pulled instances land: the agent's own archive."""
    return Landing(archive, status, lambda destinations: None, "the archive")
