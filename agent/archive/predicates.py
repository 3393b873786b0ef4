"""From one identifier key to a matching Condition: picks the rule by VR (PS3.4 C.2.2.2)."""

from __future__ import annotations

from typing import Any

from pydicom.datadict import dictionary_VM

from agent.archive import matching as m
from agent.archive.keys import as_text
from agent.errors import QueryError


def is_multi_valued(keyword: str) -> bool:
    """True if the data dictionary allows more than one value."""
    return str(dictionary_VM(keyword)) != "1"


def condition_for(
    keyword: str, vr: str, value: Any, column: str, *, required: bool = False
) -> m.Condition | None:
    """The condition for one key, or None when it matches everything (universal).

    ``required``: a Required Key, which an entity matches whenever its value is unknown
    (held with zero length, or absent).
    """
    condition = _condition(keyword, vr, value, column)
    if condition is None or not required:
        return condition
    single_pn = vr == "PN" and not is_multi_valued(keyword)
    return m.or_unknown(condition, f"{column}_norm" if single_pn else column)


def _condition(keyword: str, vr: str, value: Any, column: str) -> m.Condition | None:
    if vr == "SQ":
        return sequence_condition(value, column)
    text = as_text(value).strip() if vr != "PN" else as_text(value).rstrip()
    if m.is_universal(text):
        return None
    multi = is_multi_valued(keyword)
    if vr == "UI":
        if multi:
            return m.text_condition(column, vr, text, multi_valued=True)
        return m.uid_list_condition(column, text)
    if vr == "PN":
        if multi:
            return m.Condition(check=pn_values_check(text), columns=(column,))
        return m.person_name_condition(f"{column}_norm", text)
    if vr == "DA":
        return m.date_condition(column, text)
    if vr == "TM":
        return m.time_condition(column, text)
    if vr == "DT":
        return m.datetime_condition(column, text)
    if vr in m.NUMERIC_VRS:
        return m.numeric_condition(column, text)
    return m.text_condition(column, vr, text, multi_valued=multi)


def pn_values_check(text: str) -> m.Check:
    """Multi-valued PN: any stored name matches any of the query's names."""
    wanted = [m.text_check("PN", v) for v in text.split("\\")]
    return lambda stored: any(ok(v) for v in m.values_of(stored) for ok in wanted)


def sequence_condition(value: Any, column: str) -> m.Condition | None:
    """SQ: the query's one item; an entity matches if any of its items matches all keys."""
    items = list(value or [])
    if not items:
        return None
    checks: dict[str, m.Check] = {}
    for element in items[0]:
        if not element.keyword or element.VR == "SQ":  # nested sequences are not matched
            continue
        text = as_text(element.value)
        if not m.is_universal(text):
            checks[element.keyword] = m.text_check(element.VR, text)
    if not checks:
        return None
    return m.Condition(check=m.sequence_check(checks), columns=(column,))


def combined_condition(date_column: str, time_column: str, date: str, time: str) -> m.Condition:
    """Study Date and Time as one range (combined date-time matching was negotiated).

    Both are Required Keys: an unknown (zero-length or absent) Study Date matches (PS3.4
    C.2.2.1.2), and an unknown Study Time leaves the whole day, which matches if it meets
    the range.
    """
    prefilter = m.or_unknown(m.date_condition(date_column, date), date_column)
    date_low, date_high = _ends(date)
    time_low, time_high = _ends(time)
    low = m.combined_span(date_low, time_low)[0] if date_low else None
    high = m.combined_span(date_high, time_high)[1] if date_high else None

    def check(stored: str | None) -> bool:
        day, _, clock = (stored or "").partition(" ")
        if day == "":
            return True
        try:
            first, last = m.combined_span(day, clock or None)
        except QueryError:
            return False
        point_low, point_high = (first, last) if not clock else (first, first)
        return (low is None or point_high >= low) and (high is None or point_low <= high)

    combined = f"{date_column} || ' ' || coalesce({time_column}, '')"
    return m.Condition(prefilter.sql, prefilter.params, check, (combined,))


def _ends(value: str) -> tuple[str, str]:
    if "-" in value:
        low, high = value.split("-", 1)
        return low.strip(), high.strip()
    return value, value
