"""DICOM statuses in words, with a hint for the mistakes field engineers meet most."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pynetdicom.status import (
    GENERAL_STATUS,
    QR_FIND_SERVICE_CLASS_STATUS,
    QR_GET_SERVICE_CLASS_STATUS,
    QR_MOVE_SERVICE_CLASS_STATUS,
    code_to_category,
)

from agent.dicom.status import MOVE_DESTINATION_UNKNOWN, NOT_AUTHORIZED, SOP_CLASS_NOT_SUPPORTED

_TABLES = {
    "find": QR_FIND_SERVICE_CLASS_STATUS,
    "move": QR_MOVE_SERVICE_CLASS_STATUS,
    "get": QR_GET_SERVICE_CLASS_STATUS,
}
HINTS = {
    MOVE_DESTINATION_UNKNOWN: "the peer does not know our AE title as a move destination: "
    "add it (with our host and port) to the peer's list of modalities, or use --get",
    SOP_CLASS_NOT_SUPPORTED: "the peer does not offer this information model: "
    "try another of -P, -S, -O",
    NOT_AUTHORIZED: "the peer does not let our AE title do this",
}


@dataclass(frozen=True)
class FinalStatus:
    """The final status of an operation, in words."""

    status: int
    category: str
    words: str
    comment: str | None = None

    @property
    def succeeded(self) -> bool:
        """Success, or a warning that still delivered the answer."""
        return self.category in ("Success", "Warning")

    def __str__(self) -> str:
        text = f"{self.words} (0x{self.status:04X})"
        if self.comment:
            text += f" ({self.comment})"
        hint = HINTS.get(self.status)
        return f"{text}; {hint}" if hint else text


def outcome_of(status: Any, service: str) -> FinalStatus:
    """The FinalStatus of a response status Dataset from a find, move or get."""
    code = int(status.Status)
    category = code_to_category(code)
    table = _TABLES[service]
    known = table.get(code) or GENERAL_STATUS.get(code)
    words = (known[1] if known else "") or _by_category(category)
    comment = status.get("ErrorComment")
    return FinalStatus(code, category, words, str(comment).strip() if comment else None)


def _by_category(category: str) -> str:
    return {"Failure": "unable to process", "Cancel": "cancelled"}.get(category, category.lower())


def no_final_status(
    service: str, waited: float, timeout: float, done: int | None, our_ae: str
) -> str:
    """Why a C-FIND, C-MOVE or C-GET ended without a final status, in words.

    ``waited``: seconds since the request (or the last response). A peer that ends the
    association before our ``timeout`` has refused the request without a status, as
    Orthanc does for a calling AE title it does not know; else it was silent too long.
    """
    after = "" if done is None else f" (after {done} instances)"
    if waited >= timeout:
        return f"no answer to the {service} within {timeout:g} s{after}: gave up and aborted"
    said = (
        f"the peer ended the association {waited:.1f} s after the {service}{after}, without"
        " a status (an A-ABORT, or the connection closed): it refused the request"
    )
    if done:
        return said
    return (
        f"{said}. Most PACSes do that to a calling AE title they do not know: add {our_ae}"
        " (with this box's address and port) to its list of modalities (Orthanc:"
        " DicomModalities), or see its log"
    )
