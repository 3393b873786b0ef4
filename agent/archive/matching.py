"""C-FIND attribute matching (PS3.4 C.2.2.2), one key at a time.

Each key becomes a ``Condition``: an SQL fragment where SQLite can decide it (and use an
index), a Python check on the stored text where it cannot (times, numbers, multi-valued
attributes, sequences), or nothing at all for universal matching. Choices the standard
leaves to us are documented in docs/conformance.md.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.archive import wildcard
from agent.archive.keys import normalize_pn
from agent.dicom.status import CANNOT_UNDERSTAND
from agent.errors import QueryError

WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
NUMERIC_VRS = frozenset({"IS", "DS"})

Check = Callable[[Any], bool]


@dataclass(frozen=True)
class Condition:
    """How one key restricts the answers: SQL where possible, else a check on the text."""

    sql: str | None = None
    params: tuple[Any, ...] = ()
    check: Check | None = None
    columns: tuple[str, ...] = field(default_factory=tuple)


def is_universal(value: str) -> bool:
    """Zero length, or a lone '*', matches everything, the empty and the absent too."""
    return value == "" or value == "*"


def has_wildcard(value: str) -> bool:
    """True if the value uses '*' or '?'."""
    return "*" in value or "?" in value


def glob_pattern(value: str) -> str:
    """A DICOM wildcard as an SQLite GLOB pattern: '[' is the only character to quote."""
    return value.replace("[", "[[]")


def values_of(stored: object) -> list[str]:
    """The values of a stored multi-valued text (empty list for absent or empty).

    Computed keys (counts) arrive from SQLite as integers: they are read as text too.
    """
    return [] if stored is None or stored == "" else str(stored).split("\\")


# -- text VRs ---------------------------------------------------------------------------


def text_condition(column: str, vr: str, value: str, *, multi_valued: bool) -> Condition:
    """Single value or wildcard matching for string VRs, case-sensitive (PN aside)."""
    uses_wildcard = vr in WILDCARD_VRS and has_wildcard(value)
    candidates = value.split("\\")
    if multi_valued or len(candidates) > 1:
        tests = [wildcard.matcher(v) if uses_wildcard else v.__eq__ for v in candidates]

        def check(stored: str | None) -> bool:
            return any(test(item) for item in values_of(stored) for test in tests)

        return Condition(check=check, columns=(column,))
    if uses_wildcard:
        return Condition(f"{column} GLOB ?", (glob_pattern(value),))
    return Condition(f"{column} = ?", (value,))


def person_name_condition(norm_column: str, value: str) -> Condition:
    """PN: matched case-insensitively on the normalised copy; trailing empties ignored."""
    wanted = normalize_pn(value) or ""  # a pattern is normalised like the stored copy
    if has_wildcard(value):
        return Condition(f"{norm_column} GLOB ?", (glob_pattern(wanted),))
    return Condition(f"{norm_column} = ?", (wanted,))


def uid_list_condition(column: str, value: str) -> Condition:
    """UI: a single UID or a backslash-separated list, any of which matches."""
    uids = [u.strip("\0 ") for u in value.split("\\") if u.strip("\0 ")]
    if not uids:
        return Condition()
    marks = ", ".join("?" for _ in uids)
    return Condition(f"{column} IN ({marks})", tuple(uids))


def numeric_condition(column: str, value: str) -> Condition:
    """IS/DS: compared as numbers, so '7', '07', '+7' and '7.0' are the same value."""
    try:
        wanted = [float(v) for v in value.split("\\")]
    except ValueError:
        raise QueryError(CANNOT_UNDERSTAND, f"{value!r} is not a number") from None

    def check(stored: str | None) -> bool:
        for item in values_of(stored):
            try:
                if float(item) in wanted:
                    return True
            except ValueError:
                continue
        return False

    return Condition(check=check, columns=(column,))


# -- dates and times ---------------------------------------------------------------------


def _split_range(value: str) -> tuple[str, str] | None:
    if value.count("-") != 1:
        return None
    low, high = value.split("-")
    return low.strip(), high.strip()


def parse_date(value: str) -> str:
    """A DA value as YYYYMMDD (the old YYYY.MM.DD form accepted); QueryError if invalid."""
    digits = value.replace(".", "").strip()
    try:
        dt.datetime.strptime(digits, "%Y%m%d")
    except ValueError:
        raise QueryError(CANNOT_UNDERSTAND, f"{value!r} is not a date (YYYYMMDD)") from None
    return digits


def date_condition(column: str, value: str) -> Condition:
    """DA: single value or inclusive range, open on either end; uses the date index."""
    bounds = _split_range(value)
    if bounds is None:
        return Condition(f"{column} = ?", (parse_date(value),))
    low, high = bounds
    if not low and not high:
        raise QueryError(CANNOT_UNDERSTAND, "a date range needs at least one end")
    parts, params = [], []
    if low:
        parts.append(f"{column} >= ?")
        params.append(parse_date(low))
    else:  # '' sorts below every date: an empty value is no date, so not "up to" one
        parts.append(f"{column} <> ''")
    if high:
        parts.append(f"{column} <= ?")
        params.append(parse_date(high))
    return Condition(" AND ".join(parts), tuple(params))


_TIME = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?$")
_DAY_US = 86_400_000_000


def time_span(value: str) -> tuple[int, int]:
    """A TM value as the microseconds [first, last] it covers at its precision."""
    match = _TIME.match(value.replace(":", "").strip())
    if match is None:
        raise QueryError(CANNOT_UNDERSTAND, f"{value!r} is not a time (HHMMSS.FFFFFF)")
    hours, minutes, seconds, fraction = match.groups()
    if int(hours) > 23 or int(minutes or 0) > 59 or int(seconds or 0) > 60:
        raise QueryError(CANNOT_UNDERSTAND, f"{value!r} is not a time of day")
    start = int(hours) * 3_600_000_000 + int(minutes or 0) * 60_000_000
    start += int(seconds or 0) * 1_000_000 + int((fraction or "0").ljust(6, "0"))
    if fraction is not None:
        width = 10 ** (6 - len(fraction))
    elif seconds is not None:
        width = 1_000_000
    elif minutes is not None:
        width = 60_000_000
    else:
        width = 3_600_000_000
    if start + width > _DAY_US + 1_000_000:  # 23:59:60 is allowed for leap seconds
        raise QueryError(CANNOT_UNDERSTAND, f"{value!r} is not a time of day")
    return start, start + width - 1


def span_check(parse: Callable[[str], tuple[Any, Any]], value: str) -> Check:
    """A check that a stored point falls in the query's single value or range."""
    bounds = _split_range(value)
    if bounds is None:
        low, high = parse(value)
    else:
        low = parse(bounds[0])[0] if bounds[0] else None
        high = parse(bounds[1])[1] if bounds[1] else None
        if low is None and high is None:
            raise QueryError(CANNOT_UNDERSTAND, "a range needs at least one end")

    def check(stored: str | None) -> bool:
        if not stored:
            return False
        try:
            point = parse(stored)[0]
        except QueryError:
            return False
        return (low is None or point >= low) and (high is None or point <= high)

    return check


