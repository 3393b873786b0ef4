"""What a fall-through peer holds under a retrieve identifier, instance by instance.

The identifier names patients, studies, series or instances by their unique keys; a
retrieve that falls through needs each instance (to count sub-operations truthfully
before the first is sent, and to pull only what the box lacks). The peer is asked level
by level, hierarchically as PS3.4 C.4.1.2.1 requires: a list of UIDs only at the query
level, one value for each level above. Study Root where the peer offers it (the patient
ID then matches at the study level), else Patient Root with the patient ID carried down.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pydicom.dataset import Dataset

from agent.config import Config
from agent.dicom.models import Level, Model
from agent.errors import PeerError
from agent.fallthrough.asking import FindAssociation
from agent.net.scu import Target


@dataclass(frozen=True)
class RemoteInstance:
    """An instance a peer holds: where it sits in the hierarchy, and its SOP class."""

    patient_id: str
    study: str
    series: str
    sop_uid: str
    sop_class: str


def list_instances(
    config: Config, target: Target, identifier: Dataset, timeout: float
) -> tuple[Model, list[RemoteInstance]]:
    """Every instance ``target`` holds under a retrieve ``identifier``, and the model it
    was asked in (retrieve from it in the same); PeerError when it cannot be asked."""
    peer = FindAssociation(config, target, [Model.STUDY_ROOT, Model.PATIENT_ROOT], timeout)
    try:
        model = _model(peer)
        return model, list(_walk(peer, model, identifier))
    finally:
        peer.close()


def _model(peer: FindAssociation) -> Model:
    try:
        return peer.model_for(Model.STUDY_ROOT, Level.STUDY)
    except PeerError:
        return peer.model_for(Model.PATIENT_ROOT, Level.PATIENT)


def _values(identifier: Dataset, keyword: str) -> list[str]:
    text = str(identifier.get(keyword, "") or "")
    return [value.strip("\0 ") for value in text.split("\\") if value.strip("\0 ")]


def _walk(peer: FindAssociation, model: Model, identifier: Dataset) -> Iterator[RemoteInstance]:
    level = Level(str(identifier.QueryRetrieveLevel).strip())
    patients = _values(identifier, "PatientID")
    if level is Level.PATIENT:
        for patient in patients:
            for study in _ask(peer, model, Level.STUDY, {"PatientID": patient}, "StudyInstanceUID"):
                yield from _study(peer, model, patient, study)
        return
    patient = patients[0] if patients else ""
    studies = _values(identifier, "StudyInstanceUID")
    if level is Level.STUDY:
        for study in _listed(peer, model, Level.STUDY, _keys(patient), "StudyInstanceUID", studies):
            yield from _study(peer, model, patient, study)
        return
    (study,) = studies[:1] or [""]
    series_uids = _values(identifier, "SeriesInstanceUID")
    if level is Level.SERIES:
        above = {**_keys(patient), "StudyInstanceUID": study}
        for series in _listed(peer, model, Level.SERIES, above, "SeriesInstanceUID", series_uids):
            yield from _images(peer, model, patient, study, series, [])
        return
    yield from _images(peer, model, patient, study, series_uids[0] if series_uids else "",
                       _values(identifier, "SOPInstanceUID"))


def _study(
    peer: FindAssociation, model: Model, patient: str, study: str
) -> Iterator[RemoteInstance]:
    above = {**_keys(patient), "StudyInstanceUID": study}
    for series in _ask(peer, model, Level.SERIES, above, "SeriesInstanceUID"):
        yield from _images(peer, model, patient, study, series, [])


def _images(
    peer: FindAssociation, model: Model, patient: str, study: str, series: str, uids: list[str]
) -> Iterator[RemoteInstance]:
    keys = {**_keys(patient), "StudyInstanceUID": study, "SeriesInstanceUID": series,
            "SOPInstanceUID": "\\".join(uids), "SOPClassUID": ""}
    for answer in peer.find(model, _identifier(Level.IMAGE, keys)):
        uid = str(answer.get("SOPInstanceUID", "")).strip("\0 ")
        if uid:
            yield RemoteInstance(patient, study, series, uid,
                                 str(answer.get("SOPClassUID", "")).strip("\0 "))


def _listed(
    peer: FindAssociation, model: Model, level: Level, above: dict[str, str], keyword: str,
    given: list[str],
) -> list[str]:
    """The UIDs at ``level`` the peer holds among ``given`` (a list at the query level)."""
    return _ask(peer, model, level, {**above, keyword: "\\".join(given)}, keyword)


def _ask(
    peer: FindAssociation, model: Model, level: Level, keys: dict[str, str], keyword: str
) -> list[str]:
    """The values of ``keyword`` in the answers to one C-FIND at ``level``."""
    asked = {**keys, keyword: keys.get(keyword, "")}
    answers = peer.find(model, _identifier(level, asked))
    found = (str(answer.get(keyword, "")).strip("\0 ") for answer in answers)
    return list(dict.fromkeys(value for value in found if value))


def _keys(patient: str) -> dict[str, str]:
    """The patient ID as a key, when known (Patient Root needs it above the study level)."""
    return {"PatientID": patient} if patient else {}


def _identifier(level: Level, keys: dict[str, str]) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level.value
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    return identifier
