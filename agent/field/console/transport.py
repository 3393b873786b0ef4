"""The serial port: open it (waiting until it exists), read in a thread, reopen when lost.

Modelled on pyserial's ``serial.threaded.ReaderThread``: one reader thread, one error
path (any SerialException or OSError, on read or on write, closes the port and the reader
goes back to waiting for it), and writes under a lock. A USB gadget port or USB-serial
adapter that disappears and comes back is simply opened again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import serial

from agent import threads

log = logging.getLogger(__name__)

RETRY_EVERY = 1.5
READ_TIMEOUT = 2.0  # only how often the reader looks up; close() cancels the read
WRITE_TIMEOUT = 5.0
JOIN_TIMEOUT = 5.0

Opener = Callable[[str, int], Any]


def open_port(device: str, baud: int) -> Any:
    """Open a serial port 8N1, raw, with read and write timeouts."""
    return serial.Serial(device, baud, timeout=READ_TIMEOUT, write_timeout=WRITE_TIMEOUT)


class SerialTransport(threads.Worker):
    """A serial port kept open by a reader thread; ``on_data`` runs in that thread."""

    def __init__(
        self,
        device: str,
        baud: int,
        *,
        on_connect: Callable[[], None],
        on_data: Callable[[bytes], None],
        retry_every: float = RETRY_EVERY,
        opener: Opener = open_port,
    ) -> None:
        super().__init__("serial-console", JOIN_TIMEOUT)
        self.device = device
        self.baud = baud
        self._on_connect = on_connect
        self._on_data = on_data
        self._retry_every = retry_every
        self._opener = opener
        self._port: Any = None
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._heard = True  # data arrived since the last loss was logged

    @property
    def connected(self) -> bool:
        """True while the port is open."""
        return self._connected.is_set()

    def close(self, timeout: float | None = None) -> None:
        """Stop the reader thread and close the port."""
        super().close(timeout)
        self._drop()

    def _interrupt(self) -> None:
        """The reader may be in a read: cancel it."""
        port = self._port
        if port is not None:
            try:
                port.cancel_read()
            except Exception:  # the port may already be half-closed; closing follows anyway
                log.debug("cancel_read failed", exc_info=True)

    def __enter__(self) -> SerialTransport:
        """Start the reader thread (it opens the port as soon as the device exists)."""
        self.start()
        return self

    def write(self, data: bytes) -> None:
        """Send bytes; a failure closes the port (the reader then reconnects)."""
        with self._lock:
            port = self._port
            if port is None:
                return
            try:
                port.write(data)
            except (serial.SerialException, OSError) as exc:
                log.debug("console write failed: %s", exc)
                self._close_port()

    def run(self) -> None:
        """Open, read until the port fails, repeat until closed."""
        while not self.stopping:
            if not self._open():
                return
            try:
                self._on_connect()
                self._read_until_lost()
            except (serial.SerialException, OSError) as exc:
                if not self.stopping:
                    self._log_loss(exc)
            finally:
                self._drop()

    def _log_loss(self, exc: Exception) -> None:
        """Warn once per loss, not again for a port that keeps failing with nobody typing."""
        level = logging.WARNING if self._heard else logging.DEBUG
        log.log(level, "console %s lost (%s); waiting for it to return", self.device, exc)
        self._heard = False

    def _open(self) -> bool:
        """Open the port, retrying every few seconds; False once closed."""
        logged = False
        while not self.stopping:
            try:
                port = self._opener(self.device, self.baud)
            except (serial.SerialException, OSError, ValueError) as exc:
                if not logged:
                    log.warning("console %s not available (%s); waiting for it", self.device, exc)
                    logged = True
                self.rest(self._retry_every)
                continue
            with self._lock:
                self._port = port
            self._connected.set()
            log.info("console on %s at %d baud", self.device, self.baud)
            return True
        return False

    def _read_until_lost(self) -> None:
        while not self.stopping:
            port = self._port
            if port is None:
                raise serial.SerialException("closed after a failed write")
            data = port.read(max(1, port.in_waiting))
            if data:
                self._heard = True
                self._on_data(data)

    def _drop(self) -> None:
        with self._lock:
            self._close_port()

    def _close_port(self) -> None:
        """Close the port (the caller holds the lock)."""
        port, self._port = self._port, None
        self._connected.clear()
        if port is not None:
            try:
                port.close()
            except Exception:  # closing a vanished device can fail; it is gone either way
                log.debug("closing the console port failed", exc_info=True)