def time_condition(column: str, value: str) -> Condition:
    """TM: parsed to times; '0830' means the whole minute, ranges are inclusive."""
    return Condition(check=span_check(time_span, value), columns=(column,))


_DATETIME = re.compile(
    r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?([+-]\d{4})?$"
)


def datetime_span(value: str) -> tuple[dt.datetime, dt.datetime]:
    """A DT value as the [first, last] instants it covers; a UTC offset is ignored."""
    match = _DATETIME.match(value.strip())
    if match is None:
        raise QueryError(CANNOT_UNDERSTAND, f"{value!r} is not a date-time")
    year, month, day, hour, minute, second, fraction, _offset = match.groups()
    try:
        start = dt.datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((fraction or "0").ljust(6, "0")),
        )
    except ValueError:
        raise QueryError(CANNOT_UNDERSTAND, f"{value!r} is not a date-time") from None
    return start, _end_of(start, (month, day, hour, minute, second, fraction))


def _end_of(start: dt.datetime, given: Sequence[str | None]) -> dt.datetime:
    month, day, hour, minute, second, fraction = given
    if fraction is not None:
        return start + dt.timedelta(microseconds=10 ** (6 - len(fraction)) - 1)
    step = {0: None, 1: "month", 2: "day", 3: "hour", 4: "minute", 5: "second"}
    precision = sum(1 for part in (month, day, hour, minute, second) if part is not None)
    if precision == 0:
        return start.replace(year=start.year + 1) - dt.timedelta(microseconds=1)
    if step[precision] == "month":
        following = start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
        return following - dt.timedelta(microseconds=1)
    width = {
        "day": dt.timedelta(days=1),
        "hour": dt.timedelta(hours=1),
        "minute": dt.timedelta(minutes=1),
        "second": dt.timedelta(seconds=1),
    }
    return start + width[str(step[precision])] - dt.timedelta(microseconds=1)


