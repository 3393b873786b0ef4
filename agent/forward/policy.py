"""What a forwarding outcome means: delivered, try again later, or give up (quarantine).

The table follows DICOM-NOTES: success and warnings are delivered; 0xA7xx, refused
connections, aborts, timeouts and transient rejections are transient; 0xA9xx, 0xCxxx,
0x0122, 0x0124, permanent rejections and unacceptable contexts are permanent.
"""

from __future__ import annotations

import random
from enum import Enum

from agent.forward.settings import ForwardSettings


class Outcome(str, Enum):
    """How one attempt to deliver an instance ended."""

    DELIVERED = "delivered"
    DELIVERED_WITH_WARNING = "delivered with warning"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


def classify_status(status: int) -> Outcome:
    """The outcome of a C-STORE response status."""
    if status == 0x0000:
        return Outcome.DELIVERED
    if status & 0xF000 == 0xB000:
        return Outcome.DELIVERED_WITH_WARNING
    if status & 0xFF00 == 0xA700:
        return Outcome.TRANSIENT
    if status & 0xFF00 == 0xA900 or status & 0xF000 == 0xC000 or status in (0x0122, 0x0124):
        return Outcome.PERMANENT
    return Outcome.TRANSIENT  # unknown statuses: keep the data and try again


def classify_rejection(result: int) -> Outcome:
    """An A-ASSOCIATE-RJ: result 1 is permanent, 2 transient."""
    return Outcome.PERMANENT if result == 1 else Outcome.TRANSIENT


def retry_delay(attempts: int, settings: ForwardSettings, rng: random.Random) -> float:
    """Exponential backoff with ±20 % jitter: first delay, doubling, capped."""
    base = min(settings.retry_max, settings.retry_first * 2 ** max(0, attempts - 1))
    return float(base * rng.uniform(0.8, 1.2))


def gives_up(outcome: Outcome, attempts: int, settings: ForwardSettings) -> bool:
    """True when a failed job should be quarantined after ``attempts`` tries."""
    return outcome is Outcome.PERMANENT and attempts >= settings.permanent_tries
