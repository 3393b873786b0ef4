"""A PACS that misbehaves on purpose, for the fall-through tests: pynetdicom as a Q/R SCP
over data sets held in memory, whose C-FIND can stay silent (it accepts the association
and never answers) and whose C-MOVE can fail chosen instances."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from tests.support import free_port

UIDS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
SUB_OPERATIONS_FAILED = 0xB000


class ScriptedPacs:
    """Study Root C-FIND and C-MOVE over ``paths``; ``silent``: every C-FIND waits until
    cancelled or the PACS stops; ``failing``: SOP Instance UIDs its C-MOVE never sends."""

    ae_title = "SCRIPTED"

    def __init__(self, paths: list[Path], destinations: dict[str, int], *,
                 silent: bool = False, failing: frozenset[str] = frozenset()) -> None:
        self.datasets = [dcmread(p) for p in paths]
        self.destinations = destinations  # AE title: port on 127.0.0.1
        self.silent = silent
        self.failing = failing
        self.port = free_port()
        self.asked = threading.Event()  # a C-FIND came in
        self.cancelled = threading.Event()  # ...and its requester cancelled it
        self._stopping = threading.Event()
        self._server: Any = None

    def __enter__(self) -> ScriptedPacs:
        ae = AE(ae_title=self.ae_title)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
        ae.requested_contexts = StoragePresentationContexts
        handlers = [(evt.EVT_C_FIND, self._find), (evt.EVT_C_MOVE, self._move)]
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=handlers)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._server.shutdown()

    def matches(self, identifier: Dataset) -> list[Dataset]:
        """The held data sets whose unique keys match the identifier's."""
        found = []
        for ds in self.datasets:
            wanted = [(k, str(identifier.get(k, "") or "")) for k in UIDS]
            if all(not value or str(ds.get(k, "")) in value.split("\\")
                   for k, value in wanted):
                found.append(ds)
        return found

    def _find(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        self.asked.set()
        if self.silent:
            while not self._stopping.is_set():
                if event.is_cancelled:
                    self.cancelled.set()
                    yield 0xFE00, None
                    return
                self._stopping.wait(0.05)
            return
        identifier = event.identifier
        level = str(identifier.QueryRetrieveLevel)
        unique = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID",
                  "IMAGE": "SOPInstanceUID"}[level]
        seen = set()
        for ds in self.matches(identifier):
            if ds.get(unique) in seen:
                continue
            seen.add(ds.get(unique))
            answer = Dataset()
            answer.QueryRetrieveLevel = level
            for element in identifier:
                if element.keyword in ds:
                    answer[element.tag] = ds[element.tag]
                elif element.keyword != "QueryRetrieveLevel":
                    answer[element.tag] = element
            yield 0xFF00, answer

    def _move(self, event: Any) -> Iterator[Any]:
        port = self.destinations.get(str(event.move_destination).strip())
        if port is None:
            yield None, None
            return
        found = self.matches(event.identifier)
        yield "127.0.0.1", port
        yield len(found)
        failed = [str(ds.SOPInstanceUID) for ds in found if str(ds.SOPInstanceUID) in self.failing]
        for ds in found:
            if str(ds.SOPInstanceUID) not in self.failing:
                yield 0xFF00, ds
        if failed:
            status = Dataset()
            status.Status = SUB_OPERATIONS_FAILED
            identifier = Dataset()
            identifier.FailedSOPInstanceUIDList = failed
            yield status, identifier
