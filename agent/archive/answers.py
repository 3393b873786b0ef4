"""Building one C-FIND answer from a row of the index."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset

from agent.dicom.models import Level

UTF8 = "ISO_IR 192"
_INTEGER_VRS = frozenset({"US", "UL", "SS", "SL", "UV", "SV"})
_FLOAT_VRS = frozenset({"FL", "FD"})


@dataclass(frozen=True)
class Returned:
    """A key to put in every answer, and the SQL expression that yields it (if any)."""

    keyword: str
    vr: str
    sql: str | None
    item_keys: tuple[str, ...] = ()


def build_answer(
    level: Level,
    returned: Sequence[Returned],
    values: Sequence[Any],
    identifier: Dataset,
    *,
    charset: str,
    ae_title: str,
) -> Dataset:
    """An answer with every requested key (empty when unknown) in a fitting character set."""
    answer = Dataset()
    filled = [
        (spec, _fill(spec.keyword, value, ae_title))
        for spec, value in zip(returned, values, strict=True)
    ]
    chosen = choose_charset(charset, [v for _, v in filled])
    if chosen:
        answer.SpecificCharacterSet = chosen
    answer.QueryRetrieveLevel = level.value
    for spec, value in filled:
        tag = tag_for_keyword(spec.keyword)
        if tag is None:
            continue
        answer.add_new(tag, spec.vr, _convert(spec, value))
    return answer


def _fill(keyword: str, value: Any, ae_title: str) -> Any:
    if keyword == "RetrieveAETitle":
        return ae_title
    if keyword == "InstanceAvailability":
        return "ONLINE"
    return value


def choose_charset(requested: str, values: Sequence[Any]) -> str:
    """The query's character set if every value fits in it, else UTF-8."""
    texts = [v for v in values if isinstance(v, str) and not v.isascii()]
    if not texts:
        return requested
    terms = [t.strip() for t in requested.split("\\")]
    if requested and len(terms) == 1:
        try:
            codec = convert_encodings(terms)[0]
            for text in texts:
                text.encode(codec)
            return requested
        except (LookupError, UnicodeEncodeError, ValueError):
            pass
    return UTF8


def _convert(spec: Returned, value: Any) -> Any:
    if value is None or value == "":
        return [] if spec.vr == "SQ" else None
    if spec.vr == "SQ":
        return _items(spec.item_keys, value)
    if spec.vr in _INTEGER_VRS | _FLOAT_VRS:
        kind = int if spec.vr in _INTEGER_VRS else float
        numbers = [kind(v) for v in str(value).split("\\")]
        return numbers[0] if len(numbers) == 1 else numbers
    return str(value)


def _items(item_keys: Sequence[str], stored: str) -> list[Dataset]:
    """Sequence items from their JSON form, with the keys the query's item asked for."""
    items = []
    for stored_item in json.loads(stored):
        item = Dataset()
        for keyword in item_keys or stored_item.keys():
            tag = tag_for_keyword(keyword)
            if tag is not None:
                item.add_new(tag, dictionary_VR(keyword), stored_item.get(keyword) or None)
        items.append(item)
    return items
