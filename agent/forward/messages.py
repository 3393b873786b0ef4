"""What the agent's process and the forwarding process say to each other over their pipe.

Each message is a frozen dataclass (as h11's events are), in one of two unions: ``ToWorker``
(the agent's process to the forwarding process) and ``ToAgent`` (back). Each side reads
with ``decode``, which never raises: a frame that does not unpickle, or holds anything but a
message of its direction, is returned as ``Unreadable`` for the reader to log and skip, so one
bad message cannot end the link. The readers dispatch with ``match`` and ``assert_never``:
a new message kind that one side does not handle fails mypy, not the box.

The encoding is pickle over a socketpair only these two processes hold (the forwarding
process is our own interpreter, started with that socket), so it carries a ``Config`` whole.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from agent.config import Config


def assert_never(message: NoReturn) -> NoReturn:
    """The end of a ``match`` over a union: mypy fails if a kind is left unhandled there.
    (``typing.assert_never`` is Python 3.11's; the box may run 3.10.)"""
    raise AssertionError(f"message not handled: {message!r}")


# -- to the forwarding process -------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """The first message: what to run, where the archive is, and how much to log."""

    config: Config
    root: Path
    log_level: int


@dataclass(frozen=True)
class Wake:
    """New jobs for these destinations (every one woken since the last wake)."""

    destinations: tuple[str, ...]


@dataclass(frozen=True)
class Reconfigure:
    """Deliver by a reloaded configuration from now on."""

    config: Config


@dataclass(frozen=True)
class Stop:
    """Finish what is in flight, stop the senders, say ``Stopped`` and exit."""


@dataclass(frozen=True)
class ClockTrust:
    """Whether the agent's clock judge trusts the system clock (send windows need it)."""

    trusted: bool


ToWorker = Start | Wake | Reconfigure | Stop | ClockTrust

# -- to the agent's process ----------------------------------------------------------------


@dataclass(frozen=True)
class Forwarded:
    """An instance reached ``destination``; its C-STORE took ``seconds``."""

    destination: str
    seconds: float | None = None


@dataclass(frozen=True)
class Failed:
    """An attempt to deliver to ``destination`` failed."""

    destination: str
    error: str


@dataclass(frozen=True)
class DestinationState:
    """``name`` is up (all None), or down since then, for this reason, probed next then."""

    name: str
    down_since: float | None
    error: str | None
    next_probe: float | None


@dataclass(frozen=True)
class Throttled:
    """Writes to ``destination`` wait for its bandwidth cap now (or no longer do)."""

    destination: str
    throttled: bool


@dataclass(frozen=True)
class Alive:
    """The forwarding process's heartbeat: it works, with senders for these destinations."""

    senders: tuple[str, ...]


@dataclass(frozen=True)
class LogRecord:
    """A log record of the forwarding process (``logging.LogRecord.__dict__``, formatted)."""

    fields: dict[str, Any]


@dataclass(frozen=True)
class Stopped:
    """The senders have stopped; the process exits next."""


ToAgent = Forwarded | Failed | DestinationState | Alive | LogRecord | Stopped | Throttled


@dataclass(frozen=True)
class Unreadable:
    """A frame that was not a message of the expected direction, and why (for the log)."""

    why: str


def encode(message: ToWorker | ToAgent) -> bytes:
    """One message as the bytes of one frame."""
    return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def decode_to_worker(frame: bytes) -> ToWorker | Unreadable:
    """A frame the agent's process sent, or why it is not a message to the worker."""
    message = _unpickle(frame)
    if isinstance(message, (Start, Wake, Reconfigure, Stop, ClockTrust, Unreadable)):
        return message
    return _unknown(message)


def decode_to_agent(frame: bytes) -> ToAgent | Unreadable:
    """A frame the forwarding process sent, or why it is not a message to the agent."""
    message = _unpickle(frame)
    if isinstance(message, (Forwarded, Failed, DestinationState, Alive, LogRecord, Stopped,
                            Throttled, Unreadable)):
        return message
    return _unknown(message)


def _unpickle(frame: bytes) -> object:
    try:
        return pickle.loads(frame)
    except Exception as exc:  # a frame that is no pickle can raise almost anything
        return Unreadable(f"not a message ({type(exc).__name__})")


def _unknown(thing: object) -> Unreadable:
    return Unreadable(f"an unknown message ({type(thing).__name__})")
