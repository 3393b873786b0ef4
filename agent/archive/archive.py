"""The archive: durable files plus their index, and the one way data gets into it.

``ingest`` turns a fully received temp file into an archived, indexed instance. It
returns only once the file is fsynced, renamed into place, its directory fsynced and its
index row committed; any failure raises StoreError carrying the DICOM status to answer,
and leaves nothing half-written where a reader could see it.
"""

from __future__ import annotations

import filecmp
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, TypeVar

from pydicom.dataset import Dataset

from agent.archive import durable, prefetch_jobs
from agent.archive.arrivals import Arrivals
from agent.archive.header import read_header, timestamp
from agent.archive.index import (
    Counts,
    Index,
    InstanceRecord,
    add_conflict,
    add_instance,
    count_untrusted,
    remove_instances,
)
from agent.archive.layout import Layout, require_uid
from agent.archive.outbox import Outbox, add_jobs, drop_jobs
from agent.archive.pacs_commits import PacsCommits
from agent.archive.query import StoredInstance, resolve
from agent.archive.rebase import Rebased, rebase
from agent.archive.structure import check_file
from agent.archive.studies import StudyBook, note_instance
from agent.dicom.models import Level, Model
from agent.dicom.status import DOES_NOT_MATCH, OUT_OF_RESOURCES
from agent.errors import StoreError

log = logging.getLogger(__name__)

StoreOutcome = Literal["stored", "duplicate", "conflict"]
T = TypeVar("T")


class Routing(Protocol):
    """Where an archived instance is to be forwarded, decided once, when it is indexed, and
    who hears that jobs were queued. The archive is given one when it is made (the forwarding
    configuration's, ``agent.forward.rules.ConfiguredRouting``), so that every way in
    (ingest, start-up recovery) routes alike, whatever order the agent builds its parts in.
    """

    def destinations(self, header: Dataset, calling_ae: str) -> Sequence[str]:
        """The peers the instance goes to."""

    def per_study(self, header: Dataset, calling_ae: str) -> Collection[str]:
        """Those of them whose jobs are held until the instance's study is complete."""

    def queued(self, destinations: Sequence[str]) -> None:
        """Jobs were committed for these peers (never blocks: called while receiving)."""


class NoRouting:
    """An archive that forwards nothing (a reindex, the forwarding process's own handle)."""

    def destinations(self, header: Dataset, calling_ae: str) -> Sequence[str]:
        """Nowhere."""
        return ()

    def per_study(self, header: Dataset, calling_ae: str) -> Collection[str]:
        """Nothing held."""
        return ()

    def queued(self, destinations: Sequence[str]) -> None:
        """Nobody to tell."""


class Prefetching(Protocol):
    """Which new studies queue a prefetch of their patient's priors (``[[prefetch]]``),
    asked inside the indexing transaction, and who hears that one was queued: given to
    the archive when it is made, as its routing is
    (``agent.prefetch.triggers.ConfiguredPrefetching``)."""

    def priors_from(self, calling_ae: str) -> Sequence[str]:
        """The peers a new study from ``calling_ae`` pulls priors from (none: no rule)."""

    def queued(self) -> None:
        """A prefetch job was committed (never blocks: called while receiving)."""


class NoPrefetching:
    """An archive that queues no prefetch (a reindex, a test, the forwarding process)."""

    def priors_from(self, calling_ae: str) -> Sequence[str]:
        """Nowhere."""
        return ()

    def queued(self) -> None:
        """Nobody to tell."""


def no_floor() -> int:
    """No free-space floor."""
    return 0


def always_trusted() -> bool:
    """A clock nobody judges (a reindex, a test): trusted."""
    return True


@dataclass(frozen=True)
class Stored:
    """What ``ingest`` did with an instance."""

    outcome: StoreOutcome
    sop_instance_uid: str
    path: Path
    size: int


