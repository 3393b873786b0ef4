"""A query archive for the benchmarks: synthetic studies with varied names and dates,
loaded into the agent (files placed where it keeps them, then its own `reindex`) and
into Orthanc (REST), and the study-level queries run against both.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dicomgen
from pydicom.dataset import Dataset

from .peers import REPO, Orthanc

SURNAMES = ["SMITH", "JONES", "MILLER", "DAVIS", "GARCIA", "RODRIGUEZ", "WILSON", "MARTINEZ",
            "ANDERSON", "TAYLOR", "THOMAS", "HERNANDEZ", "MOORE", "MARTIN", "JACKSON",
            "THOMPSON", "WHITE", "LOPEZ", "LEE", "GONZALEZ", "HARRIS", "CLARK", "LEWIS",
            "ROBINSON", "WALKER", "PEREZ", "HALL", "YOUNG", "ALLEN", "SANCHEZ", "WRIGHT",
            "KING", "SCOTT", "GREEN", "BAKER", "ADAMS", "NELSON", "HILL", "RAMIREZ", "CAMPBELL",
            "MITCHELL", "ROBERTS", "CARTER", "PHILLIPS", "EVANS", "TURNER", "TORRES", "PARKER",
            "COLLINS", "EDWARDS"]
GIVEN = ["ANNA", "BEN", "CARL", "DORA", "EMIL", "FAYE", "GUS", "HANNA", "IVAN", "JUNE"]


def archive_files(root: Path, studies: int, per_study: int) -> list[Path]:
    """``studies`` studies of ``per_study`` small instances, dated over 2023-2025."""
    files: list[Path] = []
    for number in range(studies):
        name = f"{SURNAMES[number % len(SURNAMES)]}^{GIVEN[number // len(SURNAMES) % 10]}"
        day = time.gmtime(1672531200 + (number * 86400 * 3 * 365 // studies))
        study = dicomgen.Study(patient_name=name, patient_id=f"ID{number:06d}",
                               study_date=time.strftime("%Y%m%d", day), accession=f"A{number}")
        files += write_tree(root, dicomgen.series(per_study, size=8, study=study))
    return files


def big_study(root: Path, count: int, size: int = 512) -> tuple[list[Path], str]:
    """One study of one ``count``-instance CT series; its files and Study Instance UID."""
    study = dicomgen.Study(patient_name="BIG^SERIES", patient_id="BIG1")
    return write_tree(root, dicomgen.series(count, size=size, study=study)), study.study_uid


def write_tree(root: Path, datasets: Iterable[Dataset]) -> list[Path]:
    """Write data sets as root/study/series/instance.dcm: the agent's archive layout."""
    paths = []
    for ds in datasets:
        path = root / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def load_agent(agent_dir: Path, source: Path) -> float:
    """Place the files in the agent's archive and run `edge-agent reindex`; seconds."""
    started = time.perf_counter()
    shutil.copytree(source, agent_dir / "data" / "archive")
    config = agent_dir / "reindex.toml"
    config.write_text(f'[agent]\ndata_dir = "{agent_dir / "data"}"\nmin_free_mb = 0\n')
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-m", "agent", "reindex", "--config", str(config)],
                   check=True, env=env, capture_output=True, timeout=7200)
    return time.perf_counter() - started


def load_orthanc(orthanc: Orthanc, files: list[Path]) -> float:
    """POST every file to Orthanc's REST API with a few threads; seconds."""
    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda p: orthanc.rest("/instances", p.read_bytes()), files))
    return time.perf_counter() - started


def study_query(**keys: str) -> Dataset:
    """A study-level Study Root query returning the usual keys."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword in ("StudyInstanceUID", "StudyDate", "PatientID", "PatientName",
                    "AccessionNumber", "ModalitiesInStudy"):
        setattr(ds, keyword, keys.get(keyword, ""))
    return ds


def query_sets(repeat: int) -> dict[str, list[Dataset]]:
    """The two kinds of study-level query, varied over the repetitions."""
    months = [f"2024{m:02d}01-2024{m:02d}28" for m in range(1, 13)]
    return {
        "PN prefix": [study_query(PatientName=f"{SURNAMES[i % 50][:3]}*")
                      for i in range(repeat)],
        "date range": [study_query(StudyDate=months[i % 12]) for i in range(repeat)],
    }


def p95(values: list[float]) -> float:
    """95th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[max(0, round(0.95 * len(ordered)) - 1)]
