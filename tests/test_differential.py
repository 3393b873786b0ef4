"""Differential C-FIND: the agent against DCMTK's dcmqrscp and Orthanc, on one archive.

All three servers receive the same instances by C-STORE. Seeded, deterministic queries at
every level of every model go to both; each answer set (the level's unique key and every
returned key, values without padding) must be what dcmqrscp answers, changed only by
the few differences the standard permits and that are listed once, with their reasons,
in EXPECTATIONS below. Anything else fails with a readable diff.

dcmqrscp runs with -XF (check C-FIND identifiers), so it refuses what PS3.4 C.4.1.2.1
forbids in a hierarchical query, like the agent. It matches byte strings, case-sensitively,
and knows a fixed set of keys (DCMTK 3.6.7 dcmqrdbi.cc, TbFindAttr): the queries use
those keys, plus the computed keys the agent answers.

Orthanc (1.10) answers the queries about unknown values (Required keys held empty or
absent, at every level; ORTHANC_QUERIES) with the same EXPECTATIONS applied: it offers no
Patient/Study Only model (retired), and elsewhere differs from the agent in ways that are
its own (string comparison of times, leading spaces kept, an empty date inside an open
range), which is why dcmqrscp is the reference for the rest.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dicomgen
import pytest
from bench.peers import Orthanc
from pydicom import uid
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import AE, build_context

from agent import config as config_module
from agent.app import Agent
from tests import scu
from tests.pacs import Dcmqrscp
from tests.qr_archive import PATIENT_ROOT_FIND, PATIENT_STUDY_FIND, STUDY_ROOT_FIND
from tests.support import free_port, peer, write_config

# wildcards in CS query values are valid queries, not invalid CS values
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:Invalid value for VR")]

SEED = 20261201
MODELS = {"PatientRoot": PATIENT_ROOT_FIND, "StudyRoot": STUDY_ROOT_FIND,
          "PatientStudyOnly": PATIENT_STUDY_FIND}
LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
UNIQUE = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID",
          "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}

# -- The keys, by level (PS3.4 C.6.1.1 and C.6.2.1) ---------------------------------------
# Matching keys both servers index, and the computed keys only the agent answers.
PATIENT_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
STUDY_KEYS = ("StudyDate", "StudyTime", "AccessionNumber", "StudyID", "StudyDescription",
              "ReferringPhysicianName", "StudyInstanceUID")
SERIES_KEYS = ("Modality", "SeriesNumber", "SeriesInstanceUID")
IMAGE_KEYS = ("InstanceNumber", "SOPInstanceUID")
COMPUTED = {
    "PATIENT": ("NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
                "NumberOfPatientRelatedInstances"),
    "STUDY": ("ModalitiesInStudy", "NumberOfStudyRelatedSeries",
              "NumberOfStudyRelatedInstances"),
    "SERIES": ("NumberOfSeriesRelatedInstances",),
    "IMAGE": (),
}

# Required keys ("R" in the tables): the unknown-value rule of C.2.2.1.2 applies to these.
# Study Root folds the patient's keys into the STUDY level (C.6.2.1.2), where Patient's
# Name and Patient ID are Required.
REQUIRED = {
    "PATIENT": {"PatientName"},
    "STUDY": {"StudyDate", "StudyTime", "AccessionNumber", "StudyID"},
    "SERIES": {"Modality", "SeriesNumber"},
    "IMAGE": {"InstanceNumber"},
}
STUDY_ROOT_STUDY_REQUIRED = REQUIRED["STUDY"] | {"PatientName", "PatientID"}


def levels_of(model: str) -> tuple[str, ...]:
    return {"PatientRoot": LEVELS, "StudyRoot": LEVELS[1:],
            "PatientStudyOnly": LEVELS[:2]}[model]


def level_of(model: str, keyword: str) -> str:
    """The level a key belongs to in ``model``."""
    for level, keys in (("PATIENT", PATIENT_KEYS), ("STUDY", STUDY_KEYS),
                        ("SERIES", SERIES_KEYS), ("IMAGE", IMAGE_KEYS)):
        if keyword in keys or keyword in COMPUTED[level]:
            return "STUDY" if level == "PATIENT" and model == "StudyRoot" else level
    raise KeyError(keyword)


def required(model: str, level: str) -> set[str]:
    return STUDY_ROOT_STUDY_REQUIRED if (model, level) == ("StudyRoot", "STUDY") \
        else REQUIRED[level]


def keys_at(model: str, level: str) -> tuple[str, ...]:
    own = {"PATIENT": PATIENT_KEYS, "STUDY": STUDY_KEYS, "SERIES": SERIES_KEYS,
           "IMAGE": IMAGE_KEYS}[level]
    if (model, level) == ("StudyRoot", "STUDY"):
        own = PATIENT_KEYS + own
    return own + COMPUTED[level]


# -- The archive ---------------------------------------------------------------------------
# (id, name, charset, birth date, sex): None is absent, "" present with zero length.
LATIN1, UTF8 = "ISO_IR 100", "ISO_IR 192"
PATIENTS = [
    ("P01", "DOE^JOHN", UTF8, "19700101", "M"),
    ("P02", "doe^jane", UTF8, "19851212", "F"),
    ("P03", "Müller^Jürgen", LATIN1, "19600505", "M"),
    ("P04", "MÜLLER^ANNA", UTF8, "19920229", "F"),
    ("P05", "SMITH^ANNA^^", UTF8, "", "F"),
    ("P06", "van der Berg^Piet", LATIN1, "19551111", "M"),
    ("P07", "", UTF8, "19800808", ""),
    ("P08", None, UTF8, None, None),
    ("P09", "Doe^Johnny", LATIN1, "20010704", "M"),
    ("P10", "García^José", LATIN1, "19771231", "M"),
    ("P11", "O'Brien^Seán", UTF8, "19881003", "O"),
    ("P12", "Østergaard^Søren", UTF8, "19660606", "M"),
    ("P13", "Smith^John^A^Dr^", LATIN1, "19500315", "M"),
]
DESCRIPTIONS = ["CT CHEST", "MR BRAIN", "Chest x-ray", "knee left", "CT ABDOMEN", "", None]
REFERRERS = ["REFERRER^ROSE", "House^Gregory", "Gómez^Ana", "", None, "HOUSE^GREGORY"]
MODALITIES = ["CT", "MR", "PT", "US", "SR", "OT", "CT", "MR"]


@dataclass
class Node:
    """One entity of the archive: its own values (None = absent) and its children."""

    level: str
    uid: str
    values: dict[str, str | None]
    children: list[Node] = field(default_factory=list)
    charset: str = UTF8


def _uid(*parts: object) -> str:
    return uid.generate_uid(entropy_srcs=["test_differential", *map(str, parts)])


def build_archive(rng: random.Random) -> list[Node]:
    """The patients, studies (~20), series and instances; deterministic for a seed."""
    patients = []
    study_no = 0
    for pid, name, charset, birth, sex in PATIENTS:
        patient = Node("PATIENT", pid, {"PatientID": pid, "PatientName": name,
                                        "PatientBirthDate": birth, "PatientSex": sex},
                       charset=charset)
        for _ in range(1 + (rng.random() < 0.5)):
            study_no += 1
            day = rng.randrange(730)  # a day of 2024 or 2025
            date = f"{2024 + day // 365}{(day % 365) // 28 % 12 + 1:02d}{day % 28 + 1:02d}"
            time = f"{rng.randrange(7, 20):02d}{rng.randrange(60):02d}"
            time += f"{rng.randrange(60):02d}" if rng.random() < 0.7 else ""
            accession = f"{'acc' if study_no % 5 == 0 else 'ACC'}{study_no:03d}"
            accession = " " + accession if study_no == 17 else accession  # leading space
            values: dict[str, str | None] = {
                "StudyDate": {4: "", 9: None}.get(study_no, date),
                "StudyTime": {6: "", 12: None}.get(study_no, time),
                "AccessionNumber": {3: "", 14: None}.get(study_no, accession),
                "StudyID": {8: "", 15: None}.get(study_no, str(study_no)),
                "StudyDescription": "  CT HEAD" if study_no == 16 else rng.choice(DESCRIPTIONS),
                "ReferringPhysicianName": rng.choice(REFERRERS),
            }
            study = Node("STUDY", _uid("study", study_no), values, charset=charset)
            patient.children.append(study)
            for number in range(1, rng.randrange(2, 5) + 1):
                modality: str | None = rng.choice(MODALITIES)
                series_number: str | None = str(number)
                if study_no == 2 and number == 2:
                    modality, series_number = "", ""
                if study_no == 7 and number == 1:
                    modality, series_number = None, None
                series = Node("SERIES", _uid("series", study_no, number),
                              {"Modality": modality, "SeriesNumber": series_number})
                study.children.append(series)
                for instance in range(1, rng.randrange(1, 4) + 1):
                    instance_number: str | None = str(instance)
                    if (study_no, number, instance) in ((1, 1, 2), (10, 1, 1)):
                        instance_number = ""
                    if (study_no, number, instance) in ((1, 2, 1), (11, 2, 1)):
                        instance_number = None
                    series.children.append(Node(
                        "IMAGE", _uid("instance", study_no, number, instance),
                        {"InstanceNumber": instance_number}))
        patients.append(patient)
    return patients


ARCHIVE = build_archive(random.Random(SEED))


def walk(nodes: list[Node], *parents: Node) -> Iterator[tuple[Node, ...]]:
    """Every path from a patient down to each node: (patient,), (patient, study)..."""
    for node in nodes:
        yield (*parents, node)
        yield from walk(node.children, *parents, node)


def datasets() -> Iterator[Dataset]:
    """One data set per instance, with empty and absent attributes as described."""
    sop_class = {"CT": "CT", "MR": "MR"}
    for path in walk(ARCHIVE):
        if len(path) != 4:
            continue
        patient, study, series, instance = path
        generated = dicomgen.Study(patient_id=patient.uid, study_uid=study.uid,
                                   charset=patient.charset)
        [ds] = dicomgen.series(1, modality=sop_class.get(series.values["Modality"] or "", "SC"),
                               study=generated, series_uid=series.uid, size=8)
        ds.SOPInstanceUID = instance.uid
        ds.file_meta.MediaStorageSOPInstanceUID = instance.uid
        for node in path:
            for keyword, value in node.values.items():
                if value is None:
                    if keyword in ds:
                        delattr(ds, keyword)
                else:
                    setattr(ds, keyword, value)
        yield ds


def unknown_keys() -> dict[str, set[str]]:
    """UID -> the keys whose value it does not know: held with zero length or absent
    (the servers' answers cannot tell these apart; the archive's description can)."""
    unknown: dict[str, set[str]] = {}
    for path in walk(ARCHIVE):
        node = path[-1]
        unknown[node.uid] = {k for k, v in node.values.items() if v in ("", None)}
        if node.level == "STUDY":  # Study Root: the patient's keys are study keys
            unknown[node.uid] |= {k for k, v in path[0].values.items() if v in ("", None)}
    return unknown


# -- The queries ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Query:
    """One C-FIND: model, level, keys (value '' asks for it back), character set."""

    name: str
    model: str
    level: str
    keys: tuple[tuple[str, str], ...]
    charset: str = UTF8

    def dataset(self, drop: frozenset[str] = frozenset(),
                override: dict[str, str] | None = None) -> Dataset:
        ds = Dataset()
        ds.SpecificCharacterSet = self.charset
        ds.QueryRetrieveLevel = self.level
        for keyword, value in self.keys:
            if keyword not in drop:
                setattr(ds, keyword, (override or {}).get(keyword, value))
        return ds

    @property
    def values(self) -> dict[str, str]:
        return dict(self.keys)

    @property
    def returned(self) -> list[str]:
        return [k for k, _ in self.keys]


def _values(keyword: str) -> list[str]:
    """Every non-empty value the archive holds for a key."""
    found = {p[-1].values.get(keyword) for p in walk(ARCHIVE)} - {None, ""}
    return sorted(v for v in found if v is not None)


def _pn_variant(rng: random.Random, name: str) -> str:
    family = name.split("^")[0]
    choices = [
        name,  # exact
        name.lower(),  # other case (PN only: the agent ignores case)
        family[: rng.randrange(1, len(family) + 1)] + "*",  # prefix
        "*" + name.rstrip("^")[-3:],  # suffix
        re.sub(r"^(.)(.)", r"\1?", name),  # one character
        name.rstrip("^"),  # trailing empty components dropped
        family.upper() + "*",
        "NOBODY*",
    ]
    return rng.choice(choices)


def _text_variant(rng: random.Random, value: str) -> str:
    return rng.choice([value, value[:2] + "*", "*" + value[-1:], value[:-1] + "?",
                       value.lower() if value.upper() == value else value.upper(), "ZZ*"])


def _date_variant(rng: random.Random, value: str) -> str:
    other = rng.choice(_values("StudyDate"))
    low, high = sorted([value, other])
    return rng.choice([value, f"{low}-{high}", f"-{value}", f"{value}-", "20240101-20241231",
                       "-20240630", "20250701-"])


def _time_variant(rng: random.Random, value: str) -> str:
    full = value.ljust(6, "0")
    return rng.choice([full, f"-{full}", f"{full}-", "080000-120000", "-100000", "150000-"])


def value_for(rng: random.Random, keyword: str, anchor: list[Node]) -> str:
    """A query value for ``keyword``: a value held (or a variant of it), or a miss."""
    if keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        uids = [p[-1].uid for p in walk(anchor)
                if UNIQUE[p[-1].level] == keyword]
        picked = rng.sample(uids, min(len(uids), rng.randrange(1, 4)))
        return "\\".join(picked + (["1.2.3.999"] if rng.random() < 0.3 else []))
    if keyword == "ModalitiesInStudy":
        return rng.choice(["CT", "MR", "CT\\US", "S*", "?T", "XA"])
    held = _values(keyword)
    value = rng.choice(held)
    if keyword in ("PatientName", "ReferringPhysicianName"):
        return _pn_variant(rng, value)
    if keyword in ("StudyDate", "PatientBirthDate"):
        return _date_variant(rng, value)
    if keyword == "StudyTime":
        return _time_variant(rng, value)
    if keyword in ("SeriesNumber", "InstanceNumber"):
        return value
    return _text_variant(rng, value)


# how many random queries per model and level
PLAN = [("PatientRoot", "PATIENT", 6), ("PatientStudyOnly", "PATIENT", 3),
        ("StudyRoot", "STUDY", 16), ("PatientRoot", "STUDY", 4),
        ("PatientStudyOnly", "STUDY", 3), ("StudyRoot", "SERIES", 6),
        ("PatientRoot", "SERIES", 3), ("StudyRoot", "IMAGE", 4), ("PatientRoot", "IMAGE", 2)]


def _above(model: str, level: str, path: tuple[Node, ...]) -> list[tuple[str, str]]:
    """The unique keys above ``level`` for an entity path (patient, study, series...)."""
    keys = []
    for node in path:
        if node.level in levels_of(model) and LEVELS.index(node.level) < LEVELS.index(level):
            keys.append((UNIQUE[node.level], node.uid))
    return keys


def generate() -> list[Query]:
    rng = random.Random(SEED)
    queries: list[Query] = []

    def add(model: str, level: str, keys: list[tuple[str, str]], what: str,
            charset: str = UTF8) -> None:
        name = f"{len(queries):02d}-{model}-{level}-{what}".replace(" ", "_")
        queries.append(Query(name, model, level, tuple(keys), charset))

    # one dump per model and level: every key back, nothing matched but the hierarchy
    for model, level, _ in PLAN:
        if any(q.model == model and q.level == level for q in queries):
            continue
        path = _a_path(rng, model, level)
        add(model, level, _above(model, level, path) + [(k, "") for k in keys_at(model, level)],
            "all")
    for model, level, count in PLAN:
        for _ in range(count):
            path = _a_path(rng, model, level)
            anchor = [path[-2]] if len(path) > 1 else ARCHIVE
            own = [k for k in keys_at(model, level) if k not in COMPUTED[level]
                   or k == "ModalitiesInStudy"]
            weighted = own + [k for k in own if k in ("PatientName", "StudyDate")] * 2
            matched = list(dict.fromkeys(rng.sample(weighted, rng.randrange(1, 3))))
            keys = _above(model, level, path)
            keys += [(k, value_for(rng, k, anchor)) for k in matched]
            population = keys_at(model, level)
            back = rng.sample(population, min(len(population), rng.randrange(1, 5)))
            keys += [(k, "") for k in back if k not in matched]
            if UNIQUE[level] not in dict(keys):
                keys.append((UNIQUE[level], ""))
            charset = LATIN1 if rng.random() < 0.25 else UTF8
            shown = [f"{k}=<{v.count(chr(92)) + 1} uids>" if k.endswith("UID") else f"{k}={v}"
                     for k, v in keys[len(_above(model, level, path)):] if v]
            add(model, level, keys, ",".join(shown) or "universal", charset)
    # names: case, accents in either character set, '?' over an accent, trailing '^'
    for name, charset in (("müller*", LATIN1), ("MÜLLER*", UTF8), ("M?LLER^*", UTF8),
                          ("DOE^JOHN", UTF8), ("doe*", UTF8), ("SMITH^ANNA", UTF8),
                          ("SMITH^ANNA^^", LATIN1), ("*^J*", UTF8), ("Ø*", UTF8),
                          ("García^José", LATIN1), ("Smith^John^A^Dr^", UTF8),
                          ("*^Dr^", UTF8), ("smith^john^*^", LATIN1)):
        add("StudyRoot", "STUDY", [("PatientName", name), ("PatientID", ""),
                                   ("StudyInstanceUID", ""), ("StudyDate", "")],
            f"PatientName={name}", charset)
    add("PatientRoot", "PATIENT", [("PatientName", "*a*"), ("PatientID", "")],
        "PatientName=*a*")
    # Required keys held empty or absent, at each level; an Optional date held empty
    studies = [p for p in walk(ARCHIVE) if len(p) == 2]
    for keys in ([("AccessionNumber", "ACC*")], [("StudyID", "1*")],
                 [("StudyTime", "-120000")], [("StudyDate", "20240601-")],
                 [("PatientBirthDate", "-19991231")], [("PatientBirthDate", "19900101-")],
                 [("AccessionNumber", "ACC017")], [("StudyDescription", "CT HEAD")],
                 [("StudyDescription", "*HEAD")]):
        add("StudyRoot", "STUDY", [*keys, ("StudyInstanceUID", ""), ("PatientID", "")],
            ",".join(f"{k}={v}" for k, v in keys))
    add("PatientRoot", "PATIENT", [("PatientBirthDate", "-19991231"), ("PatientID", "")],
        "PatientBirthDate=-19991231")
    # every kind of value against the unknown Required keys (studies 3, 4, 6, 8 hold them
    # empty; 9, 12, 14, 15 lack them): exact, case, prefix, single, ranges closed, open
    # at either end and one day long; then under the patient that lacks them
    for keys in ([("AccessionNumber", "ACC001")], [("AccessionNumber", "acc*")],
                 [("AccessionNumber", "ACC00?")], [("StudyDate", "20250403")],
                 [("StudyDate", "20240301-20240831")], [("StudyDate", "-20240811")],
                 [("StudyDate", "20251024-20251024")], [("StudyTime", "080000-120000")],
                 [("StudyTime", "-100000")], [("StudyTime", "150000-")],
                 [("StudyTime", "170610")], [("StudyID", "1*")],
                 [("StudyDate", "20240101-20241231"), ("StudyTime", "-120000")]):
        add("StudyRoot", "STUDY", [*keys, ("StudyInstanceUID", ""), ("PatientID", "")],
            "unknown-" + ",".join(f"{k}={v}" for k, v in keys))
    for model in ("PatientRoot", "PatientStudyOnly"):
        for pid, keyword, value in (("P05", "StudyDate", "20240101-20241231"),
                                    ("P06", "StudyTime", "-120000"),
                                    ("P07", "AccessionNumber", "ACC*"),
                                    ("P08", "StudyID", "2*")):
            add(model, "STUDY", [("PatientID", pid), (keyword, value),
                                 ("StudyInstanceUID", "")], f"unknown-{pid},{keyword}={value}")
    for name in ("DOE*", "doe^jane"):  # P07 holds Patient's Name empty, P08 lacks it
        add("PatientRoot", "PATIENT", [("PatientName", name), ("PatientID", "")],
            f"unknown-PatientName={name}")
        add("StudyRoot", "STUDY", [("PatientName", name), ("PatientID", ""),
                                   ("StudyInstanceUID", "")], f"unknown-PatientName={name}")
    for _, study in studies:  # the studies with a series whose Required keys are empty
        if any(c.values["Modality"] in ("", None) for c in study.children):
            number = studies.index((_, study)) + 1
            add("StudyRoot", "SERIES", [("StudyInstanceUID", study.uid), ("Modality", "CT"),
                                        ("SeriesNumber", ""), ("SeriesInstanceUID", "")],
                f"unknown-study{number},Modality=CT")
            add("StudyRoot", "SERIES", [("StudyInstanceUID", study.uid),
                                        ("SeriesNumber", "1"), ("SeriesInstanceUID", "")],
                f"unknown-study{number},SeriesNumber=1")
    for _, study, series in (p for p in walk(ARCHIVE) if len(p) == 3):
        if any(c.values["InstanceNumber"] in ("", None) for c in series.children):
            add("StudyRoot", "IMAGE", [("StudyInstanceUID", study.uid),
                                       ("SeriesInstanceUID", series.uid),
                                       ("InstanceNumber", "1"), ("SOPInstanceUID", "")],
                "unknown-InstanceNumber=1")
    # empty keys above the level, as Orthanc sends them; and a non-empty one (refused)
    study = ARCHIVE[0].children[0]
    series = study.children[0]
    add("StudyRoot", "SERIES", [("StudyInstanceUID", study.uid), ("PatientID", ""),
                                ("AccessionNumber", ""), ("PatientName", ""),
                                ("SeriesInstanceUID", ""), ("Modality", "")],
        "empty-keys-above")
    add("StudyRoot", "IMAGE", [("StudyInstanceUID", study.uid),
                               ("SeriesInstanceUID", series.uid), ("PatientID", ""),
                               ("AccessionNumber", ""), ("StudyDate", ""), ("Modality", ""),
                               ("SOPInstanceUID", ""), ("InstanceNumber", "")],
        "empty-keys-above")
    add("PatientRoot", "SERIES", [("PatientID", "P01"), ("StudyInstanceUID", study.uid),
                                  ("AccessionNumber", ""), ("StudyDate", ""),
                                  ("SeriesInstanceUID", ""), ("SeriesNumber", "")],
        "empty-keys-above")
    add("StudyRoot", "SERIES", [("StudyInstanceUID", study.uid),
                                ("AccessionNumber", str(study.values["AccessionNumber"])),
                                ("SeriesInstanceUID", "")], "accession-above-refused")
    add("PatientRoot", "STUDY", [("PatientID", "P01"), ("PatientName", "DOE^JOHN"),
                                 ("StudyInstanceUID", "")], "name-above-refused")
    return queries


def _a_path(rng: random.Random, model: str, level: str) -> tuple[Node, ...]:
    depth = LEVELS.index(level)
    paths = [p for p in walk(ARCHIVE) if len(p) == depth + 1]
    return rng.choice(paths)


QUERIES = generate()
# the queries about unknown values, in the models Orthanc offers
ORTHANC_QUERIES = [q for q in QUERIES if "-unknown-" in q.name and q.model != "PatientStudyOnly"]


# -- Talking to the servers ---------------------------------------------------------------
Answer = tuple[tuple[str, Any], ...]


class Finder:
    """C-FIND over one association per model, kept open across queries."""

    def __init__(self, port: int, called: str) -> None:
        self.port, self.called = port, called
        self.associations: dict[str, Any] = {}

    def find(self, model: str, query: Dataset) -> tuple[list[Dataset], int]:
        sop_class = MODELS[model]
        for _ in range(2):
            assoc = self.associations.get(model)
            if assoc is None or not assoc.is_established:
                ae = AE(ae_title="WS")
                ae.requested_contexts = [build_context(sop_class)]
                assoc = ae.associate("127.0.0.1", self.port, ae_title=self.called)
                assert assoc.is_established, f"{self.called} refused the association"
                self.associations[model] = assoc
            answers, final = [], -1
            for status, answer in assoc.send_c_find(query, sop_class):
                if status and status.Status in (0xFF00, 0xFF01):
                    answers.append(answer)
                elif status:
                    final = int(status.Status)
            if final != -1:
                return answers, final
            assoc.abort()
        raise AssertionError(f"{self.called} gave no final C-FIND response")

    def close(self) -> None:
        for assoc in self.associations.values():
            if assoc.is_established:
                assoc.release()


def normal(keyword: str, element: Any) -> str:
    """A returned value without its padding; multi-values sorted; PN without empty
    trailing components (PS3.5 6.2: they are not significant)."""
    if element is None:
        return "<not returned>"
    value = element.value
    if value is None or value == "":
        return ""
    if isinstance(value, (MultiValue, list)):
        parts = sorted(str(v).strip() for v in value)
        return "\\".join(parts)
    text = str(value).strip(" \0")
    if element.VR == "PN":
        text = "=".join(g.rstrip("^ ") for g in text.split("=")).rstrip("=")
    return text


def element(ds: Dataset, keyword: str) -> Any:
    """The data element for ``keyword``, or None when the answer does not hold it."""
    try:
        return ds[keyword]
    except KeyError:
        return None


def answer_key(query: Query, answer: Dataset, keys: list[str]) -> dict[str, str]:
    wanted = dict.fromkeys([*keys, UNIQUE[query.level]])
    return {k: normal(k, element(answer, k)) for k in wanted}


def frozen(answer: dict[str, str]) -> Answer:
    return tuple(sorted(answer.items()))


def is_universal(value: str) -> bool:
    return value in ("", "*")


def pn_normal(value: str) -> str:
    groups = [g.rstrip("^ ") for g in value.split("=")]
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups).upper()


def pn_matches(query: str, stored: str) -> bool:
    """Person Names as the agent documents it (docs/conformance.md): ignoring case and
    empty trailing components, '?' one character."""
    if not stored:
        return False
    wanted, held = pn_normal(query), pn_normal(stored)
    if "*" in wanted or "?" in wanted:
        return bool(wildcard(wanted).fullmatch(held))
    return wanted == held


def wildcard(value: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c)
                              for c in value), re.DOTALL)


def cs_any_matches(query: str, stored: list[str]) -> bool:
    """CS, multi-valued: any stored value matches any of the query's values."""
    return any(wildcard(wanted).fullmatch(value)
               for wanted in query.split("\\") for value in stored)


