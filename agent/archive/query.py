"""Query/retrieve over the index: identifiers in, answers or instances out.

``find`` turns a C-FIND identifier into one SQL statement (plus Python checks for what
SQLite cannot match) and streams answers from the cursor, so the first answer leaves
before the last is read. ``resolve`` turns a C-MOVE/C-GET identifier into instances.
Nothing here knows pynetdicom.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset

from agent.archive.answers import Returned, build_answer
from agent.archive.keys import (
    KEYS,
    REQUIRED_KEYS,
    STUDY_ROOT_PATIENT_KEYS,
    TABLES,
    UNIQUE_KEYS,
    as_text,
)
from agent.archive.matching import Condition, is_universal
from agent.archive.predicates import combined_condition, condition_for
from agent.dicom.models import LEVELS, Level, Model
from agent.dicom.status import DOES_NOT_MATCH
from agent.errors import QueryError

IGNORED = frozenset(
    {"QueryRetrieveLevel", "SpecificCharacterSet", "TimezoneOffsetFromUTC", "QueryRetrieveView"}
)
RETURN_ONLY = frozenset({"RetrieveAETitle", "InstanceAvailability"})
HELD_CHUNK = 500  # UIDs per statement (SQLite allows 32766 parameters; a query plan per size)


_ORDER = LEVELS
_FROM = {
    Level.PATIENT: "patients",
    Level.STUDY: "studies JOIN patients ON studies.patient_pk = patients.pk",
    Level.SERIES: "series JOIN studies ON series.study_pk = studies.pk"
    " JOIN patients ON studies.patient_pk = patients.pk",
    Level.IMAGE: "instances JOIN series ON instances.series_pk = series.pk"
    " JOIN studies ON series.study_pk = studies.pk"
    " JOIN patients ON studies.patient_pk = patients.pk",
}
_INSTANCES_OF_STUDY = (
    "instances i JOIN series se ON i.series_pk = se.pk WHERE se.study_pk = studies.pk"
)
_SERIES_OF_PATIENT = (
    "series se JOIN studies s ON se.study_pk = s.pk WHERE s.patient_pk = patients.pk"
)
COMPUTED: dict[str, tuple[Level, str]] = {
    "NumberOfPatientRelatedStudies": (
        Level.PATIENT,
        "(SELECT count(*) FROM studies s WHERE s.patient_pk = patients.pk)",
    ),
    "NumberOfPatientRelatedSeries": (Level.PATIENT, f"(SELECT count(*) FROM {_SERIES_OF_PATIENT})"),
    "NumberOfPatientRelatedInstances": (
        Level.PATIENT,
        "(SELECT count(*) FROM instances i JOIN series se ON i.series_pk = se.pk"
        " JOIN studies s ON se.study_pk = s.pk WHERE s.patient_pk = patients.pk)",
    ),
    "NumberOfStudyRelatedSeries": (
        Level.STUDY,
        "(SELECT count(*) FROM series se WHERE se.study_pk = studies.pk)",
    ),
    "NumberOfStudyRelatedInstances": (Level.STUDY, f"(SELECT count(*) FROM {_INSTANCES_OF_STUDY})"),
    "ModalitiesInStudy": (
        Level.STUDY,
        "(SELECT group_concat(m, '\\') FROM (SELECT DISTINCT se.Modality AS m FROM series se"
        " WHERE se.study_pk = studies.pk AND se.Modality <> '' ORDER BY m))",
    ),
    "SOPClassesInStudy": (
        Level.STUDY,
        "(SELECT group_concat(c, '\\') FROM (SELECT DISTINCT i.SOPClassUID AS c FROM"
        f" {_INSTANCES_OF_STUDY} ORDER BY c))",
    ),
    "NumberOfSeriesRelatedInstances": (
        Level.SERIES,
        "(SELECT count(*) FROM instances i WHERE i.series_pk = series.pk)",
    ),
}
_NATURAL = {key.keyword: key for keys in KEYS.values() for key in keys}


@dataclass
class Plan:
    """A C-FIND identifier compiled to SQL and checks."""

    model: Model
    level: Level
    returned: list[Returned] = field(default_factory=list)
    conditions: list[Condition] = field(default_factory=list)

    def sql(self) -> tuple[str, list[Any]]:
        """The SELECT statement and its parameters."""
        columns = [r.sql or "NULL" for r in self.returned]
        checked = [c for cond in self.conditions for c in cond.columns]
        where = [c.sql for c in self.conditions if c.sql]
        params = [p for c in self.conditions if c.sql for p in c.params]
        statement = f"SELECT {', '.join(columns + checked)} FROM {_FROM[self.level]}"
        if where:
            statement += " WHERE " + " AND ".join(where)
        return statement, params


def level_of(model: Model, keyword: str) -> Level | None:
    """The level a key belongs to in ``model`` (Study Root folds patients into studies)."""
    natural = (
        _NATURAL[keyword].level
        if keyword in _NATURAL
        else (COMPUTED[keyword][0] if keyword in COMPUTED else None)
    )
    if natural is Level.PATIENT and model is Model.STUDY_ROOT:
        return Level.STUDY
    return natural


def column_of(keyword: str) -> str:
    """The SQL expression for a key, in the joined query."""
    if keyword in COMPUTED:
        return COMPUTED[keyword][1]
    return f"{TABLES[_NATURAL[keyword].level]}.{keyword}"


def query_level(model: Model, identifier: Dataset) -> Level:
    """The identifier's Query/Retrieve Level; QueryError 0xA900 if missing or not in model."""
    value = str(identifier.get("QueryRetrieveLevel", "")).strip()
    try:
        level = Level(value)
    except ValueError:
        raise QueryError(DOES_NOT_MATCH, f"Query/Retrieve Level {value!r} is not valid") from None
    if level not in model.levels:
        raise QueryError(DOES_NOT_MATCH, f"level {level.value} is not in the {model.value} model")
    return level


