"""Real peers for the Storage Commitment tests: the modality played by pynetdicom (it
stores, asks for commitment, and takes the agent's report on an association the agent
opens), Orthanc as a PACS that can report to the agent, and the agent's record of what
the PACS committed."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.peers import Orthanc
from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, evt

from agent.archive.index import connect
from agent.dicom.contexts import STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE, VERIFICATION

MOD_AE = "MOD"


def store(port: int, datasets: list[Dataset], calling_ae: str = MOD_AE) -> None:
    """C-STORE ``datasets`` to the agent as the modality."""
    ae = AE(ae_title=calling_ae)
    ae.requested_contexts = StoragePresentationContexts[:120]
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGE")
    assert assoc.is_established
    for ds in datasets:
        assert assoc.send_c_store(ds).Status == 0
    assoc.release()


def reference(sop_class: str, sop_uid: str) -> Dataset:
    """One item of a Referenced SOP Sequence."""
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_uid
    return item


def request(port: int, uid: str, pairs: list[tuple[str, str]],
            calling_ae: str = MOD_AE, called_ae: str = "EDGE") -> tuple[Any, int | None]:
    """N-ACTION as the modality; (was the context accepted, the response status)."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(STORAGE_COMMITMENT)
    ae.add_requested_context(VERIFICATION)  # so that the association is accepted
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    assert assoc.is_established
    try:
        if not [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == STORAGE_COMMITMENT]:
            return False, None
        ds = Dataset()
        ds.TransactionUID = uid
        ds.ReferencedSOPSequence = [reference(c, i) for c, i in pairs]
        status, reply = assoc.send_n_action(
            ds, 1, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE
        )
        assert not reply  # status only: no Action Reply data set
        return True, int(status.Status)
    finally:
        assoc.release()


class ReportCatcher:
    """A pynetdicom acceptor taking N-EVENT-REPORTs from a requestor in the SCP role.

    ``observe``, if given, is called as each report arrives, before it is answered; what
    it returns is kept in ``observed`` (what else was true at that moment)."""

    def __init__(self, port: int, observe: Callable[[], Any] | None = None) -> None:
        self.reports: list[tuple[int, Dataset]] = []
        self.observed: list[Any] = []
        self.observe = observe
        self.arrived = threading.Event()
        ae = AE(ae_title=MOD_AE)
        ae.add_supported_context(STORAGE_COMMITMENT, scu_role=False, scp_role=True)
        self.server = ae.start_server(
            ("127.0.0.1", port), block=False,
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_report)],
        )

    def _on_report(self, event: Any) -> tuple[int, None]:
        if self.observe is not None:
            self.observed.append(self.observe())
        self.reports.append((int(event.request.EventTypeID), event.event_information))
        self.arrived.set()
        return 0x0000, None

    def close(self) -> None:
        self.server.shutdown()


class ReportingOrthanc(Orthanc):
    """Orthanc 1.10.1 as the PACS, with the agent (``agent_ae`` on loopback at
    ``agent_port``) in its DicomModalities, so that it sends its storage commitment
    reports on an association it opens to the agent. With ``reports_to`` its entry names
    that port instead until ``report_to_agent``: it takes the agent's requests (it knows
    the AE), but its reports go nowhere. (Without any entry it rejects the N-ACTION.)
    On ``port`` if given (the port the agent's PACS peer names), kept if a start is
    retried."""

    def __init__(self, workdir: Path, agent_ae: str, agent_port: int, *,
                 port: int | None = None, reports_to: int | None = None) -> None:
        self.agent_ae, self.agent_port = agent_ae, agent_port
        first = agent_port if reports_to is None else reports_to
        super().__init__(workdir, modalities={agent_ae: self._entry(first)})
        self.pinned = port
        if port is not None:
            self.port = port

    def _entry(self, port: int) -> dict[str, Any]:
        return {"AET": self.agent_ae, "Host": "127.0.0.1", "Port": port}

    def new_ports(self) -> None:
        super().new_ports()
        if self.pinned is not None:
            self.port = self.pinned

    def report_to_agent(self) -> None:
        """Point the running Orthanc's entry for the agent at the agent's port."""
        put = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/modalities/{self.agent_ae}",
            data=json.dumps(self._entry(self.agent_port)).encode(), method="PUT")
        with urllib.request.urlopen(put, timeout=30):
            pass


def pacs_states(data_dir: Path,
                destination: str = "PACS") -> dict[str, tuple[str, int | None, str | None]]:
    """SOP Instance UID -> (state, reason, transaction) of every row of the agent's
    commitments asked of ``destination`` (read from its index, beside the running agent)."""
    conn = connect(data_dir / "index.sqlite", readonly=True)
    try:
        rows = conn.execute("SELECT SOPInstanceUID, state, reason, transaction_uid"
                            " FROM pacs_commits WHERE destination = ?", (destination,))
        return {uid: (state, reason, txn) for uid, state, reason, txn in rows}
    finally:
        conn.close()