@dataclass
class Catalogue:
    """What dcmqrscp holds, read back through its own C-FIND answers."""

    studies: dict[str, dict[str, str]]  # study UID -> its keys (the patient's too)
    series: dict[str, dict[str, dict[str, str]]]  # study UID -> series UID -> its keys
    instances: dict[str, int]  # series UID -> instance count
    unknown: dict[str, set[str]]  # UID (PatientID for patients) -> keys empty or absent

    def computed(self, level: str, unique: str) -> dict[str, str]:
        """The computed keys of one entity, from dcmqrscp's lower-level answers."""
        if level == "SERIES":
            return {"NumberOfSeriesRelatedInstances": str(self.instances[unique])}
        studies = [unique] if level == "STUDY" else [
            s for s, keys in self.studies.items() if keys["PatientID"] == unique]
        series = {uid: keys for study in studies for uid, keys in self.series[study].items()}
        instances = str(sum(self.instances[uid] for uid in series))
        return {"NumberOfStudyRelatedSeries": str(len(series)),
                "NumberOfStudyRelatedInstances": instances,
                "ModalitiesInStudy": "\\".join(sorted({k["Modality"] for k in series.values()}
                                                       - {""})),
                "NumberOfPatientRelatedStudies": str(len(studies)),
                "NumberOfPatientRelatedSeries": str(len(series)),
                "NumberOfPatientRelatedInstances": instances}

    def value_above(self, query: Query, keyword: str) -> str | None:
        """The value of a key above the query level, for the entity the query names."""
        study = query.values.get("StudyInstanceUID", "")
        if level_of(query.model, keyword) == "SERIES":
            series = query.values.get("SeriesInstanceUID", "")
            return self.series.get(study, {}).get(series, {}).get(keyword)
        return self.studies.get(study, {}).get(keyword)


