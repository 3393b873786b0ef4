"""Identifiers from DCMTK-style keys: ``PatientName=DOE*``, ``(0010,0020)=123``, ``StudyDate``.

A key without ``=`` (or with an empty value) asks for that attribute back. Each level
has sensible default return keys; the unique keys of the levels above must be given,
as hierarchical query and retrieve require (PS3.4 C.4.1.2.1, C.4.2.2.1).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

from agent.archive.keys import UNIQUE_KEYS
from agent.dicom.models import Level, Model
from agent.errors import UsageError

_TAG = re.compile(r"^\(?([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)?$")
_NUMERIC = {
    "US": int,
    "UL": int,
    "SS": int,
    "SL": int,
    "UV": int,
    "SV": int,
    "FL": float,
    "FD": float,
}
_NOT_KEYS = frozenset({"QueryRetrieveLevel"})

DEFAULT_KEYS: dict[Level, tuple[str, ...]] = {
    Level.PATIENT: (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "NumberOfPatientRelatedStudies",
    ),
    Level.STUDY: (
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "StudyDescription",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedInstances",
        "StudyInstanceUID",
    ),
    Level.SERIES: (
        "SeriesNumber",
        "Modality",
        "SeriesDescription",
        "NumberOfSeriesRelatedInstances",
        "SeriesInstanceUID",
    ),
    Level.IMAGE: ("InstanceNumber", "SOPClassUID", "SOPInstanceUID"),
}
# Study Root has no patient level: the patient's attributes are study-level keys there
_STUDY_ROOT_PATIENT_KEYS = ("PatientName", "PatientID")
_ORDER = (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE)


@dataclass(frozen=True)
class Key:
    """One attribute of an identifier: its tag and the value given (empty: return it)."""

    tag: BaseTag
    value: str

    @property
    def keyword(self) -> str:
        """The attribute's keyword, or its tag when the dictionary has none."""
        return str(keyword_for_tag(self.tag) or f"({self.tag.group:04X},{self.tag.element:04X})")


@dataclass(frozen=True)
class FindRequest:
    """A C-FIND: model, level, and the keys given (defaults are added unless ``only``)."""

    model: Model = Model.STUDY_ROOT
    level: Level = Level.STUDY
    keys: tuple[Key, ...] = ()
    only: bool = False

    def returned(self) -> tuple[Key, ...]:
        """Every key of the identifier, in display order: defaults first, then the user's."""
        check_level(self.model, self.level)
        given = {key.tag: key for key in self.keys}
        defaults = () if self.only else default_keys(self.model, self.level)
        wanted = [Key(Tag(keyword), "") for keyword in defaults]
        for key in [*_unique_keys_above(self.model, self.level), *wanted, *self.keys]:
            given.setdefault(key.tag, key)
        order = list(dict.fromkeys(k.tag for k in [*wanted, *self.keys]))
        order += [t for t in given if t not in order]
        return tuple(given[tag] for tag in order)

    def identifier(self) -> Dataset:
        """The identifier to send; UsageError if a unique key above the level is missing."""
        keys = self.returned()
        _require_unique_above(self.model, self.level, keys, "query")
        return build(self.level, keys)


@dataclass(frozen=True)
class RetrieveRequest:
    """A C-MOVE or C-GET of a patient, a study or some of its series."""

    model: Model = Model.STUDY_ROOT
    keys: tuple[Key, ...] = ()
    series: tuple[str, ...] = field(default=())

    @property
    def level(self) -> Level:
        """The deepest level whose unique key was given."""
        given = {key.keyword for key in self.keys if key.value}
        if self.series:
            given.add("SeriesInstanceUID")
        deepest = [lvl for lvl in _ORDER if UNIQUE_KEYS[lvl] in given and lvl in self.model.levels]
        if not deepest:
            raise UsageError("say what to retrieve: -k StudyInstanceUID=UID (or PatientID with -P)")
        return deepest[-1]

    def identifier(self) -> Dataset:
        """The identifier: unique keys only, from the model's top down to the level."""
        level = self.level
        keys = [key for key in self.keys if key.keyword in UNIQUE_KEYS.values()]
        if self.series:
            keys.append(Key(Tag("SeriesInstanceUID"), "\\".join(self.series)))
        for key in self.keys:
            if key.keyword not in UNIQUE_KEYS.values():
                raise UsageError(f"{key.keyword}: only unique keys (patient ID and UIDs) retrieve")
        levels = self.model.levels
        wanted = {UNIQUE_KEYS[lvl] for lvl in levels[: levels.index(level) + 1]}
        chosen = [key for key in keys if key.keyword in wanted]
        _require_unique_above(self.model, level, chosen, "retrieve")
        return build(level, chosen)


