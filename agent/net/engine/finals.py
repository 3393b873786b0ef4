"""One final response per C-FIND, even when it is a Warning.

pynetdicom's C-FIND SCP sends a Warning status our handler yields (0xB001: the
fall-through peers' part is incomplete) and goes on, sending a Success of its own when
the handler ends: two final responses to one request. DCMTK's findscu then reads the
second as a stray P-DATA and fails to release the association. The Success that follows
a Warning C-FIND response on the same association is dropped here (pynetdicom sends it
at once, before the association's next request is read), so the Warning is the final.
tests/test_engine_contract.py checks that pynetdicom still behaves so.
"""

from __future__ import annotations

import weakref

from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_CANCEL, C_FIND, DIMSEPrimitive

SUCCESS = 0x0000
_GENERAL_WARNINGS = frozenset({0x0001, 0x0107, 0x0116})  # PS3.7 C.3.2

# providers whose last C-FIND response was a Warning: pynetdicom's Success follows
_warned: weakref.WeakSet[DIMSEServiceProvider] = weakref.WeakSet()


def is_warning(status: int) -> bool:
    """A Warning status (PS3.7 Annex C: 0x0001, 0x0107, 0x0116, 0xBxxx)."""
    return status in _GENERAL_WARNINGS or 0xB000 <= status <= 0xBFFF


def redundant(provider: DIMSEServiceProvider, primitive: DIMSEPrimitive | C_CANCEL) -> bool:
    """True for the Success pynetdicom sends after a Warning C-FIND response: not sent."""
    if not isinstance(primitive, C_FIND) or primitive.MessageIDBeingRespondedTo is None:
        return False
    status = primitive.Status
    warned = provider in _warned
    _warned.discard(provider)
    if status is not None and is_warning(int(status)):
        _warned.add(provider)
        return False
    return warned and status == SUCCESS