Row = dict[str, str]


@dataclass
class Prediction:
    """How dcmqrscp's answers to a query become the agent's; the EXPECTATIONS fill it in."""

    query: Query
    catalogue: Catalogue
    widened: dict[str, list[Callable[[Row], bool]]] = field(default_factory=dict)
    computed: set[str] = field(default_factory=set)
    loose_above: set[str] = field(default_factory=set)
    used: list[str] = field(default_factory=list)

    @property
    def unique(self) -> str:
        return UNIQUE[self.query.level]

    def matching(self) -> Iterator[tuple[str, str]]:
        """The keys at the query level that restrict the answers."""
        for keyword, value in self.query.keys:
            if (level_of(self.query.model, keyword) == self.query.level
                    and keyword not in COMPUTED[self.query.level] and not is_universal(value)):
                yield keyword, value

    def widen(self, keyword: str, why: str, also: Callable[[Row], bool]) -> None:
        """The agent also matches the rows ``also`` accepts on this key."""
        self.widened.setdefault(keyword, []).append(also)
        self.used.append(why)

    def compute(self, keyword: str, why: str) -> None:
        """The agent computes this key; dcmqrscp is not asked for it."""
        self.computed.add(keyword)
        self.used.append(why)

    def loosen_above(self, keyword: str, why: str) -> None:
        """dcmqrscp is not sent this key; the agent may answer it empty or rightly."""
        self.loose_above.add(keyword)
        self.used.append(why)

    def answers(self, qr: Finder) -> tuple[list[Answer], int]:
        """Ask dcmqrscp, with widened keys universal, then apply the expectations."""
        query, drop = self.query, frozenset(self.computed | self.loose_above)
        relaxed = dict.fromkeys(self.widened, "")
        base, status = qr.find(query.model, query.dataset(drop, relaxed))
        if status != 0:
            return [], status
        # dcmqrscp's own verdict on each widened key, the other widened keys relaxed
        verdict: dict[str, set[str]] = {}
        for keyword in self.widened:
            others = {k: "" for k in self.widened if k != keyword}
            found, status = qr.find(query.model, query.dataset(drop, others))
            assert status == 0
            verdict[keyword] = {answer_key(query, a, [])[self.unique] for a in found}
        predicted = []
        for answer in base:
            row = answer_key(query, answer, [k for k in query.returned if k not in drop])
            if not all(row[self.unique] in verdict[k] or any(ok(row) for ok in extra)
                       for k, extra in self.widened.items()):
                continue
            if self.computed:
                filled = self.catalogue.computed(query.level, row[self.unique])
                wanted = query.values.get("ModalitiesInStudy", "")
                if not is_universal(wanted) and not cs_any_matches(
                        wanted, filled["ModalitiesInStudy"].split("\\")):
                    continue
                row.update({k: filled[k] for k in self.computed})
            predicted.append(frozen(row))
        return predicted, 0

    def observed(self, agent: Finder) -> tuple[list[Answer], int]:
        """The agent's answers, normalised like the prediction."""
        answers, status = agent.find(self.query.model, self.query.dataset())
        rows = []
        for answer in answers:
            row = answer_key(self.query, answer, self.query.returned)
            for keyword in self.loose_above:
                if row[keyword] in ("", "<not returned>",
                                    self.catalogue.value_above(self.query, keyword)):
                    del row[keyword]
            rows.append(frozen(row))
        return rows, status


