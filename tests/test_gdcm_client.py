"""GDCM's network library as a client: it reads command and data set from separate PDUs.

GDCM 3.0.21 takes a whole P-DATA-TF as the command and the next one as the identifier;
when the box sent both as two PDVs of one PDU it lost every other C-FIND answer (and
waited for one more on an odd count). The client runs in the system Python, where
Debian's python3-gdcm lives (scripts/test.sh installs it).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import qr_archive as qa

SYSTEM_PYTHON = "/usr/bin/python3"
CLIENT = Path(__file__).with_name("gdcm_find.py")
PATIENT_ID, STUDY_UID, ACCESSION = "0010,0020", "0020,000D", "0008,0050"


def _require_gdcm() -> None:
    """Skip only where Debian has no python3-gdcm at all; fail where it could be installed."""
    found = subprocess.run([SYSTEM_PYTHON, "-c", "import gdcm"], capture_output=True)
    if found.returncode == 0:
        return
    known = subprocess.run(["apt-cache", "show", "python3-gdcm"], capture_output=True)
    if known.returncode != 0:
        pytest.skip("python3-gdcm is not available on this system")
    pytest.fail("python3-gdcm is not installed: apt-get install python3-gdcm (scripts/test.sh)")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[qa.Served]:
    _require_gdcm()
    yield from qa.build(tmp_path_factory.mktemp("gdcm"))


def gdcm_find(port: int, *keys: str) -> dict[str, Any]:
    """A study-level C-FIND by GDCM, as WS: its verdict and the answers it returned."""
    result = subprocess.run(
        [SYSTEM_PYTHON, str(CLIENT), "127.0.0.1", str(port), "WS", "EDGE", *keys],
        capture_output=True, text=True, timeout=90)
    lines = result.stdout.strip().splitlines()
    assert lines, f"GDCM printed nothing: {result.stderr[-2000:]}"
    return json.loads(lines[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize(("keys", "expected"), [
    ((f"{PATIENT_ID}=*",), {"P1", "P2", "P3", "P5"}),  # 4 answers
    ((f"{ACCESSION}=ACC*", f"{PATIENT_ID}="), {"P1", "P2", "P3"}),  # an odd count: 3
])
def test_gdcm_gets_every_c_find_answer_without_command_elements(
        served: qa.Served, keys: tuple[str, ...], expected: set[str]) -> None:
    found = gdcm_find(served.port, f"{STUDY_UID}=", *keys)
    assert found["ok"]
    assert sorted(a["patient_id"] for a in found["answers"]) == sorted(expected)
    assert not any(a["command_elements"] for a in found["answers"])
