"""Coercion of one header by a peer's ``coerce`` rules: set, remove, copy, when the
header matches. Failures raise ValueError naming the rule (the caller quarantines)."""

from __future__ import annotations

from collections.abc import Iterator

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset

from agent.archive import wildcard
from agent.archive.keys import as_text
from agent.outgoing.settings import Coercion, Removal, Step


def applies(rules: Coercion, ds: Dataset, calling_ae: str) -> bool:
    """True if every ``match`` pattern matches (as forwarding rules match)."""
    for keyword, pattern in rules.match.items():
        value = calling_ae if keyword == "calling_ae" else _text(ds, keyword)
        if not wildcard.matches(pattern, value):
            return False
    return True


def coerce(rules: Coercion, ds: Dataset) -> None:
    """Apply ``copy`` (from the values as received), then ``set``, then ``remove``."""
    copied = [(c, _value_at(ds, c.source)) for c in rules.copy]
    for rule, found in copied:
        if found is not None:
            for item in _parents(ds, rule.target, rule.text):
                item.add_new(rule.target[-1].tag, dictionary_VR(rule.target[-1].tag), found)
    for assignment in rules.set:
        for item in _parents(ds, assignment.path, assignment.text):
            item.add_new(assignment.path[-1].tag, assignment.vr, assignment.value)
    for removal in rules.remove:
        for tag in list(_removed(ds, removal)):
            del ds[tag]


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else as_text(value)


def _parents(ds: Dataset, path: tuple[Step, ...], text: str) -> Iterator[Dataset]:
    """The datasets holding the path's last attribute; sequences on the way are made
    when absent (one item), an item index past the end is an error."""
    items = [ds]
    for step in path[:-1]:
        following: list[Dataset] = []
        for item in items:
            if step.tag not in item or item[step.tag].value is None:
                item.add_new(step.tag, "SQ", [Dataset()])
            sequence = item[step.tag].value
            if step.item is None:
                following.extend(sequence)
            elif step.item < len(sequence):
                following.append(sequence[step.item])
            else:
                raise ValueError(f"coerce {text}: item {step.item} of the sequence does not"
                                 f" exist (it has {len(sequence)})")
        items = following
    yield from items


def _value_at(ds: Dataset, path: tuple[Step, ...]) -> object:
    """The value at ``path`` (the first item where a step says every item), or None."""
    item = ds
    for step in path[:-1]:
        if step.tag not in item or not item[step.tag].value:
            return None
        sequence = item[step.tag].value
        index = step.item or 0
        if index >= len(sequence):
            return None
        item = sequence[index]
    found = item.get(path[-1].tag)
    return None if found is None else found.value


def _removed(ds: Dataset, removal: Removal) -> Iterator[int]:
    """The top-level tags a ``remove`` entry names."""
    if removal.element is None:
        yield from (int(t) for t in ds.keys() if t >> 16 == removal.group)  # noqa: SIM118
        return
    if not removal.private:
        tag = removal.group << 16 | removal.element
        if tag in ds:
            yield tag
        return
    for block in range(0x10, 0x100):
        creator = ds.get(removal.group << 16 | block)
        if creator is None:
            continue
        if removal.creator is not None and str(creator.value).strip() != removal.creator:
            continue
        tag = removal.group << 16 | block << 8 | removal.element
        if tag in ds:
            yield tag