def datetime_condition(column: str, value: str) -> Condition:
    """DT: parsed to instants at their precision; ranges inclusive, open on either end."""
    return Condition(check=span_check(datetime_span, value), columns=(column,))


def combined_span(date: str, time: str | None) -> tuple[dt.datetime, dt.datetime]:
    """A DA plus an optional TM as one span (for combined date-time matching)."""
    day = parse_date(date)
    if not time:
        return datetime_span(day)
    first, last = time_span(time)
    midnight = dt.datetime.strptime(day, "%Y%m%d")
    return (midnight + dt.timedelta(microseconds=first), midnight + dt.timedelta(microseconds=last))


# -- unknown Required Keys (PS3.4 C.2.2.1.2) ---------------------------------------------


def or_unknown(condition: Condition, column: str) -> Condition:
    """A Required Key whose value the archive does not know matches anything.

    Unknown is a value held with zero length (stored as '') or an attribute the instance
    did not carry at all (stored as NULL): both say the same, so both match. The
    equivalence lives here, in the predicate, so rows written by any version match alike.
    """
    if condition.sql is not None:
        sql = f"(({condition.sql}) OR {column} = '' OR {column} IS NULL)"
        if condition.check is None:
            return Condition(sql, condition.params)
        # an SQL prefilter with a check: the check must let the unknown value through too
        return Condition(sql, condition.params, _unknown_or(condition.check), condition.columns)
    assert condition.check is not None
    return Condition(check=_unknown_or(condition.check), columns=condition.columns)


def _unknown_or(check: Check) -> Check:
    return lambda stored: stored is None or stored == "" or check(stored)


# -- sequences ---------------------------------------------------------------------------


def sequence_check(item_conditions: dict[str, Check]) -> Check:
    """SQ: an entity matches if any stored item matches every key of the query's item."""

    def check(stored: str | None) -> bool:
        try:
            items = json.loads(stored) if stored else []
        except ValueError:
            return False
        return any(all(ok(item.get(k)) for k, ok in item_conditions.items()) for item in items)

    return check


def text_check(vr: str, value: str) -> Check:
    """A pure-Python check for a sequence item's key (same rules as top-level keys)."""
    if vr == "PN":
        wanted = normalize_pn(value) or ""
        pattern = wildcard.matcher(wanted) if has_wildcard(value) else None

        def check(stored: str | None) -> bool:
            if not stored:
                return False
            folded = normalize_pn(stored) or ""
            return pattern(folded) if pattern is not None else folded == wanted

        return check
    condition = text_condition("item", vr, value, multi_valued=True)
    assert condition.check is not None
    return condition.check