# -- Permitted differences -----------------------------------------------------------------
# What the agent does differently from dcmqrscp, and why the standard lets (or makes) it
# do so. Each is applied to dcmqrscp's answers to predict the agent's; the first line of
# each docstring is shown when a query it applied to fails.

def pn_case(p: Prediction) -> None:
    """pn-case, PS3.4 C.2.2.2.1/C.2.2.2.4: PN ignores case, empty trailing components.

    Person Names may be matched case-insensitively; the agent does (Unicode
    upper-casing, accents kept), ignores empty trailing components (PS3.5 6.2:
    'DOE^JOHN^^' is 'DOE^JOHN') and takes '?' as one character. dcmqrscp compares bytes,
    case-sensitively, and its '?' is one byte of UTF-8. Predicted: what dcmqrscp matches
    on the key, plus what matches it so.
    """
    for keyword, value in p.matching():
        if str(dictionary_VR(keyword)) == "PN":
            p.widen(keyword, "pn_case", lambda row, k=keyword, v=value: pn_matches(v, row[k]))


def unknown(p: Prediction) -> None:
    """unknown, PS3.4 C.2.2.1.2: an empty or absent Required key matches any value.

    An entity whose Required key (REQUIRED above) is present with zero length matches
    any value of that key; an absent one is unknown exactly as an empty one is, so it
    matches too (as dcm4chee-arc's "match unknown" does). Neither dcmqrscp nor Orthanc
    applies the rule, and neither tells absence from zero length in its answers.
    Predicted: what the reference matches on the key, plus the entities the archive
    holds with it empty or not at all.
    """
    for keyword, _ in p.matching():
        if keyword in required(p.query.model, p.query.level):
            p.widen(keyword, "unknown", lambda row, k=keyword: k in p.catalogue.unknown.get(
                row[p.unique], set()))


