"""Modality Performed Procedure Step SCP (PS3.4 F.7): pynetdicom plays the modality,
sending N-CREATE and N-SET to an agent running in this process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from agent import config as config_module
from agent.app import Agent
from agent.archive import mpps
from agent.dicom.contexts import MPPS, service_of
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
from tests.mpps_peers import (
    MOD_AE,
    OTHER_AE,
    Finals,
    Modality,
    creation,
    echo,
    ending,
    start,
)
from tests.support import free_port, write_config


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
