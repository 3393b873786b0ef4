"""What keeps one hostile or broken peer from hurting everyone else.

pynetdicom trusts its input in a few places. The private pynetdicom names the listener
relies on live here, in ``sockets`` (``RequestHandler._create_association``) and in
``engine``, each pinned by a contract test.
This module's own:

- ``DIMSEMessage._data_set_path`` / ``._data_set_file``: where a received data set is
  being written, so that nothing received and not archived outlives its association.

Everything else here uses public attributes: the listen backlog and a cap on connections
that have not asked for an association yet; association limits that count only peers
that asked; and a guard around pynetdicom's threads, so that an exception on bad input
answers the peer and closes the connection at once instead of leaving it hanging.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.datadict import tag_for_keyword
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class
from pynetdicom.transport import ThreadedAssociationServer

from agent.net import peerlog
from agent.net.engine import responses
from agent.net.engine.dul import ABORT, ASSOCIATE_RJ

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 64  # a burst of connects waits in the kernel instead of being dropped
PENDING_LIMIT = 64  # connections that have not sent an A-ASSOCIATE-RQ yet
PENDING_PER_HOST = 32  # of those, from one address: one bad host cannot take every slot
PENDING_POLL = 0.02

_SOP_CLASS_TAG = 0x00000002  # Affected SOP Class UID
_received: weakref.WeakKeyDictionary[Any, list[Path]] = weakref.WeakKeyDictionary()
_received_lock = threading.Lock()


class GuardedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with a deep backlog and a cap on silent connections.

    While ``pending_limit`` connections have not asked for an association, the next one
    waits (and those behind it wait in the kernel's backlog) until one of them does or
    is closed by the handshake timeout; only if none is by then is it closed. A host
    that already holds ``pending_per_host`` silent connections is refused at once.
    """

    request_queue_size = LISTEN_BACKLOG
    pending_limit = PENDING_LIMIT
    pending_per_host = PENDING_PER_HOST
    pending_wait = 5.0  # set to the handshake timeout by the server's owner

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._starting: set[tuple[str, int]] = set()  # admitted, association not running yet
        self._starting_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Admit a connection once fewer than ``pending_limit`` others are silent."""
        host = host_of(client_address)
        if self.waiting(host) >= self.pending_per_host:
            return self._refuse(host, f"{self.pending_per_host} of its connections")
        deadline = time.monotonic() + self.pending_wait
        while (waiting := self.waiting()) >= self.pending_limit:
            if time.monotonic() > deadline or self._closing():
                return self._refuse(host, f"{waiting} connections")
            time.sleep(PENDING_POLL)
        with self._starting_lock:
            self._starting.add(_key(client_address))  # waiting until its association runs
        return True

    def connection_started(self, client_address: Any) -> None:
        """The request handler's association thread runs: it is counted from there on."""
        with self._starting_lock:
            self._starting.discard(_key(client_address))

    def _refuse(self, host: str, who: str) -> bool:
        with peerlog.speaking_of(host):
            log.warning(
                "closed a connection from %s: %s have not asked for an association", host, who
            )
        return False

    def _closing(self) -> bool:
        return self.socket is None or self.socket.fileno() < 0

    def waiting(self, host: str | None = None) -> int:
        """Connections accepted that have not asked for an association yet (from ``host``)."""
        silent = {
            _key((assoc.requestor.address, assoc.requestor.port))
            for assoc in self.active_associations
            if not requested(assoc)
        }
        with self._starting_lock:
            every = silent | self._starting  # one connection counts once, in either stage
        return sum(1 for address, _ in every if host is None or address == host)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line for a connection pynetdicom could not handle (traceback at debug level)."""
        with peerlog.speaking_of(host_of(client_address)):
            log.warning("connection from %s ended with an error", host_of(client_address))
            log.debug("the error was", exc_info=True)


def requested(assoc: Association) -> bool:
    """True once the peer's A-ASSOCIATE-RQ has arrived and decoded."""
    return getattr(getattr(assoc, "requestor", None), "primitive", None) is not None


def open_associations(assoc_list: list[Association]) -> int:
    """Acceptor associations that asked and are not over: what max_associations limits."""
    return sum(
        1
        for assoc in assoc_list
        if assoc.is_acceptor
        and requested(assoc)
        and not (assoc.is_released or assoc.is_aborted or assoc.is_rejected)
    )