def parse_key(text: str) -> Key:
    """``Keyword=Value``, ``(gggg,eeee)=Value`` or just the name; UsageError if unknown."""
    name, _, value = text.partition("=")
    name = name.strip()
    match = _TAG.match(name)
    if match:
        tag = Tag(int(match[1], 16), int(match[2], 16))
    else:
        number = tag_for_keyword(name)
        if number is None:
            raise UsageError(f"-k {text}: {name!r} is not a DICOM keyword or (gggg,eeee) tag")
        tag = Tag(number)
    if keyword_for_tag(tag) in _NOT_KEYS:
        raise UsageError(f"-k {text}: give the level with -L, not as a key")
    return Key(tag, value)


def parse_keys(texts: Sequence[str]) -> tuple[Key, ...]:
    """Every ``-k`` option, in order; a key given twice keeps its last value."""
    keys: dict[BaseTag, Key] = {}
    for text in texts:
        key = parse_key(text)
        keys.pop(key.tag, None)
        keys[key.tag] = key
    return tuple(keys.values())


def default_keys(model: Model, level: Level) -> tuple[str, ...]:
    """The keys asked for when the user names none: what a field engineer wants to see."""
    keys = DEFAULT_KEYS[level]
    if model is Model.STUDY_ROOT and level is Level.STUDY:
        keys = _STUDY_ROOT_PATIENT_KEYS + keys
    return keys


def check_level(model: Model, level: Level) -> None:
    """UsageError if the model has no such level."""
    if level not in model.levels:
        names = ", ".join(lvl.value for lvl in model.levels)
        raise UsageError(f"{model_name(model)} has no {level.value} level (it has {names})")


def model_name(model: Model) -> str:
    """The model as people say it."""
    return {
        Model.PATIENT_ROOT: "Patient Root",
        Model.STUDY_ROOT: "Study Root",
        Model.PATIENT_STUDY_ONLY: "Patient/Study Only",
    }[model]


def build(level: Level, keys: Sequence[Key]) -> Dataset:
    """A Dataset with Query/Retrieve Level and every key, values typed by their VR."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level.value
    for key in keys:
        vr = _vr_of(key)
        identifier.add_new(key.tag, vr, _typed(key, vr))
    if any(not v.isascii() for v in (key.value for key in keys)):
        identifier.SpecificCharacterSet = "ISO_IR 192"
    return identifier


def _vr_of(key: Key) -> str:
    try:
        return str(dictionary_VR(key.tag)).split(" or ")[0]
    except KeyError:
        return "LO"


def _typed(key: Key, vr: str) -> object:
    if vr == "SQ":
        if key.value:
            raise UsageError(f"-k {key.keyword}: a sequence can only be asked for, not matched")
        return []
    convert = _NUMERIC.get(vr)
    if convert is None or not key.value:
        return key.value
    try:
        return convert(key.value)
    except ValueError:
        raise UsageError(f"-k {key.keyword}={key.value}: {vr} needs a number") from None


def _unique_keys_above(model: Model, level: Level) -> list[Key]:
    levels = model.levels
    return [Key(Tag(UNIQUE_KEYS[lvl]), "") for lvl in levels[: levels.index(level)]]


def _require_unique_above(model: Model, level: Level, keys: Sequence[Key], what: str) -> None:
    """Hierarchical query/retrieve: every level above needs its unique key's value."""
    given = {key.keyword: key.value for key in keys}
    levels = model.levels
    for above in levels[: levels.index(level)]:
        keyword = UNIQUE_KEYS[above]
        if not given.get(keyword, "").strip() or "\\" in given[keyword] or "*" in given[keyword]:
            raise UsageError(
                f"to {what} at the {level.value} level in {model_name(model)}, give the "
                f"{above.value.lower()} it belongs to: -k {keyword}=VALUE (one value)"
            )