def computed(p: Prediction) -> None:
    """computed, PS3.4 C.6.1.1.3-4, C.6.2.1.2: the agent computes ModalitiesInStudy, counts.

    Modalities in Study and the Number of ... Related ... keys are computed by the
    agent, returned and matched; dcmqrscp neither returns nor matches them. Predicted
    from dcmqrscp's own SERIES and IMAGE answers.
    """
    for keyword, _ in p.query.keys:
        if keyword in COMPUTED[p.query.level]:
            p.compute(keyword, "computed")


def universal_above(p: Prediction) -> None:
    """universal-above, PS3.4 C.4.1.2.1, C.2.2.2.3: empty keys above the level accepted.

    Above the query level only unique keys may appear, and dcmqrscp -XF refuses any
    other (0xA900); but a zero-length key asks for nothing to be matched, and Orthanc
    sends them, so the agent accepts it (a non-empty one is still refused by both).
    Predicted: dcmqrscp's answer to the query without the key; the agent may leave it
    out, return it empty or with the entity's value.
    """
    for keyword, value in p.query.keys:
        level = level_of(p.query.model, keyword)
        if level != p.query.level and value == "" and keyword != UNIQUE[level]:
            p.loosen_above(keyword, "universal_above")


EXPECTATIONS = (pn_case, unknown, computed, universal_above)


