"""A small, varied archive served by an in-process agent, for the query/retrieve tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dicomgen
from pydicom.dataset import Dataset
from pynetdicom import AE, build_context

from agent import config as config_module
from agent.app import Agent
from tests import scu
from tests.support import free_port, peer, write_config

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_STUDY_FIND = "1.2.840.10008.5.1.4.1.2.3.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"

# (name, id, date, time, accession, charset, [(modality, instances, series number)])
PATIENTS = [
    ("DOE^JOHN", "P1", "20260101", "083000", "ACC1", "ISO_IR 192", [("CT", 5, 1)]),
    ("doe^jane", "P2", "20260105", "101500", "ACC2", "ISO_IR 192", [("MR", 3, 7), ("CT", 2, 8)]),
    ("Müller^Jürgen", "P3", "20251231", "230000", "ACC3", "ISO_IR 100", [("CT", 1, 1)]),
    ("SMITH^ANNA", "P5", "20260110", "1400", "acc5", "ISO_IR 192", [("MR", 1, 1)]),
]


@dataclass
class Served:
    """The running agent, its archive's studies, and the AE titles that may use it."""

    agent: Agent
    port: int
    studies: dict[str, str]  # patient id -> study UID
    destination_port: int
    data_dir: Path


def build(root: Path) -> Iterator[Served]:
    """Start an agent, fill it by C-STORE, yield it, stop it."""
    destination_port = free_port()
    config_file = write_config(
        root / "agent.toml",
        {"ae_title": "EDGE", "port": free_port(), "bind": "127.0.0.1",
         "data_dir": str(root / "data"), "min_free_mb": 0},
        {"CT": peer("MODALITY", allow=("store",)),
         "WS": peer("WS", allow=("echo", "find", "move", "get")),
         "VIEWER": peer("VIEWER", allow=("find",)),
         "DEST": peer("DEST", destination_port, allow=("echo",))},
    )
    config = config_module.load_file(config_file)
    studies: dict[str, str] = {}
    files: list[Path] = []
    for name, pid, date, time, accession, charset, series_list in PATIENTS:
        study = dicomgen.Study(patient_name=name, patient_id=pid, study_date=date,
                               study_time=time, accession=accession, charset=charset)
        studies[pid] = study.study_uid
        for modality, count, number in series_list:
            for ds in dicomgen.series(count, modality=modality, study=study, size=8):
                ds.SeriesNumber = number
                if pid == "P1":
                    ds.ProcedureCodeSequence = [_code("CTHEAD", "CT HEAD")]
                path = root / "src" / f"{ds.SOPInstanceUID}.dcm"
                path.parent.mkdir(parents=True, exist_ok=True)
                ds.save_as(path, enforce_file_format=True)
                files.append(path)
    with Agent(config) as agent:
        assert scu.store(config.agent.port, files) == [0] * len(files)
        yield Served(agent, config.agent.port, studies, destination_port, root / "data")


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "LOCAL"
    item.CodeMeaning = meaning
    return item


def identifier(level: str, **keys: object) -> Dataset:
    """A query identifier."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def find(port: int, query: Dataset, *, model: str = STUDY_ROOT_FIND, ae: str = "WS",
         combined: bool = False) -> tuple[list[Dataset], int]:
    """C-FIND with pynetdicom: (pending answers, final status)."""
    requestor = AE(ae_title=ae)
    requestor.requested_contexts = [build_context(model)]
    extended = []
    if combined:
        from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation

        item = SOPClassExtendedNegotiation()
        item.sop_class_uid = model
        item.service_class_application_information = b"\x00\x01"
        extended.append(item)
    assoc = requestor.associate("127.0.0.1", port, ae_title="EDGE", ext_neg=extended)
    assert assoc.is_established
    answers, final = [], -1
    try:
        for status, answer in assoc.send_c_find(query, model):
            if status and status.Status in (0xFF00, 0xFF01):
                answers.append(answer)
            elif status:
                final = int(status.Status)
    finally:
        assoc.release()
    return answers, final
