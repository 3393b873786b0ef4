"""Which of a patient's studies at the PACS are priors worth fetching: the rule's filter,
on the answers of a STUDY-level C-FIND. Pure functions of their arguments (the day
included), so that tests can hold any calendar.

A study is kept when:
- it is not the study that triggered the job, and the archive does not hold it;
- its modalities meet the rule's: ``"any"``; a list (one in common); ``"same"``: one in
  common with the trigger study's (unknown, as for a prefetch by hand: any);
- its StudyDate is within ``within_years`` of the reference day (a study without a
  readable date is left out: nobody can say it is recent). Dates after the reference
  day are within the window (a study dated by a modality whose clock runs ahead).

Kept studies go newest first (by date, then time), at most ``max_studies``; the
megabyte limit is counted on what actually lands (``agent.prefetch.job``).

The reference day is today by the system clock when it is trusted. When it is not (no
synchronisation, a date before the build, a jump: ``agent.timekeeping``), a window
measured from a wrong "today" would fetch everything or nothing, so the day comes from
the data instead: the trigger study's own date (the modality's clock, which dated the
study being read), else the newest StudyDate the PACS answered.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from agent.prefetch.settings import ANY, SAME, PrefetchRule

DAYS_PER_YEAR = 365.25


@dataclass(frozen=True)
class Candidate:
    """One study the PACS answered, as far as the filter needs it."""

    study_uid: str
    study_date: dt.date | None
    study_time: str = ""
    modalities: frozenset[str] = frozenset()
    instances: int | None = None  # NumberOfStudyRelatedInstances, if answered


def candidates(answers: Iterable[Dataset]) -> list[Candidate]:
    """The studies in C-FIND answers, each once (answers without a UID are dropped)."""
    found: dict[str, Candidate] = {}
    for answer in answers:
        uid = str(answer.get("StudyInstanceUID", "") or "").strip().rstrip("\0")
        if uid and uid not in found:
            found[uid] = Candidate(
                uid,
                parse_date(str(answer.get("StudyDate", "") or "")),
                str(answer.get("StudyTime", "") or "").strip(),
                frozenset(_codes(answer.get("ModalitiesInStudy"))),
                _number(answer.get("NumberOfStudyRelatedInstances")),
            )
    return list(found.values())


def choose(
    found: Sequence[Candidate],
    rule: PrefetchRule,
    *,
    trigger_study: str | None,
    trigger_modalities: Collection[str],
    held: Collection[str],
    today: dt.date,
    limit: int | None = None,
) -> list[Candidate]:
    """The priors to fetch, newest first, at most ``limit`` (default the rule's
    ``max_studies``)."""
    wanted = wanted_modalities(rule, trigger_modalities)
    oldest = today - dt.timedelta(days=rule.within_years * DAYS_PER_YEAR)
    kept = [
        c for c in found
        if c.study_uid != trigger_study
        and c.study_uid not in held
        and c.study_date is not None
        and c.study_date >= oldest
        and (wanted is None or bool(c.modalities & wanted))
    ]
    kept.sort(key=lambda c: (c.study_date or dt.date.min, c.study_time, c.study_uid),
              reverse=True)
    return kept[: rule.max_studies if limit is None else max(0, limit)]


def wanted_modalities(
    rule: PrefetchRule, trigger_modalities: Collection[str]
) -> frozenset[str] | None:
    """The modalities a prior must have one of; None: any."""
    if rule.modality == ANY:
        return None
    if rule.modality == SAME:
        same = frozenset(m.strip().upper() for m in trigger_modalities if m.strip())
        return same or None
    return frozenset(rule.modality)


def reference_day(
    trusted: bool, today: dt.date, trigger_date: str, found: Sequence[Candidate]
) -> dt.date:
    """The day the window is measured from: ``today`` while the clock is trusted; else
    the trigger study's date, else the newest date answered, else ``today`` anyway."""
    if trusted:
        return today
    from_trigger = parse_date(trigger_date)
    if from_trigger is not None:
        return from_trigger
    dates = [c.study_date for c in found if c.study_date is not None]
    return max(dates) if dates else today


def parse_date(text: str) -> dt.date | None:
    """A DICOM DA (YYYYMMDD, or the old YYYY.MM.DD), None if unreadable."""
    digits = text.strip().replace(".", "")
    try:
        return dt.datetime.strptime(digits, "%Y%m%d").date() if len(digits) == 8 else None
    except ValueError:
        return None


def _codes(value: object) -> list[str]:
    """A CS value (one, several, or none) as upper-case codes."""
    if value is None or value == "":
        return []
    items = [value] if isinstance(value, str) else list(value)  # type: ignore[call-overload]
    return [str(v).strip().upper() for v in items if str(v).strip()]


def _number(value: object) -> int | None:
    try:
        return int(str(value).strip()) if value not in (None, "") else None
    except ValueError:
        return None