def predict(query: Query, catalogue: Catalogue) -> Prediction:
    prediction = Prediction(query, catalogue)
    for expectation in EXPECTATIONS:
        expectation(prediction)
    return prediction


def describe(rows: list[Answer]) -> str:
    return "\n".join("    " + ", ".join(f"{k}={v!r}" for k, v in row) for row in sorted(rows))


# -- Fixtures and the test -----------------------------------------------------------------
@dataclass
class Servers:
    agent: Finder
    qr: Finder
    orthanc: Finder
    catalogue: Catalogue


def read_catalogue(qr: Finder) -> Catalogue:
    """dcmqrscp's holdings through its own answers, for the 'computed' expectation."""
    study_keys = PATIENT_KEYS + STUDY_KEYS
    dump = Query("catalogue", "StudyRoot", "STUDY", tuple((k, "") for k in study_keys))
    answers, status = qr.find("StudyRoot", dump.dataset())
    assert status == 0
    studies = {str(a.StudyInstanceUID): answer_key(dump, a, list(study_keys)) for a in answers}
    series: dict[str, dict[str, dict[str, str]]] = {}
    instances: dict[str, int] = {}
    for study in studies:
        query = Query("series", "StudyRoot", "SERIES", (
            ("StudyInstanceUID", study), ("SeriesInstanceUID", ""), ("Modality", ""),
            ("SeriesNumber", "")))
        found, status = qr.find("StudyRoot", query.dataset())
        assert status == 0
        series[study] = {str(a.SeriesInstanceUID): answer_key(query, a, list(SERIES_KEYS))
                         for a in found}
        for series_uid in series[study]:
            images, status = qr.find("StudyRoot", Query(
                "images", "StudyRoot", "IMAGE",
                (("StudyInstanceUID", study), ("SeriesInstanceUID", series_uid),
                 ("SOPInstanceUID", ""))).dataset())
            assert status == 0
            instances[series_uid] = len(images)
    return Catalogue(studies, series, instances, unknown_keys())


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    root = tmp_path_factory.mktemp("differential")
    files: list[Path] = []
    for ds in datasets():
        path = root / "src" / f"{ds.SOPInstanceUID}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    config = config_module.load_file(write_config(
        root / "agent.toml",
        {"ae_title": "EDGE", "port": free_port(), "bind": "127.0.0.1",
         "data_dir": str(root / "data"), "min_free_mb": 0},
        {"CT": peer("MODALITY", allow=("store",)), "WS": peer("WS", allow=("find",))}))
    with Dcmqrscp(root / "dcmqrscp", {}, options=("-XF",)) as dcmqrscp, \
            Orthanc(root / "orthanc") as orthanc, Agent(config):
        dcmqrscp.load(files)
        assert scu.store(config.agent.port, files) == [0] * len(files)
        assert scu.store(orthanc.port, files, called_ae=Orthanc.ae_title) == [0] * len(files)
        agent = Finder(config.agent.port, "EDGE")
        qr = Finder(dcmqrscp.port, Dcmqrscp.ae_title)
        reference = Finder(orthanc.port, Orthanc.ae_title)
        try:
            yield Servers(agent, qr, reference, read_catalogue(qr))
        finally:
            agent.close()
            qr.close()
            reference.close()


