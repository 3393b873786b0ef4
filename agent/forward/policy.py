"""What a forwarding outcome means: delivered, try again later, or give up (quarantine).

The table follows DICOM-NOTES: success and warnings are delivered; 0xA7xx, refused
connections, aborts, timeouts and transient rejections are transient; 0xA9xx, 0xCxxx,
0x0122, 0x0124, permanent rejections and unacceptable contexts are permanent.
"""

from __future__ import annotations

import random
from enum import Enum

from agent.dicom.status import SUCCESS, is_out_of_resources, is_refusal, is_warning
from agent.forward.settings import ForwardSettings


class Delivery(str, Enum):
    """How one attempt to deliver an instance ended."""

    DELIVERED = "delivered"
    DELIVERED_WITH_WARNING = "delivered with warning"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


def classify_status(status: int) -> Delivery:
    """The outcome of a C-STORE response status."""
    if status == SUCCESS:
        return Delivery.DELIVERED
    if is_warning(status):
        return Delivery.DELIVERED_WITH_WARNING
    if is_out_of_resources(status):
        return Delivery.TRANSIENT
    if is_refusal(status):
        return Delivery.PERMANENT
    return Delivery.TRANSIENT  # unknown statuses: keep the data and try again


def retry_delay(attempts: int, settings: ForwardSettings, rng: random.Random) -> float:
    """Exponential backoff with ±20 % jitter: first delay, doubling, capped."""
    base = min(settings.retry_max, settings.retry_first * 2 ** max(0, attempts - 1))
    return float(base * rng.uniform(0.8, 1.2))


def gives_up(outcome: Delivery, attempts: int, settings: ForwardSettings) -> bool:
    """True when a failed job should be quarantined after ``attempts`` tries."""
    return outcome is Delivery.PERMANENT and attempts >= settings.permanent_tries