def plan(model: Model, identifier: Dataset, *, combined_datetime: bool = False) -> Plan:
    """Compile an identifier; QueryError for a malformed one."""
    level = query_level(model, identifier)
    compiled = Plan(model, level)
    unique_above = {lvl: UNIQUE_KEYS[lvl] for lvl in model.levels[: model.levels.index(level)]}
    seen: set[str] = set()
    for element in identifier:
        keyword = keyword_for_tag(element.tag) if element.tag.group not in (0, 2) else ""
        if not keyword or keyword in IGNORED or element.tag.is_private:
            continue
        seen.add(keyword)
        _add_key(compiled, keyword, element.value, element.VR, unique_above)
    for lvl, keyword in unique_above.items():
        if keyword not in seen:
            raise QueryError(
                DOES_NOT_MATCH,
                f"{keyword}, the unique key of the {lvl.value}"
                " level, is required above the query level",
            )
    if UNIQUE_KEYS[level] not in seen:
        compiled.returned.append(_returned(UNIQUE_KEYS[level], None))
    if combined_datetime:
        _combine_study_date_time(compiled, identifier)
    return compiled


def _add_key(
    compiled: Plan, keyword: str, value: Any, vr: str, unique_above: dict[Level, str]
) -> None:
    model, level = compiled.model, compiled.level
    key_level = level_of(model, keyword)
    if keyword in RETURN_ONLY or key_level is None:
        compiled.returned.append(Returned(keyword, vr, None))
        return
    if _ORDER.index(key_level) > _ORDER.index(level):
        raise QueryError(DOES_NOT_MATCH, f"{keyword} is below the {level.value} query level")
    if key_level is not level:
        text = "" if vr == "SQ" else as_text(value).strip()
        if _asks_nothing(value, vr):
            # Orthanc and others send empty keys above the level: harmless, so answered
            # with the entity's value rather than refused (docs/conformance.md)
            compiled.returned.append(_returned(keyword, value))
            return
        if unique_above.get(key_level) != keyword:
            raise QueryError(
                DOES_NOT_MATCH,
                f"only unique keys may stand above the query level; {keyword} is not one",
            )
        if "\\" in text or "*" in text or "?" in text:
            raise QueryError(DOES_NOT_MATCH, f"{keyword} above the query level needs one value")
    compiled.returned.append(_returned(keyword, value))
    condition = condition_for(
        keyword,
        str(dictionary_VR(keyword)),
        value,
        column_of(keyword),
        required=is_required(model, key_level, keyword),
    )
    if condition is not None:
        compiled.conditions.append(condition)


def _asks_nothing(value: Any, vr: str) -> bool:
    """A universal key: empty, '*', or a sequence with no item or one empty item."""
    if vr == "SQ":
        items = list(value or [])
        return not items or (len(items) == 1 and all(e.is_empty for e in items[0]))
    return is_universal(as_text(value).strip())


def is_required(model: Model, level: Level, keyword: str) -> bool:
    """True for a Required Key of ``level`` in ``model`` (an unknown value matches)."""
    if model is Model.STUDY_ROOT and keyword in STUDY_ROOT_PATIENT_KEYS:
        return True
    return keyword in REQUIRED_KEYS[level]


def _returned(keyword: str, value: Any) -> Returned:
    vr = str(dictionary_VR(keyword))
    items: tuple[str, ...] = ()
    if vr == "SQ" and value:
        items = tuple(keyword_for_tag(e.tag) for e in value[0] if keyword_for_tag(e.tag))
    return Returned(keyword, vr, column_of(keyword), items)


