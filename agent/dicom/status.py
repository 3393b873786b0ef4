"""DIMSE status codes by name (PS3.7 Annex C, PS3.4 for each service), and their classes.

One code can mean different things in different services (0xB000 is "coercion of data
elements" for C-STORE and "sub-operations complete, one or more failures" for C-MOVE and
C-GET): each name here says which meaning it carries.
"""

from __future__ import annotations

SUCCESS = 0x0000

# pending: C-FIND matches, C-MOVE/C-GET sub-operation progress
PENDING = 0xFF00
PENDING_OPTIONAL_KEYS_UNSUPPORTED = 0xFF01  # C-FIND: a match, some optional keys ignored
PENDING_STATUSES = (PENDING, PENDING_OPTIONAL_KEYS_UNSUPPORTED)

CANCELLED = 0xFE00

# warnings
SUB_OPERATIONS_FAILED = 0xB000  # C-MOVE/C-GET: complete, one or more sub-operations failed
MATCHES_MAY_BE_MISSING = 0xB001  # C-FIND: done, a later request may return more matches

# failures, general (PS3.7 C.5)
PROCESSING_FAILURE = 0x0110  # also a Storage Commitment failure reason (PS3.4 J.3.2)
NO_SUCH_OBJECT_INSTANCE = 0x0112  # Storage Commitment: the SCP does not hold it
SOP_CLASS_NOT_SUPPORTED = 0x0122
NOT_AUTHORIZED = 0x0124
# N-ACTION failures (PS3.7 C.4.3) for a Storage Commitment request we cannot take
NO_SUCH_ACTION_TYPE = 0x0123
INVALID_ARGUMENT_VALUE = 0x0115  # also: a Transaction UID or a referenced UID missing
NO_SUCH_SOP_CLASS = 0x0118
PROCESSING_FAILURE = 0x0110
# Storage Commitment Failure Reason (PS3.4 J.3.3.1.1, one per failed instance); 0x0110 too
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
DUPLICATE_TRANSACTION_UID = 0x0131
# N-CREATE and N-SET failures (PS3.7 C.4.2 and C.4.3), as the MPPS SCP answers them
# (PS3.4 F.7.2); each with an Error Comment naming what is wrong
NO_SUCH_ATTRIBUTE = 0x0105  # N-SET: an attribute the SCU may not set (Table F.7.2-1)
INVALID_ATTRIBUTE_VALUE = 0x0106  # N-CREATE status not IN PROGRESS; N-SET an unknown status
DUPLICATE_SOP_INSTANCE = 0x0111  # N-CREATE: that SOP Instance UID exists already
MISSING_ATTRIBUTE = 0x0120  # a Type 1 attribute absent
MISSING_ATTRIBUTE_VALUE = 0x0121  # a Type 1 attribute present but empty
# N-SET of a step no longer IN PROGRESS: 0x0110 with this Error ID (0000,0903) and
# Error Comment (PS3.4 F.7.2.2.4)
MAY_NO_LONGER_BE_UPDATED = 0xA710
MAY_NO_LONGER_BE_UPDATED_COMMENT = "Performed Procedure Step Object may no longer be updated"
# failures, service-specific (PS3.4 Annex B and C)
OUT_OF_RESOURCES = 0xA700
# C-MOVE/C-GET (PS3.4 C.4.2.1.4, C.4.3.1.4): no sub-operation could be performed (a move
# destination we know but cannot reach); 0xA801 is only for a destination we do not know
SUB_OPERATIONS_REFUSED = 0xA702
CANNOT_COUNT_MATCHES = 0xA701  # C-MOVE/C-GET: out of resources, unable to calculate the matches
MOVE_DESTINATION_UNKNOWN = 0xA801
DOES_NOT_MATCH = 0xA900  # C-STORE: data set does not match SOP class; Q/R: identifier
CANNOT_UNDERSTAND = 0xC000  # C-STORE: cannot understand; Q/R: unable to process


def is_pending(code: int) -> bool:
    """A pending status: more responses follow."""
    return code in PENDING_STATUSES


def is_warning(code: int) -> bool:
    """A warning: the operation was done, with a remark (0x0001, 0x0107, 0x0116, 0xBxxx)."""
    return code in (0x0001, 0x0107, 0x0116) or code & 0xF000 == 0xB000


def is_out_of_resources(code: int) -> bool:
    """Any 0xA7xx: the peer may succeed later."""
    return code & 0xFF00 == OUT_OF_RESOURCES


def is_refusal(code: int) -> bool:
    """A failure that will fail again: 0xA9xx, 0xCxxx, SOP class not supported, not authorized."""
    return (
        code & 0xFF00 == DOES_NOT_MATCH
        or code & 0xF000 == CANNOT_UNDERSTAND
        or code in (SOP_CLASS_NOT_SUPPORTED, NOT_AUTHORIZED)
    )
