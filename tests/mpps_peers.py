"""Real peers for the MPPS tests: pynetdicom as the modality sending N-CREATE and N-SET,
its data sets as a CT sends them, and an in-process agent whose MPPS handler's calls to
the study book are recorded."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any
from unittest import mock

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt

from agent import config as config_module
from agent.app import Agent
from agent.archive.studies import StudyBook
from agent.dicom.contexts import MPPS, VERIFICATION

MOD_AE, OTHER_AE = "MOD", "OTHER"
CT = "1.2.840.10008.5.1.4.1.1.2"
SR = "1.2.840.10008.5.1.4.1.1.88.22"


class Finals:
    """Each step that became final, as the MPPS handler told the study book."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[str, ...], frozenset[str], bool]] = []
        self.called = threading.Event()

    def __call__(self, uid: str, studies: tuple[str, ...], instances: frozenset[str],
                 discontinued: bool) -> None:
        self.calls.append((uid, studies, instances, discontinued))
        self.called.set()


def start(path: Path, agents: list[Agent], finals: Finals | None = None) -> Agent:
    """An agent whose MPPS handler's calls to the study book are also told to ``finals``
    (the handler is given the book's ``mpps_final`` as it starts)."""
    agent = Agent(config_module.load_file(path))
    if finals is None:
        agent.start()
    else:
        original = StudyBook.mpps_final

        def recording(book: StudyBook, *final: Any) -> None:
            finals(*final)
            original(book, *final)

        with mock.patch.object(StudyBook, "mpps_final", recording):
            agent.start()
    agents.append(agent)
    return agent


class Modality:
    """pynetdicom as the modality: one association proposing MPPS and Verification."""

    def __init__(self, port: int, calling_ae: str = MOD_AE) -> None:
        self.answered_uids: list[str] = []
        ae = AE(ae_title=calling_ae)
        ae.add_requested_context(MPPS)
        ae.add_requested_context(VERIFICATION)
        self.assoc = ae.associate("127.0.0.1", port, ae_title="EDGE",
                                  evt_handlers=[(evt.EVT_DIMSE_RECV, self._on_received)])
        assert self.assoc.is_established

    def _on_received(self, event: Any) -> None:
        uid = event.message.command_set.get("AffectedSOPInstanceUID")
        if uid:
            self.answered_uids.append(str(uid))

    @property
    def offered(self) -> bool:
        """Was the MPPS context accepted?"""
        return any(cx.abstract_syntax == MPPS for cx in self.assoc.accepted_contexts)

    def create(self, ds: Dataset, uid: str | None) -> Dataset:
        status, _reply = self.assoc.send_n_create(ds, MPPS, uid)
        return status

    def set(self, ds: Dataset, uid: str) -> Dataset:
        status, _reply = self.assoc.send_n_set(ds, MPPS, uid)
        return status

    def close(self) -> None:
        self.assoc.release()


def echo(port: int) -> int:
    """C-ECHO as the modality on a new association: the agent still serves."""
    ae = AE(ae_title=MOD_AE)
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGE")
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


def _item(**values: Any) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def creation(study_uid: str, status: str = "IN PROGRESS") -> Dataset:
    """An N-CREATE Attribute List as a CT sends it (Table F.7.2-1)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ScheduledStepAttributesSequence = [_item(
        StudyInstanceUID=study_uid, ReferencedStudySequence=[], AccessionNumber="ACC1",
        RequestedProcedureID="RP1", RequestedProcedureDescription="", ScheduledProcedureStepID="",
        ScheduledProcedureStepDescription="", ScheduledProtocolCodeSequence=[])]
    ds.PatientName = "Müller^Jörg"
    ds.PatientID = "P1"
    ds.PatientBirthDate = ""
    ds.PatientSex = "M"
    ds.ReferencedPatientSequence = []
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = MOD_AE
    ds.PerformedStationName = ""
    ds.PerformedLocation = ""
    ds.PerformedProcedureStepStartDate = "20261207"
    ds.PerformedProcedureStepStartTime = "031500"
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepDescription = ""
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = []
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = "CT"
    ds.StudyID = ""
    ds.PerformedProtocolCodeSequence = []
    ds.PerformedSeriesSequence = []
    return ds


def ending(status: str, images: list[str], others: list[str]) -> Dataset:
    """The final N-SET: status, end date and time, one series referencing instances."""
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20261207"
    ds.PerformedProcedureStepEndTime = "032000"
    ds.PerformedSeriesSequence = [_item(
        PerformingPhysicianName="", ProtocolName="CHEST", OperatorsName="",
        SeriesInstanceUID=generate_uid(), SeriesDescription="", RetrieveAETitle="",
        ReferencedImageSequence=[_item(ReferencedSOPClassUID=CT, ReferencedSOPInstanceUID=u)
                                 for u in images],
        ReferencedNonImageCompositeSOPInstanceSequence=[
            _item(ReferencedSOPClassUID=SR, ReferencedSOPInstanceUID=u) for u in others])]
    return ds