def test_the_archive_is_varied_enough() -> None:
    """The data set the differential runs on has what the brief asks of it."""
    paths = list(walk(ARCHIVE))
    studies = [p[-1] for p in paths if len(p) == 2]
    assert len(studies) >= 15
    dates = {s.values["StudyDate"][:4] for s in studies if s.values["StudyDate"]}
    assert dates == {"2024", "2025"}
    assert sum(len({c.values["Modality"] for c in s.children}) > 1 for s in studies) >= 10
    values = [v for p in paths for v in p[-1].values.values()]
    assert "" in values and None in values
    assert len(QUERIES) >= 50
    assert len(ORTHANC_QUERIES) >= 20
    assert {q.level for q in ORTHANC_QUERIES} == set(LEVELS)
    assert {(q.model, q.level) for q in QUERIES} == {(m, lv) for m, lv, _ in PLAN}


@pytest.mark.parametrize("query", QUERIES, ids=[q.name for q in QUERIES])
def test_agent_answers_as_dcmqrscp_does(servers: Servers, query: Query) -> None:
    compare(servers, servers.qr, "dcmqrscp", query)


@pytest.mark.parametrize("query", ORTHANC_QUERIES, ids=[q.name for q in ORTHANC_QUERIES])
def test_agent_answers_as_orthanc_does(servers: Servers, query: Query) -> None:
    compare(servers, servers.orthanc, "Orthanc", query)


