"""A peer whose Maximum Length Received no PDU we send fits is refused at once, both ways.

A-ASSOCIATE-RQ with a Maximum Length Received of 1 used to be accepted, and the C-ECHO
on it was never answered: no PDV fits in one byte. Below messages.MIN_PEER_PDU the agent
rejects such a request (and aborts such an association it asked for), logs it once, and
serves everyone else; at the minimum itself every message still gets through.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from agent.app import Agent
from agent.net.engine.messages import MIN_PEER_PDU
from agent.net.engine.transport import requestor_handlers
from tests.conftest import MODALITY_AE
from tests.support import free_port


def _associate(agent: Agent, max_pdu: int) -> object:
    assert agent.server is not None
    ae = AE(ae_title=MODALITY_AE)
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", agent.server.port, ae_title="EDGE", max_pdu=max_pdu)


@pytest.mark.parametrize("max_pdu", [1, MIN_PEER_PDU - 1])
def test_a_request_no_answer_can_fit_is_rejected_and_the_agent_serves_on(
        agent: Agent, caplog: pytest.LogCaptureFixture, max_pdu: int) -> None:
    caplog.set_level(logging.WARNING)
    refused = _associate(agent, max_pdu)
    assert refused.is_rejected and not refused.is_established  # type: ignore[attr-defined]
    rejection = refused.acceptor.primitive  # type: ignore[attr-defined]
    assert (rejection.result, rejection.result_source, rejection.diagnostic) == (1, 2, 1)
    lines = [r.getMessage() for r in caplog.records if "rejected association" in r.getMessage()]
    assert lines == [f"rejected association from {MODALITY_AE} at 127.0.0.1: it takes P-DATA"
                     f" of at most {max_pdu} bytes, fewer than the {MIN_PEER_PDU} any answer"
                     " needs"]
    served = _associate(agent, 16384)
    try:
        assert served.send_c_echo().Status == 0x0000  # type: ignore[attr-defined]
    finally:
        served.release()  # type: ignore[attr-defined]


@pytest.mark.parametrize("max_pdu", [MIN_PEER_PDU, 0])
def test_at_the_minimum_and_unlimited_every_message_is_answered(
        agent: Agent, max_pdu: int) -> None:
    assoc = _associate(agent, max_pdu)
    try:
        assert assoc.is_established  # type: ignore[attr-defined]
        assert assoc.send_c_echo().Status == 0x0000  # type: ignore[attr-defined]
    finally:
        assoc.release()  # type: ignore[attr-defined]


@pytest.fixture
def tiny_peer() -> Iterator[tuple[int, threading.Event]]:
    """A pynetdicom SCP that accepts with a Maximum Length Received of 1; set on abort."""
    aborted = threading.Event()
    ae = AE(ae_title="TINY")
    ae.maximum_pdu_size = 1
    ae.add_supported_context(Verification)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_ABORTED, lambda event: aborted.set())])
    try:
        yield port, aborted
    finally:
        server.shutdown()


def test_an_association_we_asked_for_is_aborted_if_the_peer_takes_too_little(
        tiny_peer: tuple[int, threading.Event], caplog: pytest.LogCaptureFixture) -> None:
    port, aborted = tiny_peer
    caplog.set_level(logging.WARNING)
    ae = AE(ae_title="EDGE")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="TINY", evt_handlers=requestor_handlers())
    assert not assoc.is_established and assoc.is_aborted
    assert aborted.wait(10), "the peer must see an A-ABORT, not wait for a message"
    lines = [r.getMessage() for r in caplog.records if "aborted the association" in r.getMessage()]
    assert lines == [f"aborted the association with TINY at 127.0.0.1:{port}: it takes P-DATA of"
                     f" at most 1 bytes, fewer than the {MIN_PEER_PDU} any message needs"]
