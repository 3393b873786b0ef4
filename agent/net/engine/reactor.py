"""An association thread that blocks on a wake-up instead of sleeping 1 ms a turn.

pynetdicom's association thread sleeps a millisecond, then looks at the DIMSE queue
without blocking, every turn, for as long as the association lives. Here it waits on
the DUL's ``wake_association`` event, which is set whenever the state machine acted
(a message completed, a release or abort arrived) and when a ``send_*`` call asks the
thread to park. The park handshake shares a lock with the look at the DIMSE queue, so
once ``send_*`` has asked, the thread can no longer take the response it waits for:
the race pynetdicom's flag handshake leaves open is closed by construction.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.association import Association

log = logging.getLogger(__name__)

IDLE_CHECK = 0.5  # seconds between looks at the network idle timer


class ParkingGate(threading.Event):
    """The association's ``_reactor_checkpoint``: clearing it wakes the thread to park."""

    lock: threading.Lock
    wake: threading.Event

    def clear(self) -> None:
        """Ask the association thread to park (a ``send_*`` is about to talk)."""
        with self.lock:
            super().clear()
        self.wake.set()

    def hold(self) -> None:
        """Stop the association thread taking messages, without waking it to park.

        Once this returns the thread can take no message (it looks at the DIMSE queue
        only under ``lock`` and with the gate set), so a sender need not wait for it.
        """
        with self.lock:
            super().clear()


def _gate_of(assoc: Association, wake: threading.Event) -> ParkingGate:
    """Turn the association's checkpoint into a ParkingGate, keeping the same object."""
    gate: Any = assoc._reactor_checkpoint  # pynetdicom's Event, made a ParkingGate in place
    gate.lock = threading.Lock()
    gate.wake = wake
    gate.__class__ = ParkingGate
    return gate  # type: ignore[no-any-return]


def run_reactor(assoc: Association) -> None:
    """Serve requests until the association ends (replaces ``Association._run_reactor``)."""
    wake = getattr(assoc.dul, "wake_association", None) or threading.Event()
    gate = _gate_of(assoc, wake)
    assoc._is_paused = False
    while not assoc._kill:
        wake.clear()
        if not gate.is_set():
            assoc._is_paused = True
            gate.wait()
            assoc._is_paused = False
            continue
        with gate.lock:
            context_id, msg = assoc.dimse.get_msg(block=False) if gate.is_set() else (None, None)
        if msg:
            assoc._serve_request(msg, cast(int, context_id))  # set with msg
            continue
        if _ended(assoc, gate):
            return
        wake.wait(IDLE_CHECK)


def _ended(assoc: Association, gate: ParkingGate) -> bool:
    """pynetdicom's checks after each turn: release, abort, a dead DUL, the idle timer."""
    if assoc.is_established and assoc.acse.is_release_requested():
        assoc.acse.send_release(is_response=True)
        assoc.is_released = True
        assoc.is_established = False
        evt.trigger(assoc, evt.EVT_RELEASED, {})
        assoc.kill()
        return True
    if assoc.acse.is_aborted():
        assoc.dul.receive_pdu(wait=False)
        assoc.is_aborted = True
        assoc.is_established = False
        evt.trigger(assoc, evt.EVT_ABORTED, {})
        assoc.kill()
        return True
    if not assoc.dul.is_alive():
        assoc.kill()
        return True
    if assoc.dul.idle_timer_expired():
        log.info("association idle past the network timeout: ending it")
        if assoc.network_timeout_response == "A-RELEASE":
            assoc._is_paused = True
            gate.wait()
            assoc.release()
            assoc._is_paused = False
        else:
            assoc.abort()
        assoc.kill()
        return True
    return False
