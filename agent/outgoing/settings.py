"""What a destination receives instead of the file as stored (issue 25): a peer's
``[peers.X.coerce]`` table and its de-identification keys, validated at load.

```toml
[peers.PACS.coerce]
set = { InstitutionName = "Radiology Room 2",
        "RequestAttributesSequence[0].RequestedProcedureID" = "RP1" }
remove = ["OperatorsName", "(0009,xx10)", "(0019,xx10,SIEMENS CT VA0  COAD)", "(0029,xxxx)"]
copy = { AccessionNumber = "StudyID" }     # AccessionNumber takes StudyID's value
match = { Modality = "CT" }                # only instances whose header matches (wildcards)

[peers.RESEARCH]
deidentify = "basic"                       # PS3.15 Annex E Basic Profile
deidentify_options = ["retain-longitudinal-modified-dates", "retain-device-identity"]
allow_burned_in = false                    # true: secondary capture, US... go as well

[[forward.rules]]                          # a rule's coerce: for its destinations, when
to = ["PACS"]                              # its match holds (after the peer's own)
match = { calling_ae = "CT2" }
coerce = { set = { StationName = "CT2" } }
```

Paths: a keyword, or sequence steps ``Seq[0].Keyword`` (one item) or ``Seq[*].Keyword``
(every item). ``remove``: a keyword, a tag ``(gggg,eeee)``, a private element in any
block ``(gggg,xxee)`` or in its creator's ``(gggg,xxee,CREATOR)``, a whole group
``(gggg,xxxx)``. Every error names its key: an unknown keyword, a value not fitting the
attribute's VR.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Annotated, Any

from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.valuerep import validate_value

from agent import validation as v
from agent.errors import ConfigError
from agent.reloading import LIVE

KEYS = frozenset({"coerce", "deidentify", "deidentify_options", "allow_burned_in"})
PROFILES = ("basic",)
OPTIONS = (
    "retain-longitudinal-modified-dates",
    "retain-patient-characteristics",
    "retain-device-identity",
    "retain-institution-identity",
    "retain-uids",
)
PIXEL_DATA = 0x7FE00010
_STEP = re.compile(r"^([A-Za-z0-9]+)(?:\[(\d+|\*)\])?$")
_TAG = re.compile(
    r"^\(([0-9A-Fa-f]{4}),(xx|XX|[0-9A-Fa-f]{2})([0-9A-Fa-f]{2}|xx|XX)(?:,([^)]+))?\)$")


@dataclass(frozen=True)
class Step:
    """One step of a path: an attribute, and for a sequence on the way, which item
    (None: every item)."""

    tag: Annotated[int, LIVE]
    item: Annotated[int | None, LIVE] = None


@dataclass(frozen=True)
class Assignment:
    """``set``: the attribute at ``path`` takes ``value`` (its VR the dictionary's)."""

    path: Annotated[tuple[Step, ...], LIVE]
    vr: Annotated[str, LIVE]
    value: Annotated[Any, LIVE]
    text: Annotated[str, LIVE] = ""  # the path as written, for messages


@dataclass(frozen=True)
class Removal:
    """``remove``: a tag, a private element (any block, or its creator's), or a group."""

    group: Annotated[int, LIVE]
    element: Annotated[int | None, LIVE]  # None: the whole group
    private: Annotated[bool, LIVE] = False  # element is the low byte in a private block
    creator: Annotated[str | None, LIVE] = None
    text: Annotated[str, LIVE] = ""


@dataclass(frozen=True)
class Copy:
    """``copy``: the attribute at ``target`` takes the value at ``source``."""

    target: Annotated[tuple[Step, ...], LIVE]
    source: Annotated[tuple[Step, ...], LIVE]
    text: Annotated[str, LIVE] = ""


@dataclass(frozen=True)
class Coercion:
    """A peer's ``coerce`` table."""

    set: Annotated[tuple[Assignment, ...], LIVE] = ()
    remove: Annotated[tuple[Removal, ...], LIVE] = ()
    copy: Annotated[tuple[Copy, ...], LIVE] = ()
    match: Annotated[Mapping[str, str], LIVE] = field(default_factory=dict)


@dataclass(frozen=True)
class Outgoing:
    """How the copy a destination receives differs from the archived file."""

    coerce: Annotated[Coercion | None, LIVE] = None
    # [[forward.rules]] naming this peer with a coerce table: each with the rule's match
    rules: Annotated[tuple[Coercion, ...], LIVE] = ()
    deidentify: Annotated[str, LIVE] = ""  # "" (none) or "basic"
    deidentify_options: Annotated[frozenset[str], LIVE] = frozenset()
    allow_burned_in: Annotated[bool, LIVE] = False


def split_outgoing(
    table: Mapping[str, Any], where: str
) -> tuple[Outgoing | None, Mapping[str, Any]]:
    """A peer's outgoing settings (None if it has none) and its table without their keys,
    for the peer's own parser (which rejects keys it does not know)."""
    rest = {key: value for key, value in table.items() if key not in KEYS}
    if len(rest) == len(table):
        return None, table
    coerce = _coercion(table["coerce"], f"{where}.coerce") if "coerce" in table else None
    profile = v.get(table, f"{where}.deidentify", str, "", v.one_of(PROFILES))
    options = v.get(table, f"{where}.deidentify_options", list, [], None)
    for option in options:
        if option not in OPTIONS:
            v.problem(ConfigError(f"{where}.deidentify_options",
                                  f"{option!r} is not one of {', '.join(OPTIONS)}"))
    if options and not profile:
        v.problem(ConfigError(f"{where}.deidentify_options", 'needs deidentify = "basic"'))
    outgoing = Outgoing(
        coerce=coerce,
        deidentify=profile,
        deidentify_options=frozenset(o for o in options if o in OPTIONS),
        allow_burned_in=v.get(table, f"{where}.allow_burned_in", bool, False, None),
    )
    return outgoing, rest


def rule_coercion(rule: Mapping[str, Any], where: str) -> Coercion | None:
    """A ``[[forward.rules]]`` entry's ``coerce`` table, its match the rule's (and its own)."""
    if "coerce" not in rule:
        return None
    found = _coercion(rule["coerce"], f"{where}.coerce")
    match = rule.get("match", {})
    return replace(found, match={**(match if isinstance(match, dict) else {}), **found.match})


def with_rule_coercions(peers: Mapping[str, Any], rules: Iterable[Any]) -> dict[str, Any]:
    """The peers, each destination of a rule with a ``coerce`` table given it (in rule
    order, after its own ``coerce``)."""
    found = dict(peers)
    for rule in rules:
        if rule.coerce is None:
            continue
        for name in rule.to:
            outgoing = found[name].outgoing or Outgoing()
            outgoing = replace(outgoing, rules=(*outgoing.rules, rule.coerce))
            found[name] = replace(found[name], outgoing=outgoing)
    return found


def _coercion(raw: Any, where: str) -> Coercion:
    table = v.table({"coerce": raw}, "coerce", where.rsplit(".", 1)[0])
    v.reject_unknown(table, {"set", "remove", "copy", "match"}, where)
    sets = v.get(table, f"{where}.set", dict, {}, None)
    removes = v.get(table, f"{where}.remove", list, [], None)
    copies = v.get(table, f"{where}.copy", dict, {}, None)
    match = v.get(table, f"{where}.match", dict, {}, None)
    for keyword, pattern in match.items():
        if keyword != "calling_ae" and tag_for_keyword(keyword) is None:
            v.problem(ConfigError(f"{where}.match.{keyword}", "is not a DICOM keyword"))
        if not isinstance(pattern, str):
            v.problem(ConfigError(f"{where}.match.{keyword}", "a pattern is a string"))
    return Coercion(
        set=tuple(a for k, value in sets.items()
                  if (a := assignment(k, value, f"{where}.set.{k}")) is not None),
        remove=tuple(r for i, text in enumerate(removes)
                     if (r := removal(text, f"{where}.remove[{i}]")) is not None),
        copy=tuple(c for k, source in copies.items()
                   if (c := _copy(k, source, f"{where}.copy.{k}")) is not None),
        match=dict(match),
    )


def path_of(text: str, key: str) -> tuple[Step, ...] | None:
    """The steps of a path (``Seq[0].Keyword``); None (reported) if it is not one."""
    steps: list[Step] = []
    parts = text.split(".")
    for i, part in enumerate(parts):
        found = _STEP.match(part)
        tag = tag_for_keyword(found.group(1)) if found else None
        if found is None or tag is None:
            v.problem(ConfigError(key, f"{part!r} is not a DICOM keyword"))
            return None
        last = i == len(parts) - 1
        if not last and dictionary_VR(tag) != "SQ":
            v.problem(ConfigError(key, f"{found.group(1)} is not a sequence"))
            return None
        if last and found.group(2) is not None:
            v.problem(ConfigError(key, "an item index belongs to a sequence on the way"))
            return None
        if tag >= PIXEL_DATA:
            v.problem(ConfigError(key, "attributes from Pixel Data on cannot be changed"))
            return None
        index = found.group(2)
        steps.append(Step(tag, None if index in (None, "*") else int(index)))
    return tuple(steps)


def assignment(text: str, value: Any, key: str) -> Assignment | None:
    """One ``set`` entry, its value checked against the attribute's VR."""
    path = path_of(text, key)
    if path is None:
        return None
    vr = dictionary_VR(path[-1].tag)
    if vr == "SQ":
        v.problem(ConfigError(key, "a sequence cannot be set to a value"))
        return None
    values = value if isinstance(value, list) else [value]
    for one in values:
        if isinstance(one, bool) or not isinstance(one, (str, int, float)):
            v.problem(ConfigError(key, "a value is a string or a number (or a list of them)"))
            return None
        try:
            validate_value(vr.split(" or ")[0], one, pydicom_config.RAISE)
        except (ValueError, TypeError) as exc:
            v.problem(ConfigError(key, f"does not fit VR {vr}: {exc}"))
            return None
    return Assignment(path, vr.split(" or ")[0], value, text)


def removal(text: Any, key: str) -> Removal | None:
    """One ``remove`` entry: a keyword, a tag, a private element or a group."""
    if not isinstance(text, str):
        v.problem(ConfigError(key, "is a keyword or a tag such as \"(0009,xx10)\""))
        return None
    if not text.startswith("("):
        tag = tag_for_keyword(text)
        if tag is None:
            v.problem(ConfigError(key, f"{text!r} is not a DICOM keyword"))
            return None
        return Removal(tag >> 16, tag & 0xFFFF, text=text)
    found = _TAG.match(text)
    if found is None:
        v.problem(ConfigError(key, f"{text!r} is not (gggg,eeee), (gggg,xxee[,CREATOR])"
                                   " or (gggg,xxxx)"))
        return None
    group = int(found.group(1), 16)
    high, low, creator = found.group(2).lower(), found.group(3).lower(), found.group(4)
    if high == "xx" and low == "xx":
        return Removal(group, None, text=text)
    if high == "xx":
        if group % 2 == 0:
            v.problem(ConfigError(key, "xx stands for a private block: an odd group"))
            return None
        return Removal(group, int(low, 16), private=True, creator=creator, text=text)
    if low == "xx" or creator is not None:
        v.problem(ConfigError(key, f"{text!r}: xx is the block byte, (gggg,xxee)"))
        return None
    return Removal(group, int(high + low, 16), text=text)


def _copy(target: str, source: Any, key: str) -> Copy | None:
    if not isinstance(source, str):
        v.problem(ConfigError(key, "names the attribute to copy from, a keyword or a path"))
        return None
    to, came = path_of(target, key), path_of(source, key)
    if to is None or came is None:
        return None
    return Copy(to, came, target)
