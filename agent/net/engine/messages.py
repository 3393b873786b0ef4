"""DIMSE messages in fewer PDUs: a command and its data set share one P-DATA-TF.

pynetdicom sends every message as at least two PDUs, the command set and then the data
set, even when both together are a few hundred bytes (each C-FIND answer). PS3.8
lets one P-DATA-TF carry several PDVs; joining consecutive fragments while they fit
the peer's maximum PDU length halves the PDUs, system calls and wake-ups per answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from pynetdicom.dimse_messages import DIMSEMessage

PDV_ITEM_HEADER = 5  # 4-byte item length + presentation context ID; the value holds the rest

_original_encode: Callable[..., Iterator[Any]] = DIMSEMessage.encode_msg


def _size(pdata: Any) -> int:
    return sum(PDV_ITEM_HEADER + len(value) for _, value in pdata.presentation_data_value_list)


def encode_msg(self: Any, context_id: int, max_pdu_length: int) -> Iterator[Any]:
    """pynetdicom's fragments, joined into as few P-DATA primitives as the peer allows."""
    held: Any = None
    held_size = 0
    for pdata in _original_encode(self, context_id, max_pdu_length):
        size = _size(pdata)
        if held is not None and (max_pdu_length == 0 or held_size + size <= max_pdu_length):
            held.presentation_data_value_list.extend(pdata.presentation_data_value_list)
            held_size += size
            continue
        if held is not None:
            yield held
        held, held_size = pdata, size
    if held is not None:
        yield held
