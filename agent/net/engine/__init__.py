"""The agent's DICOM engine: the one place that reaches into pynetdicom's internals.

``install()`` swaps pynetdicom's polling DUL and association loops for event-driven
ones (agent/net/engine/dul.py, reactor.py), encodes command sets without pydicom
(commands.py), sends command and data set in separate P-DATA-TF PDUs (messages.py),
decodes plain C-STORE responses without pydicom (responses.py), copies presentation
contexts for each accepted association cheaply (copies.py), keeps a failed write of a
received data set for the handler to answer (received.py), and writes the sender's AE
title into the file meta of each received data set (filemeta.py), process-wide, once.
Every private name used here is listed in ``PRIVATE_NAMES`` and checked by
tests/test_engine_contract.py, and
pynetdicom is pinned to the minor version those tests ran on.
"""

from __future__ import annotations

import threading

import pynetdicom
from pynetdicom import _config, association, dimse, dimse_messages, dimse_primitives, dul
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import QueryRetrieveServiceClass

from agent.net.engine import commands, copies, filemeta, received
from agent.net.engine.dul import EventDrivenDUL
from agent.net.engine.reactor import run_reactor

TESTED_VERSION = "3.0"
_installed = threading.Lock()
_done = False

# (object, attribute) pairs of pynetdicom that the engine reads, overrides or replaces
PRIVATE_NAMES: tuple[tuple[object, str], ...] = (
    (association, "DULServiceProvider"),  # the class an Association builds its DUL from
    (association.Association, "_run_reactor"),
    (association.Association, "_serve_request"),
    (association.Association, "_reactor_checkpoint"),  # held by substore.py, a ParkingGate
    (dimse_messages.DIMSEMessage, "decode_msg"),  # wrapped: knows the association (filemeta)
    (dimse_messages, "create_file_meta"),  # replaced: adds the sender's AE title (filemeta)
    (association.Association, "_sent_abort"),  # substore.py: did we end it, or the peer?
    (dimse.DIMSEServiceProvider, "send_msg"),  # replaced: command sets encoded directly
    (dimse_messages, "_MESSAGE_TYPES"),
    (dimse_messages, "_DATASET_KEYWORDS"),
    (dul.DULServiceProvider, "_is_transport_event"),
    (dul.DULServiceProvider, "_process_recv_primitive"),
    (dul.DULServiceProvider, "_idle_timer"),
    (dul.DULServiceProvider, "_kill_thread"),
    (dimse_primitives.C_STORE, "_dataset_path"),  # a file to stream (commands.py)
    (dimse_primitives.C_STORE, "_context_id"),  # set on responses decoded by responses.py
    # opens the move destination through self.ae.associate: moves.py's ListenerAE
    (QueryRetrieveServiceClass, "_move_scp"),
    (dimse_primitives.C_STORE, "_dataset_file"),  # a received data set's file (received.py)
    (dimse_messages, "NamedTemporaryFile"),  # replaced: received.ReceivedFile keeps write errors
)


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
