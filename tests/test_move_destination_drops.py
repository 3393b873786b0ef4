"""A C-MOVE destination that drops the association mid-store: failures counted and named.

The destination here is a scripted pynetdicom storage SCP that aborts the association
after receiving the second data set, before answering it. The first instance is
stored, the second got no response, the rest were never sent: the C-MOVE ends 0xB000
with the four in its Failed SOP Instance UID List, and the log says in one line who
dropped which instance, with no pynetdicom error about a status it could not read.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest
from pynetdicom import AE, AllStoragePresentationContexts, build_context, evt

from tests import qr_archive as qa
from tests.qr_archive import STUDY_ROOT_MOVE
from tests.qr_archive import identifier as q


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[qa.Served]:
    yield from qa.build(tmp_path_factory.mktemp("drops"))


@pytest.fixture
def dropping_destination(served: qa.Served) -> Iterator[list[str]]:
    """DEST, which aborts on the second C-STORE it receives; yields the UIDs it received."""
    received: list[str] = []
    lock = threading.Lock()

    def on_store(event: evt.Event) -> int:
        with lock:
            received.append(str(event.request.AffectedSOPInstanceUID))
            if len(received) == 2:
                event.assoc.abort()  # the data set arrived; no response will
        return 0x0000

    ae = AE(ae_title="DEST")
    ae.supported_contexts = AllStoragePresentationContexts
    server = ae.start_server(("127.0.0.1", served.destination_port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield received
    finally:
        server.shutdown()


def test_a_destination_that_drops_mid_store_fails_the_rest_in_words(
        served: qa.Served, dropping_destination: list[str],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    requestor = AE(ae_title="WS")
    requestor.requested_contexts = [build_context(STUDY_ROOT_MOVE)]
    assoc = requestor.associate("127.0.0.1", served.port, ae_title="EDGE")
    assert assoc.is_established
    try:
        responses = list(assoc.send_c_move(
            q("STUDY", StudyInstanceUID=served.studies["P1"]), "DEST", STUDY_ROOT_MOVE))
    finally:
        assoc.release()
    status, identifier = responses[-1]
    assert status.Status == 0xB000
    assert (status.NumberOfCompletedSuboperations, status.NumberOfFailedSuboperations) == (1, 4)
    stored, dropped = dropping_destination
    failed = identifier.FailedSOPInstanceUIDList
    failed = [failed] if isinstance(failed, str) else list(failed)
    assert len(failed) == 4 and stored not in failed and dropped in failed
    messages = [r.getMessage() for r in caplog.records]
    assert [m for m in messages if m.startswith("C-STORE of instance")] == [
        f"C-STORE of instance {dropped} to DEST at 127.0.0.1:{served.destination_port} failed:"
        " it ended the association before answering (a failed sub-operation)"]
    assert not any("has no attribute 'Status'" in m for m in messages)
    assert not [r for r in caplog.records
                if r.name.startswith("pynetdicom") and r.levelno >= logging.ERROR]
