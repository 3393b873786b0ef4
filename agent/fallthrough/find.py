"""The remote part of one C-FIND: the fall-through peers asked in order, on a thread of
its own started once the archive has answered, their answers handed over as they come.

Each peer gets the requester's identifier as it is (the same keys, the same level, the
same model where it offers it: never a wider query); each answer keeps only what was
asked for (``agent.net.qr_merge`` marks it retrievable through us, NEARLINE).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from agent.config import Config
from agent.dicom.models import Level, Model
from agent.errors import PeerError
from agent.fallthrough.asking import FindAssociation
from agent.net.scu import Target

log = logging.getLogger(__name__)

WAIT_STEP = 0.1  # how often a wait for answers looks whether the requester cancelled
LET_LOCAL_ANSWERS_LEAVE = 0.005  # seconds
_ALWAYS = ("SpecificCharacterSet", "QueryRetrieveLevel")
_END = object()  # the peers are done


class RemoteQuery:
    """The answers of ``targets`` to one identifier, gathered on a daemon thread."""

    def __init__(
        self, config: Config, targets: Sequence[Target], model: Model, identifier: Dataset
    ) -> None:
        self.config = config
        self.targets = targets
        self.model = model
        self.identifier = identifier
        self._answers: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._problems: list[str] = []
        self._timed_out = False
        self._stopped = threading.Event()
        self._current: FindAssociation | None = None
        self._thread = threading.Thread(target=self._ask_all, name="fall-through find",
                                        daemon=True)

    def start(self) -> None:
        """Ask the peers, in order, on the query's own thread."""
        self._thread.start()

    def answers(self, until: float, cancelled: Callable[[], bool]) -> Iterator[Dataset]:
        """Each answer as it comes, until the peers are done, ``until`` or ``cancelled()``."""
        while not cancelled():
            remaining = until - time.monotonic()
            if remaining <= 0:
                self._timed_out = True
                return
            try:
                item = self._answers.get(timeout=min(WAIT_STEP, remaining))
            except queue.Empty:
                continue
            if item is _END:
                return
            assert isinstance(item, Dataset)
            yield item

    def incomplete(self) -> str | None:
        """Why the remote answers are incomplete (a peer failed or was too slow), or None."""
        problems = list(self._problems)
        if self._timed_out:
            timeout = self.config.qr.fall_through_timeout
            problems.insert(0, f"the PACS part is incomplete: no full answer in {timeout:g} s")
        return "; ".join(problems) or None

    def close(self) -> None:
        """Stop: C-CANCEL the peer asked now; its thread then ends the association."""
        self._stopped.set()
        current = self._current
        if current is not None:
            current.cancel()

    def _ask_all(self) -> None:
        try:
            # the last local answers are still being written by the association's own
            # thread: a new thread setting up an association would hold the interpreter
            # for up to its switch interval (5 ms) first
            self._stopped.wait(LET_LOCAL_ANSWERS_LEAVE)
            for target in self.targets:
                if self._stopped.is_set():
                    return
                try:
                    self._ask(target)
                except PeerError as exc:
                    log.warning("C-FIND fall-through to %s failed: %s", target, exc)
                    self._problems.append(f"the PACS part is incomplete: {exc}")
                except Exception as exc:  # a thread must say what went wrong, then end
                    log.exception("C-FIND fall-through to %s failed", target)
                    self._problems.append(f"the PACS part is incomplete: {exc}")
        finally:
            self._answers.put(_END)

    def _ask(self, target: Target) -> None:
        level = Level(str(self.identifier.QueryRetrieveLevel).strip())
        timeout = self.config.qr.fall_through_timeout
        peer = FindAssociation(self.config, target, [self.model, Model.STUDY_ROOT], timeout)
        self._current = peer
        try:
            if self._stopped.is_set():
                return
            model = peer.model_for(self.model, level)
            wanted = {element.tag for element in self.identifier}
            for answer in peer.find(model, self.identifier):
                if self._stopped.is_set():
                    peer.cancel()
                    continue  # read on to its final status (Cancel)
                self._answers.put(cleaned(answer, wanted))
        finally:
            self._current = None
            peer.close()


def cleaned(answer: Dataset, wanted: set[BaseTag]) -> Dataset:
    """A peer's answer with only the requested keys (its character set and level kept)."""
    kept = Dataset()
    for element in answer:
        if element.tag in wanted or element.keyword in _ALWAYS:
            kept.add(element)
    return kept
