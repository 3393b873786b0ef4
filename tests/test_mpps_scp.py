"""Modality Performed Procedure Step SCP (PS3.4 F.7): pynetdicom plays the modality,
sending N-CREATE and N-SET to an agent running in this process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt

from agent import config as config_module
from agent.app import Agent
from agent.archive import mpps
from agent.dicom.contexts import MPPS, VERIFICATION, service_of
from agent.dicom.status import (
    DUPLICATE_SOP_INSTANCE,
    INVALID_ATTRIBUTE_VALUE,
    MAY_NO_LONGER_BE_UPDATED,
    MAY_NO_LONGER_BE_UPDATED_COMMENT,
    MISSING_ATTRIBUTE,
    MISSING_ATTRIBUTE_VALUE,
    NO_SUCH_ATTRIBUTE,
    NO_SUCH_OBJECT_INSTANCE,
    NOT_AUTHORIZED,
    PROCESSING_FAILURE,
)
from tests.support import free_port, write_config

MOD_AE, OTHER_AE = "MOD", "OTHER"
CT = "1.2.840.10008.5.1.4.1.1.2"
SR = "1.2.840.10008.5.1.4.1.1.88.22"


def make_config(tmp_path: Path, mod_allow: tuple[str, ...]) -> Path:
    """An agent with the modality (allowed ``mod_allow``) and a peer without "mpps"."""
    def peer(ae: str, allow: tuple[str, ...]) -> dict[str, Any]:
        return {"ae_title": ae, "host": "127.0.0.1", "port": 104, "allow": list(allow)}

    return write_config(
        tmp_path / "agent.toml",
        {"ae_title": "EDGE", "port": free_port(), "bind": "127.0.0.1",
         "data_dir": str(tmp_path / "data"), "min_free_mb": 0},
        {"MODALITY": peer(MOD_AE, mod_allow), "OTHER": peer(OTHER_AE, ("echo", "store"))},
    )


class Finals:
    """The agent's on_mpps_final, recording each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[str, ...], frozenset[str], bool]] = []
        self.called = threading.Event()

    def __call__(self, uid: str, studies: tuple[str, ...], instances: frozenset[str],
                 discontinued: bool) -> None:
        self.calls.append((uid, studies, instances, discontinued))
        self.called.set()


@pytest.fixture
def running() -> Iterator[list[Agent]]:
    """Agents started by a test; each closed after it."""
    agents: list[Agent] = []
    yield agents
    for each in agents:
        each.close()


def start(path: Path, agents: list[Agent], finals: Finals | None = None) -> Agent:
    agent = Agent(config_module.load_file(path))
    if finals is not None:
        agent.on_mpps_final = finals
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


def steps(agent: Agent) -> list[mpps.Step]:
    assert agent.archive is not None
    return mpps.steps(agent.archive.index)


def test_mpps_is_a_service() -> None:
    assert service_of(MPPS) == "mpps"
    peer = config_module.parse({"peers": {"CT": {
        "ae_title": "CT", "host": "h", "port": 104, "allow": ["echo", "mpps"]}}}).peers["CT"]
    assert peer.allow == frozenset({"echo", "mpps"})


def test_a_completed_step_is_recorded_told_and_survives_a_restart(
        tmp_path: Path, running: list[Agent]) -> None:
    path = make_config(tmp_path, ("echo", "store", "mpps"))
    finals = Finals()
    agent = start(path, running, finals)
    port = agent.config.agent.port
    study, uid = generate_uid(), generate_uid()
    images, others = [generate_uid(), generate_uid()], [generate_uid()]
    modality = Modality(port)
    try:
        assert modality.offered
        assert modality.create(creation(study), uid).Status == 0x0000
        [step] = steps(agent)
        assert (step.uid, step.status, step.calling_ae) == (uid, "IN PROGRESS", MOD_AE)
        assert step.study_uids == (study,) and step.final_at is None and not finals.calls
        assert modality.set(ending("COMPLETED", images, others), uid).Status == 0x0000
    finally:
        modality.close()
    assert finals.calls == [(uid, (study,), frozenset(images + others), False)]
    [step] = steps(agent)
    assert step.status == "COMPLETED" and step.final_at is not None
    assert step.instance_uids == frozenset(images + others)
    recorded = Dataset.from_json(step.attributes)
    assert recorded.PatientName == "Müller^Jörg"  # decoded by its character set, kept
    assert recorded.PerformedProcedureStepEndTime == "032000"
    agent.close()
    running.remove(agent)
    again = start(path, running, Finals())
    assert steps(again) == [step]
    modality = Modality(again.config.agent.port)
    try:  # final across the restart: a further N-SET is refused as F.7.2.2.4 says
        refused = modality.set(ending("COMPLETED", images, []), uid)
    finally:
        modality.close()
    assert (refused.Status, refused.ErrorID) == (PROCESSING_FAILURE, MAY_NO_LONGER_BE_UPDATED)
    assert refused.ErrorComment == MAY_NO_LONGER_BE_UPDATED_COMMENT
    assert steps(again) == [step]