def compare(servers: Servers, reference: Finder, name: str, query: Query) -> None:
    """The agent's answers are the reference's, changed only by the EXPECTATIONS."""
    prediction = predict(query, servers.catalogue)
    predicted, predicted_status = prediction.answers(reference)
    got, status = prediction.observed(servers.agent)
    applied = {e.__name__: e for e in EXPECTATIONS if e.__name__ in prediction.used}
    why = "".join(f"\n  {str(e.__doc__).splitlines()[0]}" for e in applied.values())
    header = (f"query ({query.model}, {query.level}, {query.charset}): "
              + ", ".join(f"{k}={v!r}" for k, v in query.keys)
              + f"\npermitted differences applied:{why or ' none'}")
    assert status == predicted_status, (
        f"{header}\nstatus: agent 0x{status:04X}, predicted 0x{predicted_status:04X}"
        f"\nagent answers:\n{describe(got)}")
    missing = Counter(predicted) - Counter(got)
    extra = Counter(got) - Counter(predicted)
    assert not missing and not extra, (
        f"{header}\n{len(got)} answers from the agent, {len(predicted)} predicted"
        f"\nonly predicted (from {name}):\n{describe(list(missing.elements()))}"
        f"\nonly from the agent:\n{describe(list(extra.elements()))}")