def _combine_study_date_time(compiled: Plan, identifier: Dataset) -> None:
    """Replace separate StudyDate and StudyTime conditions by one date-time range."""
    date = str(identifier.get("StudyDate", "") or "")
    time = str(identifier.get("StudyTime", "") or "")
    if compiled.level is not Level.STUDY:
        return
    if is_universal(date) or is_universal(time):
        return
    kept = [
        c
        for c in compiled.conditions
        if not any(col.endswith((".StudyDate", ".StudyTime")) for col in c.columns)
        and not (c.sql or "").startswith("studies.StudyDate")
    ]
    kept.append(combined_condition("studies.StudyDate", "studies.StudyTime", date, time))
    compiled.conditions = kept


def find(
    conn: sqlite3.Connection,
    model: Model,
    identifier: Dataset,
    *,
    combined_datetime: bool = False,
    ae_title: str = "",
) -> Iterator[Dataset]:
    """Answers to a C-FIND, streamed from the index; QueryError before the first one."""
    compiled = plan(model, identifier, combined_datetime=combined_datetime)
    statement, params = compiled.sql()
    cursor = conn.execute(statement, params)
    return _answers(cursor, compiled, identifier, ae_title)


def _answers(
    cursor: sqlite3.Cursor, compiled: Plan, identifier: Dataset, ae_title: str
) -> Iterator[Dataset]:
    width = len(compiled.returned)
    checks = []
    position = width
    for condition in compiled.conditions:
        for _ in condition.columns:
            assert condition.check is not None
            checks.append((position, condition.check))
            position += 1
    charset = as_text(identifier.get("SpecificCharacterSet"))  # multi-valued: joined by "\\"
    for row in cursor:
        if all(check(row[i]) for i, check in checks):
            yield build_answer(
                compiled.level,
                compiled.returned,
                row[:width],
                identifier,
                charset=charset,
                ae_title=ae_title,
            )


@dataclass(frozen=True)
class StoredInstance:
    """An archived instance a retrieve will send."""

    path: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str


def resolve(conn: sqlite3.Connection, model: Model, identifier: Dataset) -> list[StoredInstance]:
    """The instances a C-MOVE or C-GET identifier names (unique keys only, PS3.4 C.4.2.2.1)."""
    level = query_level(model, identifier)
    where, params = [], []
    for element in identifier:
        keyword = keyword_for_tag(element.tag) if element.tag.group not in (0, 2) else ""
        if not keyword or keyword in IGNORED:
            continue
        key_level = level_of(model, keyword)
        if (
            key_level is None
            or UNIQUE_KEYS.get(key_level) != keyword
            or _ORDER.index(key_level) > _ORDER.index(level)
        ):
            raise QueryError(
                DOES_NOT_MATCH, f"{keyword} is not a unique key at or above the {level.value} level"
            )
        uids = [v.strip("\0 ") for v in as_text(element.value).split("\\") if v.strip("\0 ")]
        if not uids:
            raise QueryError(DOES_NOT_MATCH, f"{keyword} needs a value to retrieve")
        where.append(f"{column_of(keyword)} IN ({', '.join('?' for _ in uids)})")
        params += uids
    if UNIQUE_KEYS[level] not in {keyword_for_tag(e.tag) for e in identifier}:
        raise QueryError(
            DOES_NOT_MATCH,
            f"{UNIQUE_KEYS[level]} is required to retrieve at the {level.value} level",
        )
    statement = (
        f"SELECT instances.path, instances.SOPClassUID, instances.SOPInstanceUID,"
        f" instances.transfer_syntax FROM {_FROM[Level.IMAGE]}"
        f" WHERE {' AND '.join(where)} ORDER BY instances.pk"
    )
    return [StoredInstance(*row) for row in conn.execute(statement, params)]


def held(conn: sqlite3.Connection, sop_uids: Sequence[str]) -> list[StoredInstance]:
    """The archived instances among ``sop_uids``, in arrival order (a fall-through
    retrieve: which of the peer's instances the box already holds, and each pulled one)."""
    found: list[StoredInstance] = []
    for start in range(0, len(sop_uids), HELD_CHUNK):
        chunk = list(sop_uids[start:start + HELD_CHUNK])
        statement = (
            "SELECT path, SOPClassUID, SOPInstanceUID, transfer_syntax FROM instances"
            f" WHERE SOPInstanceUID IN ({', '.join('?' for _ in chunk)}) ORDER BY pk"
        )
        found += [StoredInstance(*row) for row in conn.execute(statement, chunk)]
    return found