def test_the_agent_names_a_step_the_modality_did_not(tmp_path: Path,
                                                     running: list[Agent]) -> None:
    finals = Finals()
    agent = start(make_config(tmp_path, ("echo", "mpps")), running, finals)
    study, image = generate_uid(), generate_uid()
    modality = Modality(agent.config.agent.port)
    try:
        assert modality.create(creation(study), None).Status == 0x0000
        [step] = steps(agent)
        assert modality.answered_uids == [step.uid]  # returned in the N-CREATE response
        assert modality.set(ending("DISCONTINUED", [image], []), step.uid).Status == 0x0000
    finally:
        modality.close()
    assert finals.calls == [(step.uid, (study,), frozenset({image}), True)]
    assert steps(agent)[0].status == "DISCONTINUED"


def test_invalid_requests_are_refused_and_record_nothing(tmp_path: Path,
                                                         running: list[Agent]) -> None:
    path = make_config(tmp_path, ("echo", "mpps"))
    finals = Finals()
    agent = start(path, running, finals)
    port = agent.config.agent.port
    uid, study = generate_uid(), generate_uid()
    modality = Modality(port)
    try:
        assert modality.create(creation(study), uid).Status == 0x0000
        recorded = steps(agent)

        def refused(status: Dataset, code: int) -> str:
            assert status.Status == code
            assert steps(agent) == recorded, "a refused request changed the record"
            assert echo(port) == 0x0000, "the agent stopped serving"
            return str(status.get("ErrorComment", ""))

        assert refused(modality.set(ending("COMPLETED", [], []), generate_uid()),
                       NO_SUCH_OBJECT_INSTANCE)
        assert "IN PROGRESS" in refused(
            modality.create(creation(study, "COMPLETED"), generate_uid()),
            INVALID_ATTRIBUTE_VALUE)
        incomplete = creation(study)
        del incomplete.PerformedProcedureStepID
        assert "PerformedProcedureStepID" in refused(
            modality.create(incomplete, generate_uid()), MISSING_ATTRIBUTE)
        refused(modality.create(creation(generate_uid()), uid), DUPLICATE_SOP_INSTANCE)
        bare = Dataset()  # the end date and time N-CREATE left empty are still empty
        bare.PerformedProcedureStepStatus = "COMPLETED"
        assert "PerformedProcedureStepEndDate" in refused(modality.set(bare, uid),
                                                          MISSING_ATTRIBUTE_VALUE)
        seriesless = ending("COMPLETED", [], [])
        del seriesless.PerformedSeriesSequence
        assert "PerformedSeriesSequence" in refused(modality.set(seriesless, uid),
                                                    MISSING_ATTRIBUTE_VALUE)
        unnamed = ending("COMPLETED", [generate_uid()], [])
        del unnamed.PerformedSeriesSequence[0].SeriesInstanceUID
        assert "SeriesInstanceUID" in refused(modality.set(unnamed, uid), MISSING_ATTRIBUTE)
        renamed = Dataset()
        renamed.PatientName = "Other^Name"
        assert "PatientName" in refused(modality.set(renamed, uid), NO_SUCH_ATTRIBUTE)
        assert not finals.calls
        assert modality.set(ending("COMPLETED", [], []), uid).Status == 0x0000
        recorded = steps(agent)
        late = refused(modality.set(ending("DISCONTINUED", [], []), uid), PROCESSING_FAILURE)
        assert late == MAY_NO_LONGER_BE_UPDATED_COMMENT
        assert len(finals.calls) == 1
    finally:
        modality.close()
    other = Modality(port, OTHER_AE)  # a peer without "mpps": no MPPS context for it
    try:
        assert not other.offered
        with pytest.raises(ValueError):
            other.create(creation(study), generate_uid())
    finally:
        other.close()
    assert steps(agent) == recorded and echo(port) == 0x0000


def test_a_reload_that_takes_mpps_away_refuses_the_next_request(
        tmp_path: Path, running: list[Agent]) -> None:
    path = make_config(tmp_path, ("echo", "mpps"))
    agent = start(path, running)
    modality = Modality(agent.config.agent.port)
    try:
        assert modality.offered
        path.write_text(path.read_text().replace('"echo", "mpps"', '"echo"'))
        agent.reload(config_module.load_file(path))
        status = modality.create(creation(generate_uid()), generate_uid())
        assert status.Status == NOT_AUTHORIZED
    finally:
        modality.close()
    assert steps(agent) == []
