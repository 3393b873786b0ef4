"""The agent's DICOM engine: the one place that reaches into pynetdicom's internals.

``install()`` swaps pynetdicom's polling DUL and association loops for event-driven
ones (agent/net/engine/dul.py, reactor.py), encodes command sets without pydicom
(commands.py), sends command and data set in separate P-DATA-TF PDUs (messages.py),
decodes plain C-STORE responses without pydicom (responses.py), copies presentation
contexts for each accepted association cheaply (copies.py), keeps a failed write of a
received data set for the handler to answer (received.py), and writes the sender's AE
title into the file meta of each received data set (filemeta.py), process-wide, once.
Every private pynetdicom name used here is listed in ``PRIVATE_NAMES``, which
tests/test_engine_contract.py holds equal to what it reads from this package's source,
and pynetdicom is pinned to the minor version those tests ran on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pynetdicom
from pynetdicom import _config, association, dimse, dimse_messages, dimse_primitives
from pynetdicom.ae import ApplicationEntity
from pynetdicom.dul import DULServiceProvider
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import QueryRetrieveServiceClass
from pynetdicom.transport import RequestHandler

from agent.net.engine import commands, copies, filemeta, received
from agent.net.engine.dul import EventDrivenDUL
from agent.net.engine.reactor import run_reactor

TESTED_VERSION = "3.0"
_installed = threading.Lock()
_done = False

# What the engine relies on beyond pynetdicom's public API, as (owner, name): every name
# with one leading underscore it uses on pynetdicom's objects, and every attribute it
# writes on pynetdicom's modules and classes. The owner is the module or class whose
# source defines the name (the topmost, in a class hierarchy). tests/test_engine_contract.py
# derives this from the engine's source (tests/engine_inventory.py says the rule) and
# holds the two equal, and checks that each name exists in the installed pynetdicom.
PRIVATE_NAMES: tuple[tuple[object, str], ...] = (
    (pynetdicom, "_config"),  # the process-wide settings (_configure)
    (_config, "LOG_HANDLER_LEVEL"),
    (_config, "LOG_REQUEST_IDENTIFIERS"),
    (_config, "LOG_RESPONSE_IDENTIFIERS"),
    (_config, "STORE_RECV_CHUNKED_DATASET"),
    (_config, "STORE_SEND_CHUNKED_DATASET"),
    (ApplicationEntity, "_servers"),  # transport.register_server: AE.shutdown stops ours
    (association, "DULServiceProvider"),  # the class an Association builds its DUL from
    (association.Association, "_run_reactor"),  # replaced by reactor.run_reactor
    (association.Association, "_serve_request"),
    (association.Association, "_is_paused"),  # the reactor's side of the send handshake
    (association.Association, "_kill"),
    (association.Association, "_dul_ready"),  # set by dul.EventDrivenDUL.run_reactor
    (association.Association, "_reactor_checkpoint"),  # made a ParkingGate (reactor.py)
    (association.Association, "_sent_abort"),  # substore.py: did we end it, or the peer?
    (dimse.DIMSEServiceProvider, "send_msg"),  # replaced: command sets encoded directly
    (dimse_messages.DIMSEMessage, "decode_msg"),  # wrapped: knows the association (filemeta)
    (dimse_messages.DIMSEMessage, "_data_set_path"),  # guards.py: a received data set's file
    (dimse_messages.DIMSEMessage, "_data_set_file"),
    (dimse_messages, "create_file_meta"),  # replaced: adds the sender's AE title (filemeta)
    (dimse_messages, "NamedTemporaryFile"),  # replaced: received.ReceivedFile keeps write errors
    (dimse_messages, "_MESSAGE_TYPES"),
    (dimse_messages, "_DATASET_KEYWORDS"),
    (dimse_primitives.DIMSEPrimitive, "_dataset_path"),  # a file to stream (commands.py)
    (dimse_primitives.C_CANCEL, "_dataset_path"),  # read on any primitive sent (commands.py)
    (dimse_primitives.DIMSEPrimitive, "_dataset_file"),  # a received data set's file (received.py)
    (dimse_primitives.DIMSEPrimitive, "_context_id"),  # set on responses decoded by responses.py
    (DULServiceProvider, "_decode_pdu"),  # dul.py reads PDUs itself, decodes with these
    (DULServiceProvider, "_recv_pdu"),
    (DULServiceProvider, "_read_pdu_data"),  # overridden: P-DATA straight to DIMSE
    (DULServiceProvider, "_is_transport_event"),
    (DULServiceProvider, "_process_recv_primitive"),
    (DULServiceProvider, "_idle_timer"),
    (DULServiceProvider, "_kill_thread"),  # overridden: a property that wakes the loop
    (RequestHandler, "_create_association"),  # overridden: our socket and guards
)
# pynetdicom behaviour the engine relies on without naming it: QueryRetrieveServiceClass's
# _move_scp opens the move destination through self.ae.associate (moves.py's ListenerAE);
# its _c_find_scp follows a Warning with a Success of its own (finals.py drops that one)
RELIED_ON: tuple[tuple[object, str], ...] = (
    (QueryRetrieveServiceClass, "_move_scp"),
    (QueryRetrieveServiceClass, "_c_find_scp"),
)


def throttle(assoc: association.Association, take: Callable[[int], None]) -> bool:
    """Call ``take(nbytes)`` before each P-DATA the association's users send (a bandwidth
    cap: it may block, or raise to end the send); False if the association is not the
    engine's (``install`` was not called)."""
    dul = assoc.dul
    if not isinstance(dul, EventDrivenDUL):
        return False
    dul.throttle = take
    return True


def _configure() -> None:
    """pynetdicom's process-wide settings that decide speed, memory and what is logged."""
    _config.LOG_HANDLER_LEVEL = "none"  # the standard handlers format every PDU
    _config.LOG_REQUEST_IDENTIFIERS = False  # identifiers carry patient data
    _config.LOG_RESPONSE_IDENTIFIERS = False
    _config.STORE_RECV_CHUNKED_DATASET = True  # stream received data sets to disk
    _config.STORE_SEND_CHUNKED_DATASET = True  # stream stored files when sending


def install() -> None:
    """Make every association in this process use the event-driven loops (idempotent)."""
    global _done
    with _installed:
        if _done:
            return
        if not pynetdicom.__version__.startswith(TESTED_VERSION + "."):
            raise RuntimeError(
                f"edge-agent's DICOM engine was tested with pynetdicom {TESTED_VERSION}.x,"
                f" not {pynetdicom.__version__}"
            )
        _configure()
        setattr(association, "DULServiceProvider", EventDrivenDUL)  # noqa: B010
        setattr(association.Association, "_run_reactor", run_reactor)  # noqa: B010
        setattr(dimse.DIMSEServiceProvider, "send_msg", commands.send_msg)  # noqa: B010
        setattr(PresentationContext, "__deepcopy__", copies.copy_context)  # noqa: B010
        filemeta.install()
        received.install()
        _done = True
