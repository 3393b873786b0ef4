#!/usr/bin/env python3
"""Acting per study: how soon a study is complete, and how soon it is at the PACS.

    python scripts/bench_study.py [--count 500] [--size 256] [--few 20] [--quiet 2]
        [--repeat 3] [--workdir DIR]

pynetdicom plays the scanner: one association with MPPS and CT Image Storage, N-CREATE
(IN PROGRESS), the C-STOREs, and (where MPPS is used) N-SET COMPLETED referencing every
instance right after the last store's Success. The agent runs as ``edge-agent run``.

(a) From the last C-STORE Success to the study being ``complete`` (the completing
transaction's own time, ``study_state.changed_at``, read from the index): under MPPS
(``--few`` instances, the quiet rule far off) and under the quiet rule (no MPPS,
``quiet_seconds = --quiet``: the figure is quiet_seconds plus the judging delay, the
housekeeping tick being 1 s).

(b) From the first C-STORE to Orthanc holding all ``--count`` instances (REST
``/statistics``, polled every 20 ms), the agent forwarding with ``forward.when =
"complete"`` (MPPS completing the study) against ``"instance"`` (same messages).

Medians of --repeat rounds; each round on a fresh agent (and Orthanc).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import dicomgen
from bench.peers import EdgeAgent, Orthanc, wait_for
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from agent.archive.index import connect

MOD_AE = "BENCHCT"
MPPS = "1.2.840.10008.3.1.2.3.3"
CT = "1.2.840.10008.5.1.4.1.1.2"
FAR = 3600  # a quiet period that never ends within a run


def agent_tables(*, quiet: float, pacs_port: int | None = None, when: str = "instance") -> str:
    """The scanner's peer, the quiet period and, with ``pacs_port``, forwarding to Orthanc."""
    text = (f'\n[peers.CT]\nae_title = "{MOD_AE}"\nhost = "127.0.0.1"\nport = 104\n'
            'allow = ["echo", "store", "mpps"]\n')
    if pacs_port is not None:
        text += (f'\n[peers.PACS]\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n'
                 f'port = {pacs_port}\nallow = ["echo"]\n'
                 f'\n[forward]\nto = ["PACS"]\nwhen = "{when}"\n')
    return text + f"\n[study]\nquiet_seconds = {quiet}\n"


def _item(**values: object) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def creation(study_uid: str) -> Dataset:
    """N-CREATE IN PROGRESS with the attributes PS3.4 Table F.7.2-1 requires."""
    ds = Dataset()
    ds.ScheduledStepAttributesSequence = [_item(
        StudyInstanceUID=study_uid, ReferencedStudySequence=[], AccessionNumber="ACC0001",
        RequestedProcedureID="RP1", RequestedProcedureDescription="",
        ScheduledProcedureStepID="", ScheduledProcedureStepDescription="",
        ScheduledProtocolCodeSequence=[])]
    for keyword, value in (
        ("PatientName", "DOE^JOHN"), ("PatientID", "EDGE0001"), ("PatientBirthDate", ""),
        ("PatientSex", ""), ("ReferencedPatientSequence", []),
        ("PerformedProcedureStepID", "PPS1"), ("PerformedStationAETitle", MOD_AE),
        ("PerformedStationName", ""), ("PerformedLocation", ""),
        ("PerformedProcedureStepStartDate", "20261207"),
        ("PerformedProcedureStepStartTime", "031500"),
        ("PerformedProcedureStepStatus", "IN PROGRESS"),
        ("PerformedProcedureStepDescription", ""), ("PerformedProcedureTypeDescription", ""),
        ("ProcedureCodeSequence", []), ("PerformedProcedureStepEndDate", ""),
        ("PerformedProcedureStepEndTime", ""), ("Modality", "CT"), ("StudyID", ""),
        ("PerformedProtocolCodeSequence", []), ("PerformedSeriesSequence", []),
    ):
        setattr(ds, keyword, value)
    return ds


def ending(series_uid: str, sop_uids: list[str]) -> Dataset:
    """N-SET COMPLETED referencing every instance sent."""
    ds = Dataset()
    ds.PerformedProcedureStepStatus = "COMPLETED"
    ds.PerformedProcedureStepEndDate = "20261207"
    ds.PerformedProcedureStepEndTime = "032000"
    ds.PerformedSeriesSequence = [_item(
        PerformingPhysicianName="", ProtocolName="CHEST", OperatorsName="",
        SeriesInstanceUID=series_uid, SeriesDescription="", RetrieveAETitle="",
        ReferencedImageSequence=[_item(ReferencedSOPClassUID=CT, ReferencedSOPInstanceUID=u)
                                 for u in sop_uids],
        ReferencedNonImageCompositeSOPInstanceSequence=[])]
    return ds


