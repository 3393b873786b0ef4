"""Hostile C-FIND identifiers: linear wildcard matching and bounded identifiers.

Each case froze or flooded the agent before: a wildcard list that backtracked for 20 s
while every C-ECHO timed out, a 1,000-deep sequence that took gigabytes, a Specific
Character Set of a thousand unknown terms that wrote a warning per term.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dicomgen
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE

from tests import scu
from tests.qr_archive import find
from tests.qr_archive import identifier as q
from tests.support import AgentProcess, dcmtk, free_port, peer, write_config

LONG = "A" * 64
VERIFICATION = "1.2.840.10008.1.1"


@dataclass
class Served:
    """An agent child process (its own interpreter, memory and recursion limit)."""

    process: AgentProcess
    port: int

    @property
    def pid(self) -> int:
        assert self.process.proc is not None
        return self.process.proc.pid


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("bounds")
    port = free_port()
    config = write_config(
        root / "agent.toml",
        {"port": port, "bind": "127.0.0.1", "data_dir": str(root / "data"),
         "min_free_mb": 0},
        {"CT": peer("MODALITY", allow=("store",)), "WS": peer("WS", allow=("echo", "find"))})
    study = dicomgen.Study(description=LONG)
    files = dicomgen.write_series(root / "src", 2, size=8, study=study)
    process = AgentProcess(config, root / "data").start()
    try:
        assert scu.store(port, files) == [0, 0]
        yield Served(process, port)
    finally:
        process.stop()


def _echo_seconds(port: int) -> float:
    """Seconds a C-ECHO took to be answered (inf if it was not)."""
    ae = AE(ae_title="WS")
    ae.add_requested_context(VERIFICATION)
    started = time.monotonic()
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGE")
    try:
        status = assoc.send_c_echo() if assoc.is_established else None
    finally:
        if assoc.is_established:
            assoc.release()
    return time.monotonic() - started if status and status.Status == 0 else float("inf")


def _peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize("value", [
    "*A*A*A*A*A*A*A*B\\Z",  # a list: matched in Python
    "*A*A*A*A*A*A*A*A*A*A*A*A*A*A*B\\Z",  # twice the stars: 8**7 times longer before
    "*A*A*A*A*A*A*A*A*A*A*A*A*A*A*B",  # a single value: matched by SQLite's GLOB
])
def test_a_backtracking_wildcard_does_not_hold_up_anyone(served: Served,
                                                         value: str) -> None:
    port = served.port
    command = [dcmtk("findscu"), "-aet", "WS", "-aec", "EDGE", "-S", "-k",
               "QueryRetrieveLevel=STUDY", "-k", f"StudyDescription={value}", "-k",
               "StudyInstanceUID", "127.0.0.1", str(port)]
    query = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _echo_seconds(port) < 2.0  # answered while the query runs, not after it
        _out, err = query.communicate(timeout=30)
    finally:
        query.kill()
    assert query.returncode == 0, err
    assert "Find Response" not in err or "Pending" not in err  # nothing matched


def test_the_same_wildcards_still_match_what_they_should(served: Served) -> None:
    port = served.port
    answers, final = find(port, q("STUDY", StudyDescription="*A*A*A*A*A*A*A*A\\Z",
                                  StudyInstanceUID=""))
    assert final == 0 and len(answers) == 1
    answers, final = find(port, q("STUDY", StudyDescription="A?A*A", StudyInstanceUID=""))
    assert final == 0 and len(answers) == 1


def _nested(depth: int) -> Dataset:
    """A ProcedureCodeSequence whose items nest ``depth`` deep."""
    inner = Dataset()
    inner.CodeValue = "X"
    for _ in range(depth):
        outer = Dataset()
        outer.ProcedureCodeSequence = Sequence([inner])
        inner = outer
    return inner


def test_a_thousand_deep_sequence_is_refused_without_growing(served: Served) -> None:
    port = served.port
    before = _peak_rss_kb(served.pid)
    query = _nested(1000)
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20000)  # for our own encoder: the agent keeps its default
    try:
        answers, final = find(port, query)
    finally:
        sys.setrecursionlimit(limit)
    assert (answers, final) == ([], 0xC000)
    assert _peak_rss_kb(served.pid) - before < 50_000  # kB; it was gigabytes
    assert _echo_seconds(port) < 2.0


@pytest.mark.parametrize(("keys", "why"), [
    ({"StudyInstanceUID": "\\".join(["1.2.3.4.5.6.7.8.9"] * 20_000)}, "bytes"),
    ({"ProcedureCodeSequence": Sequence([Dataset() for _ in range(40)])}, "items"),
    ({"StudyDescription": "x" * 40_000}, "bytes"),
])
def test_oversized_identifiers_are_refused_c000(served: Served, keys: dict[str, object],
                                                why: str) -> None:
    answers, final = find(served.port, q("STUDY", **keys))
    assert (answers, final) == ([], 0xC000)


def test_a_flood_of_charset_terms_is_one_refusal_and_few_log_lines(
        served: Served) -> None:
    log_before = served.process.log.read_text().count("\n")
    query = q("STUDY", StudyInstanceUID="", PatientName="DOE*")
    query.SpecificCharacterSet = ["X"] * 512
    answers, final = find(served.port, query)
    assert (answers, final) == ([], 0xC000)
    assert _echo_seconds(served.port) < 2.0
    written = served.process.log.read_text().count("\n") - log_before
    assert written <= 3, served.process.log.read_text()[-2000:]


def test_an_unknown_charset_term_is_refused_but_a_known_list_is_served(
        served: Served) -> None:
    query = q("STUDY", StudyInstanceUID="", PatientName="DOE*")
    query.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    _answers, final = find(served.port, query)
    assert final == 0
    query.SpecificCharacterSet = "NO SUCH CHARSET"
    assert find(served.port, query) == ([], 0xC000)
