"""pynetdicom names the agent relies on beyond its public API, each with a clear failure.

Private names live in agent/net/engine/ only (this file and test_engine_contract.py
check them); when pynetdicom renames one, the test for it says which, and where.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from pynetdicom import AE, _config, dimse_messages
from pynetdicom.association import Association
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer


def _require(condition: bool, what: str, where: str) -> None:
    if not condition:
        pytest.fail(f"pynetdicom changed: {what} (relied on by {where})", pytrace=False)


def _acceptor() -> Association:
    ae = AE()
    return Association(ae, "acceptor")


def test_dimse_messages_say_where_a_received_data_set_is_written() -> None:
    message = DIMSEMessage()
    for name in ("_data_set_path", "_data_set_file"):
        _require(hasattr(message, name), f"DIMSEMessage.{name} is gone",
                 "agent/net/engine/guards.py remember_received / discard_unarchived")


def test_a_chunked_c_store_is_decoded_into_a_temp_file() -> None:
    """The decode path that sets ``_data_set_path`` is the one we expect."""
    text = Path(dimse_messages.__file__).read_text()
    _require("self._data_set_path = Path(self._data_set_file.name)" in text,
             "DIMSEMessage.decode_msg no longer records the temp file it writes",
             "agent/net/engine/guards.py remember_received")
    _require(hasattr(_config, "STORE_RECV_CHUNKED_DATASET"),
             "_config.STORE_RECV_CHUNKED_DATASET is gone", "agent/net/__init__.py")


def test_a_store_request_names_its_required_parameters() -> None:
    _require("MessageID" in C_STORE.REQUEST_KEYWORDS and "Priority" in C_STORE.REQUEST_KEYWORDS,
             "C_STORE.REQUEST_KEYWORDS changed", "agent/net/engine/guards.py _servable")


def test_the_acse_timeout_also_sets_the_artim_timer() -> None:
    assoc = _acceptor()
    assoc.acse_timeout = 3.5
    _require(assoc.dul.artim_timer.timeout == 3.5,
             "Association.acse_timeout no longer sets dul.artim_timer",
             "agent/net/engine/transport.py TunedRequestHandler (handshake_timeout)")


def test_both_threads_run_through_thread_run() -> None:
    for cls in (Association, DULServiceProvider):
        _require(issubclass(cls, threading.Thread) and cls.run is threading.Thread.run,
                 f"{cls.__name__} overrides Thread.run", "agent/net/engine/guards.py guard_threads")


def test_the_dul_can_be_tuned_and_stopped_from_outside() -> None:
    dul = _acceptor().dul
    for name in ("to_user_queue", "kill_dul", "socket", "state_machine",
                 "event_queue", "to_provider_queue"):
        _require(hasattr(dul, name), f"DULServiceProvider.{name} is gone",
                 "agent/net/engine/transport.py and agent/net/engine/guards.py")


def test_the_request_handler_builds_the_association_in_one_method() -> None:
    _require(callable(getattr(RequestHandler, "_create_association", None)),
             "RequestHandler._create_association is gone", "agent/net/engine/transport.py")


def test_the_server_keeps_socketserver_hooks() -> None:
    for name in ("request_queue_size", "verify_request", "handle_error", "active_associations"):
        _require(hasattr(ThreadedAssociationServer, name),
                 f"ThreadedAssociationServer.{name} is gone", "agent/net/engine/guards.py")


def test_an_acceptor_knows_whether_it_was_asked() -> None:
    assoc = _acceptor()
    _require(hasattr(assoc.requestor, "primitive") and assoc.requestor.primitive is None,
             "ServiceUser.primitive is gone or not None before the request",
             "agent/net/engine/guards.py requested / open_associations")


def test_the_dul_reads_and_sends_through_the_methods_the_engine_calls() -> None:
    from pynetdicom import fsm

    _require(fsm.TRANSITION_TABLE.get(("Evt10", "Sta6")) == "DT-2",
             "a P-DATA-TF in Sta6 is no longer handed to DIMSE by DT-2",
             "agent/net/engine/dul.py _read_pdu_data (the P-DATA fast lane)")
    _require(hasattr(_acceptor().dul.state_machine, "current_state"),
             "StateMachine.current_state is gone", "agent/net/engine/dul.py")