class Scanner:
    """One association to the agent, as a CT sends a study: MPPS and its images."""

    def __init__(self, port: int) -> None:
        ae = AE(ae_title=MOD_AE)
        ae.add_requested_context(MPPS)
        ae.add_requested_context(CT)
        self.assoc = ae.associate("127.0.0.1", port, ae_title="EDGE")
        if not self.assoc.is_established:
            raise RuntimeError("the agent refused the scanner's association")

    def create(self, study_uid: str) -> str:
        step = generate_uid()
        status, _ = self.assoc.send_n_create(creation(study_uid), MPPS, step)
        _check(status, "N-CREATE")
        return step

    def store(self, images: list[Dataset]) -> tuple[float, float]:
        """C-STORE each; (wall time before the first, wall time of the last Success)."""
        first = time.time()
        for ds in images:
            _check(self.assoc.send_c_store(ds), "C-STORE")
        return first, time.time()

    def complete(self, step: str, images: list[Dataset]) -> None:
        ds = ending(str(images[0].SeriesInstanceUID), [str(i.SOPInstanceUID) for i in images])
        status, _ = self.assoc.send_n_set(ds, MPPS, step)
        _check(status, "N-SET")

    def close(self) -> None:
        self.assoc.release()


def _check(status: Dataset | None, what: str) -> None:
    if not status or int(status.Status) != 0:
        raise RuntimeError(f"{what} failed: {status}")


def completed_at(agent: EdgeAgent, study_uid: str, timeout: float = 120) -> float:
    """When the agent made the study complete (its transaction's time), once it has."""
    index = agent.workdir / "data" / "index.sqlite"

    def look() -> float | None:
        conn = connect(index, readonly=True)
        try:
            row = conn.execute("SELECT state, changed_at FROM study_state"
                               " WHERE StudyInstanceUID = ?", (study_uid,)).fetchone()
        finally:
            conn.close()
        return float(row[1]) if row and row[0] == "complete" else None

    return float(wait_for(look, timeout, "the study complete", 0.02))


def to_complete(workdir: Path, few: int, size: int, *, quiet: float | None) -> float:
    """Seconds from the last C-STORE Success to complete: by MPPS (``quiet`` None) or by
    the quiet rule (``quiet`` seconds, no MPPS)."""
    exam = dicomgen.Study()
    images = list(dicomgen.series(few, study=exam, size=size))
    tables = agent_tables(quiet=FAR if quiet is None else quiet)
    with EdgeAgent(workdir / f"complete-{time.monotonic_ns()}", tables) as agent:
        scanner = Scanner(agent.port)
        try:
            step = scanner.create(exam.study_uid) if quiet is None else ""
            _first, last = scanner.store(images)
            if quiet is None:
                scanner.complete(step, images)
        finally:
            scanner.close()
        return completed_at(agent, exam.study_uid) - last


def to_orthanc(workdir: Path, images: list[Dataset], study_uid: str, when: str) -> float:
    """Seconds from the first C-STORE to Orthanc holding every instance of the study,
    the agent forwarding with ``forward.when = when``; MPPS as a scanner sends it."""
    with Orthanc(workdir / f"pacs-{time.monotonic_ns()}") as orthanc:
        tables = agent_tables(quiet=FAR, pacs_port=orthanc.port, when=when)
        with EdgeAgent(workdir / f"fwd-{time.monotonic_ns()}", tables) as agent:
            scanner = Scanner(agent.port)
            try:
                step = scanner.create(study_uid)
                first, _last = scanner.store(images)
                scanner.complete(step, images)
            finally:
                scanner.close()
            count = len(images)
            wait_for(lambda: orthanc.count() >= count, 900, "the study at Orthanc", 0.02)
            return time.time() - first


def measure(workdir: Path, *, count: int, size: int, few: int, quiet: float,
            repeat: int, say: Callable[[str], None] = print) -> dict[str, float]:
    """Every figure, the median of ``repeat`` rounds."""
    figures: dict[str, list[float]] = {"mpps": [], "quiet": [], "complete": [], "instance": []}
    exam = dicomgen.Study()
    images = list(dicomgen.series(count, study=exam, size=size))
    for round_number in range(1, repeat + 1):
        figures["mpps"].append(to_complete(workdir, few, size, quiet=None))
        figures["quiet"].append(to_complete(workdir, few, size, quiet=quiet))
        for when in ("complete", "instance"):
            figures[when].append(to_orthanc(workdir, images, exam.study_uid, when))
        say(f"round {round_number}: " + ", ".join(
            f"{name} {values[-1]:.3f} s" for name, values in figures.items()))
    return {name: statistics.median(values) for name, values in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=500, help="instances sent to Orthanc")
    parser.add_argument("--size", type=int, default=256, help="rows and columns")
    parser.add_argument("--few", type=int, default=20, help="instances in (a)'s study")
    parser.add_argument("--quiet", type=float, default=2.0, help="quiet_seconds in (a)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-study-"))
    try:
        got = measure(workdir, count=args.count, size=args.size, few=args.few,
                      quiet=args.quiet, repeat=args.repeat)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"(a) last C-STORE Success -> complete, MPPS (N-SET right after): "
          f"{got['mpps'] * 1000:.0f} ms")
    print(f"(a) last C-STORE Success -> complete, quiet rule (quiet_seconds = {args.quiet:g}):"
          f" {got['quiet']:.2f} s (judging delay {got['quiet'] - args.quiet:.2f} s)")
    print(f"(b) first C-STORE -> {args.count} instances at Orthanc: when = \"complete\" "
          f"{got['complete']:.2f} s, when = \"instance\" {got['instance']:.2f} s, ratio "
          f"{got['complete'] / got['instance']:.2f}")


if __name__ == "__main__":
    main()
