"""The sd_notify protocol, spoken directly: READY, STATUS, WATCHDOG, RELOADING, STOPPING.

systemd hands a ``Type=notify`` service the address of a datagram socket in
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace) and, with
``WatchdogSec=``, the interval in ``$WATCHDOG_USEC``. Outside systemd there is no
socket and every call is a no-op. A failed send is logged at warning, once, and again
only after a send has worked: never swallowed, never a flood.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends state changes to the service manager named in the environment."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval = _watchdog_interval(env)
        self._socket: socket.socket | None = None
        self._failing = False

    @property
    def enabled(self) -> bool:
        """True when a service manager listens."""
        return self.address is not None

    def ready(self, status: str) -> None:
        """Startup is over: the listener is up."""
        self.send("READY=1", f"STATUS={status}")

    def status(self, text: str) -> None:
        """A one-line status for ``systemctl status``."""
        self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        """The loop that proves the agent works has just done so."""
        if self.watchdog_interval is not None:
            self.send("WATCHDOG=1")

    def reloading(self) -> None:
        """A reload starts; ``ready`` ends it."""
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={now_usec}")

    def stopping(self) -> None:
        """Shutdown has begun."""
        self.send("STOPPING=1", "STATUS=stopping")

    def send(self, *fields: str) -> bool:
        """One datagram of newline-separated fields; False (and a warning) if it failed."""
        if self.address is None:
            return False
        message = "\n".join(f.replace("\n", " ") for f in fields).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.sendto(message, self.address)
        except OSError as exc:
            if not self._failing:
                log.warning("cannot notify systemd at %s: %s", self.address, exc)
            self._failing = True
            return False
        if self._failing:
            log.info("notifying systemd works again")
        self._failing = False
        return True

    def close(self) -> None:
        """Drop the socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _address(value: str) -> str | bytes | None:
    """``/run/systemd/notify`` or ``@name`` (abstract namespace: a leading NUL byte)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    if value:
        log.warning("ignoring NOTIFY_SOCKET=%r: neither a path nor @abstract", value)
    return None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Seconds from ``WATCHDOG_USEC``, if the watchdog is meant for this process."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1e6