class Archive:
    """Files under ``root/archive`` and the SQLite index that describes them."""

    def __init__(
        self,
        root: Path,
        *,
        floor: Callable[[], int] = no_floor,
        routing: Routing | None = None,
        clock_trusted: Callable[[], bool] = always_trusted,
        prefetching: Prefetching | None = None,
    ) -> None:
        self.layout = Layout(root)
        self.layout.create()
        self.floor = floor  # free bytes to keep, as the configuration in force says
        # whether the system clock is trusted now (the agent's status model judges it; the
        # archive sits below it and only asks): arrivals are flagged while it is not, and
        # retention deletes nothing by age
        self.clock_trusted = clock_trusted
        self.routing: Routing = routing or NoRouting()
        self.prefetching: Prefetching = prefetching or NoPrefetching()
        self._prefetched = threading.local()  # index_new queued a prefetch in this thread
        self.index = Index(self.layout.index_path)
        self.outbox = Outbox(self.index)
        self.pacs_commits = PacsCommits(self.index)
        # study completeness, the evidence API; a study made complete releases held jobs
        self.studies = StudyBook(self.index, self.routing.queued)
        self.arrivals = Arrivals()  # who waits for which instances (a fall-through retrieve)
        self._placing = threading.Lock()

    def index_new(
        self, conn: sqlite3.Connection, record: InstanceRecord, header: Dataset
    ) -> Sequence[str]:
        """Index an instance, queue its forwards and count it in its study, in the caller's
        transaction; return the destinations that got jobs to send now (its own, and
        those a study it completes released).

        Jobs for destinations that act per study are queued held, before the study is
        counted: an instance that completes its study (the last one an MPPS names) is
        released with the others in this same transaction."""
        destinations = self.routing.destinations(header, record.calling_ae)
        held = set(self.routing.per_study(header, record.calling_ae)) & set(destinations)
        study_uid = str(record.levels[Level.STUDY]["StudyInstanceUID"])
        sources = self.prefetching.priors_from(record.calling_ae)
        fresh = bool(sources) and not prefetch_jobs.study_held(conn, study_uid)
        add_instance(conn, record, clock_untrusted=not self.clock_trusted())
        add_jobs(conn, record.sop_instance_uid, destinations, time.time(), held)
        if fresh and self._queue_prefetch(conn, record, sources):
            self._prefetched.queued = True  # told after the commit (``_ingest``)
        released = note_instance(
            conn, study_uid, record.sop_instance_uid, record.calling_ae, record.received_at
        )
        sending = [name for name in destinations if name not in held]
        return sending + sorted(released - set(sending))

    def _queue_prefetch(
        self, conn: sqlite3.Connection, record: InstanceRecord, sources: Sequence[str]
    ) -> bool:
        """Queue a prefetch of the patient's priors from each of ``sources`` for the new
        study ``record`` begins; True if any was queued."""
        study, series = record.levels[Level.STUDY], record.levels[Level.SERIES]
        modality = (series.get("Modality") or "").strip().upper()
        queued = False
        for source in sources:
            trigger = prefetch_jobs.Trigger(
                patient_id=str(record.levels[Level.PATIENT].get("PatientID") or ""),
                trigger_study=str(study["StudyInstanceUID"]),
                trigger=prefetch_jobs.STUDY,
                source=record.calling_ae,
                priors_from=source,
                modalities=(modality,) if modality else (),
                study_date=(study.get("StudyDate") or "").strip(),
            )
            queued = prefetch_jobs.add(conn, trigger, time.time()) or queued
        return queued

    def prefetch_queued(self) -> None:
        """After a commit in this thread: tell ``prefetching`` if ``index_new`` queued a
        prefetch in it (each thread indexes in its own transactions, so the flag it
        set is its own and the job is committed when it reads it)."""
        if getattr(self._prefetched, "queued", False):
            self._prefetched.queued = False
            self.prefetching.queued()

    def resolve(self, model: Model, identifier: Dataset) -> list[StoredInstance]:
        """The archived instances a retrieve identifier names (its unique keys only)."""
        with self.index.reading() as conn:
            return resolve(conn, model, identifier)

    def remove(self, paths: Collection[str]) -> None:
        """Delete archived instances for good, with their forward jobs: the files first,
        so a crash in between leaves rows that start-up recovery drops."""
        for path in paths:
            durable.remove_quietly(self.layout.absolute(path))
        with self.index.transaction() as conn:
            drop_jobs(conn, paths)
            remove_instances(conn, set(paths))

    def untrusted_arrivals(self) -> int:
        """How many archived instances arrived while the clock was not trusted (their
        arrival times are flagged as doubtful)."""
        with self.index.reading() as conn:
            return count_untrusted(conn)

    def rebase_clock(self, seconds: float) -> Rebased:
        """The system clock jumped by ``seconds`` (+ forward, - back): move every time the
        index schedules by wall clock (retries, commitment deadlines, delivery times that
        retention ages) by as much, in one transaction, so that what was due in a minute
        is still due in a minute: nothing fires at once, nothing waits for the jump."""
        with self.index.transaction() as conn:
            return rebase(conn, seconds)

    def close(self) -> None:
        """Close the index."""
        self.index.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def counts(self) -> Counts:
        """How much the archive holds."""
        return self.index.counts()

    def newest_arrival(self) -> str | None:
        """The newest arrival time the index records (ISO 8601; None: it holds nothing)."""
        return self.index.newest_arrival()

    def free_bytes(self) -> int:
        """Free space on the archive's filesystem."""
        return durable.free_bytes(self.layout.root)

    @property
    def min_free_bytes(self) -> int:
        """The free-space floor in force."""
        return self.floor()

    def below_floor(self) -> bool:
        """True when free space is under the configured floor."""
        return self.free_bytes() < self.min_free_bytes

    def ingest(
        self, incoming: Path, *, sop_class_uid: str, sop_instance_uid: str, calling_ae: str
    ) -> Stored:
        """Archive a received file (consumed: moved or deleted) or raise StoreError."""
        try:
            stored = self._ingest(incoming, sop_class_uid, sop_instance_uid, calling_ae)
        finally:
            durable.remove_quietly(incoming)
        self.arrivals.arrived(stored.sop_instance_uid)
        return stored

    def _ingest(
        self, incoming: Path, sop_class_uid: str, sop_instance_uid: str, calling_ae: str
    ) -> Stored:
        if self.below_floor():
            raise StoreError(OUT_OF_RESOURCES, "free disk space is below the floor")
        header_end = check_file(incoming)  # every tag and length fits, as its context says
        header = read_header(incoming, header_end)
        _check_matches_command(header.sop_class_uid, sop_class_uid, "SOP Class UID")
        _check_matches_command(header.sop_instance_uid, sop_instance_uid, "SOP Instance UID")
        final = self.layout.instance_path(
            header.study_uid, header.series_uid, header.sop_instance_uid
        )
        size = incoming.stat().st_size
        record = header.record(
            path=self.layout.relative(final),
            size=size,
            calling_ae=calling_ae,
            received_at=timestamp(),
        )
        _sync(incoming)
        with self._placing:
            known = self._known_copy(record.sop_instance_uid)
            if known is not None:
                return self._resolve_reuse(
                    incoming, known, record.sop_instance_uid, size, calling_ae
                )
            _guarded(durable.place, incoming, final, self.layout.archive_dir)
            # unsynced: recovery restores the row, its calling AE and its forwards from the file
            destinations = _commit(
                lambda conn: self.index_new(conn, record, header.dataset),
                self.index,
                undo=final,
                synced=False,
            )
        self.routing.queued(destinations)
        self.prefetch_queued()
        return Stored("stored", record.sop_instance_uid, final, size)

    def _known_copy(self, sop_uid: str) -> Path | None:
        """The archived file for ``sop_uid``; a row whose file vanished is dropped."""
        found = self.index.lookup(sop_uid)
        if found is None:
            return None
        path = self.layout.absolute(found[0])
        if path.exists():
            return path
        log.error("indexed file %s is missing; replacing it with the copy received now", found[0])
        with self.index.transaction() as conn:
            remove_instances(conn, {found[0]})
        return None

    def _resolve_reuse(
        self, incoming: Path, known: Path, sop_uid: str, size: int, calling_ae: str
    ) -> Stored:
        """Same UID again: identical bytes are a no-op, different bytes are kept aside."""
        if known.stat().st_size == size and filecmp.cmp(known, incoming, shallow=False):
            return Stored("duplicate", sop_uid, known, size)
        target = self.layout.conflict_path(require_uid(sop_uid, "SOP Instance UID"), time.time_ns())
        _guarded(durable.place, incoming, target, self.layout.root)
        relative = self.layout.relative(target)
        _commit(
            lambda conn: add_conflict(conn, sop_uid, relative, size, calling_ae, timestamp()),
            self.index,
            undo=target,
        )
        log.warning(
            "instance reused a known SOP Instance UID with different content; kept aside as %s",
            self.layout.relative(target),
        )
        return Stored("conflict", sop_uid, target, size)


def _commit(
    write: Callable[[sqlite3.Connection], T],
    index: Index,
    *,
    undo: Path,
    synced: bool = True,
) -> T:
    """Run ``write`` in one transaction and return what it returns; on failure remove the
    placed file and answer 0xA700."""
    try:
        with index.transaction(synced=synced) as conn:
            return write(conn)
    except (sqlite3.Error, OSError) as exc:
        durable.remove_quietly(undo)
        raise StoreError(OUT_OF_RESOURCES, f"cannot index the instance: {exc}") from None


def _check_matches_command(found: str, expected: str, what: str) -> None:
    if found.rstrip("\0 ") != expected.rstrip("\0 "):
        raise StoreError(DOES_NOT_MATCH, f"{what} in the data set differs from the command's")


def _sync(path: Path) -> None:
    """fsync the received data; a failed fsync means the data is lost, never acknowledged."""
    _guarded(durable.fsync_file, path)


def _guarded(operation: Callable[..., None], *args: Path) -> None:
    """Run a durable-file operation, mapping any OS error to 0xA700."""
    try:
        operation(*args)
    except OSError as exc:
        raise StoreError(OUT_OF_RESOURCES, f"cannot write to the archive: {exc.strerror}") from None