def guard_threads(assoc: Any, peer: str) -> None:
    """Make an exception in either pynetdicom thread answer the peer and close, at once."""
    dul = assoc.dul
    dul.run = _guarded(dul.run, lambda exc: _drop(assoc, peer, exc))
    assoc.run = _guarded(assoc.run, lambda exc: _drop(assoc, peer, exc))


def _guarded(run: Callable[[], None], on_error: Callable[[Exception], None]) -> Callable[[], None]:
    def guarded() -> None:
        try:
            run()
        except Exception as exc:  # a thread's last resort: it must not die silently
            on_error(exc)

    return guarded


def _drop(assoc: Any, peer: str, exc: Exception) -> None:
    """Reject (before an association) or abort (after), close the socket, wake the threads."""
    log.warning("dropped the connection from %s: bad input (%s)", peer, exc)
    log.debug("pynetdicom failed with", exc_info=exc)
    dul = assoc.dul
    wrapper = dul.socket
    with contextlib.suppress(Exception):
        sock = wrapper.socket if wrapper is not None else None
        if isinstance(sock, socket.socket):
            sock.sendall(ABORT if assoc.is_established or requested(assoc) else ASSOCIATE_RJ)
            sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(Exception):
        wrapper.close()
    assoc.is_aborted = True
    assoc.is_established = False
    dul.kill_dul()
    dul.to_user_queue.put(None)  # an acceptor still waiting for the request stops waiting


def remember_received(event: Event) -> None:
    """EVT_DIMSE_RECV: note a received data set's temp file; drop it now if unservable.

    pynetdicom ignores a C-STORE without Message ID (and others without a required
    parameter) and never calls our handler, so its file would otherwise stay in tmp.
    """
    message = event.message
    path = getattr(message, "_data_set_path", None)
    if not isinstance(path, Path):
        return
    if not _servable(message, event.assoc):
        _remove(getattr(message, "_data_set_file", None), path)
        log.warning(
            "discarded a C-STORE from %s that pynetdicom cannot serve",
            host_of(event.assoc.requestor.address),
        )
        return
    with _received_lock:
        _received.setdefault(event.assoc, []).append(path)


responses.BLIND_TO_COMMANDS.add(remember_received)  # it returns at once without a data set

_REQUIRED_TAGS = tuple(
    int(tag_for_keyword(keyword) or 0)
    for keyword in C_STORE.REQUEST_KEYWORDS
    if keyword != "DataSet"
)


def _servable(message: Any, assoc: Any) -> bool:
    """Would pynetdicom pass this C-STORE to our handler? (as ``_serve_request`` decides)."""
    command = getattr(message, "command_set", None)
    if command is None:
        return False
    for tag in _REQUIRED_TAGS:  # by tag: a keyword lookup per element costs a tenth of a store
        element = command.get(tag)
        if element is None or element.value in (None, ""):
            return False
    try:
        sop_class = str(command[_SOP_CLASS_TAG].value)
        mapped = assoc.acceptor.accepted_common_extended.get(sop_class, (sop_class,))[0]
        return _is_storage(str(mapped))
    except Exception:  # a malformed UID, or an acceptor without negotiation results
        return False


@functools.lru_cache(maxsize=512)
def _is_storage(sop_class: str) -> bool:
    return issubclass(uid_to_service_class(sop_class), StorageServiceClass)


def discard_unarchived(assoc: Association | None) -> tuple[bool, int]:
    """Delete what an association received and did not archive: (partial?, complete count)."""
    if assoc is None:
        return False, 0
    message = getattr(getattr(assoc, "dimse", None), "message", None)
    partial = getattr(message, "_data_set_file", None)
    if partial is not None:
        _remove(partial, Path(partial.name))
    with _received_lock:
        paths = _received.pop(assoc, [])
    left = [path for path in paths if path.exists()]
    for path in left:
        _remove(None, path)
    return partial is not None, len(left)


def _remove(handle: Any, path: Path) -> None:
    if handle is not None:
        with contextlib.suppress(OSError):
            handle.close()
    with contextlib.suppress(OSError):
        os.unlink(path)


def _key(address: Any) -> tuple[str, int]:
    """A connection by its peer's address and port."""
    try:
        return str(address[0]), int(address[1])
    except (TypeError, ValueError, IndexError):
        return str(address), 0


def port_of(address: Any) -> int:
    """The port part of a socket address (0 if it has none)."""
    return _key(address)[1]


def host_of(address: Any) -> str:
    """The host part of a socket address, as logs and limits key peers."""
    return str(address[0]) if isinstance(address, tuple) and address else str(address)
