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

from agent.dicom.status import SUCCESS, is_warning

# providers whose last C-FIND response was a Warning: pynetdicom's Success follows
_warned: weakref.WeakSet[DIMSEServiceProvider] = weakref.WeakSet()


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
