"""Presentation contexts copied without ``copy.deepcopy`` walking every UID.

pynetdicom deep-copies the server's supported contexts for each association it accepts.
With every storage SOP class and its transfer syntaxes that is a walk over thousands
of UID strings: about 13 ms of one core per association, a twentieth of a 300-instance
C-GET, before the first byte of it. A context holds only immutable values (UIDs are
``str``, roles and results ``bool`` or ``int``) and lists of them, so a copy of those
lists is a deep copy; anything else in it is still deep-copied.
"""

from __future__ import annotations

import copy
from typing import Any

_IMMUTABLE = (str, int, float, bool, type(None))


def _copied(value: Any, memo: dict[int, Any]) -> Any:
    if isinstance(value, _IMMUTABLE):
        return value
    if isinstance(value, list) and all(isinstance(item, _IMMUTABLE) for item in value):
        return list(value)
    return copy.deepcopy(value, memo)


def copy_context(self: Any, memo: dict[int, Any]) -> Any:
    """``PresentationContext.__deepcopy__``: a deep copy, in a fraction of the time."""
    copied: Any = object.__new__(type(self))
    memo[id(self)] = copied
    copied.__dict__.update({name: _copied(value, memo) for name, value in vars(self).items()})
    return copied
