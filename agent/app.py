"""Wires the parts together and owns their orderly start and stop."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable

from agent import reconfigure, threads, tls
from agent.archive import Archive, Layout
from agent.archive.lock import DataDirLock
from agent.archive.recovery import recover
from agent.archive.stale import StaleFiles
from agent.config import Config
from agent.errors import AgentError, ConfigError
from agent.fallthrough.remote import Remote
from agent.forward import retention
from agent.forward.mpps import MppsForwarder
from agent.forward.process import ForwardingProcess
from agent.forward.rules import ConfiguredRouting
from agent.metrics.endpoint import MetricsEndpoint
from agent.net import configure_pynetdicom, peerlog, ports
from agent.net.commit_scp import CommitmentReporter
from agent.net.scp import DicomServer
from agent.prefetch.triggers import ConfiguredPrefetching
from agent.prefetch.worker import PrefetchWorker
from agent.pull import Landing
from agent.reconfigure import LiveConfig
from agent.status import Snapshot, State, StatusModel
from agent.status_disk import IngestRate
from agent.status_file import publish
from agent.studies.judge import Clock, StudyJudge
from agent.timekeeping import Arrivals, ClockJudge, SyncSources

log = logging.getLogger(__name__)

TICK = 1.0
# An unchanged status is written again this often: the file's age then proves that the
# housekeeping loop runs (agent.status.STUCK_AFTER says when it is too old). A write to
# the page cache, replaced by rename: cheap, and few enough for an SD card.
REFRESH_EVERY = 5.0
# between ticks a change is written at most this often, so that `edge-agent status` right
# after a sender finished already counts what it sent
PUBLISH_GAP = 0.2
STALE_TEMP_AFTER = 300.0
SWEEP_EVERY = 60.0
HOUSEKEEPER_STOPS_WITHIN = 5.0  # a tick's longest part, a retention sweep, has 5 s


def _clock_readings() -> tuple[float, float]:
    return time.time(), time.monotonic()


class Reporter:
    """Who hears of the agent's life cycle. This base hears nothing (an agent nobody
    supervises); the box's ``BoxReporter`` tells systemd."""

    def ready(self, summary: str) -> None:
        """Startup or a reload is over; ``summary`` is the one-line status."""

    def status(self, summary: str) -> None:
        """The one-line status changed."""

    def watchdog(self) -> None:
        """Housekeeping has just proved that the agent works."""

    def reloading(self) -> None:
        """A reload begins."""

    def stopping(self) -> None:
        """Shutdown begins."""


class Agent:
    """The running agent: archive, DICOM server, forwarder and housekeeping, started and
    stopped together. The box's LEDs, console and systemd are wired above it
    (``agent.field.box``)."""

    def __init__(self, config: Config, *, reporter: Reporter | None = None) -> None:
        # the configuration in force: every long-lived part is given ``live.current``
        self.live = LiveConfig(config)
        self.reporter = reporter if reporter is not None else Reporter()
        self.status = StatusModel()
        self.layout = Layout(config.agent.data_dir)
        self._lock = DataDirLock(self.layout.run_dir)
        self._locked = False  # this agent holds the data directory (and its status file)
        self.archive: Archive | None = None
        self.server: DicomServer | None = None
        self.commitments: CommitmentReporter | None = None  # storage commitment reports
        self.forwarder: ForwardingProcess | None = None
        self.mpps_forwarder: MppsForwarder | None = None  # passes MPPS on (forward.mpps_to)
        self.metrics: MetricsEndpoint | None = None  # /metrics and /healthz ([metrics])
        self.prefetcher: PrefetchWorker | None = None  # pulls priors ([[prefetch]])
        self.study_clock: Clock = time.monotonic  # the quiet and give-up timers' (tests')
        self.studies: StudyJudge | None = None  # judges quiet studies, each tick
        self.clock_sources = SyncSources()  # where "synchronised" is read (tests': a tmp file)
        # (wall, monotonic) for the clock judge, each tick (tests': a boot at 1970, a jump)
        self.clock_readings: Callable[[], tuple[float, float]] = _clock_readings
        self.clock: ClockJudge | None = None  # judges the system clock, each tick
        self.judges_clock = True  # False: a test sets the clock's state on the model itself
        self._arrivals = Arrivals()  # the newest arrival the clock must not fall behind
        self._stop = threading.Event()
        self._housekeeper: threading.Thread | None = None
        self._reloading = threading.Lock()
        self._published = -1  # the status version last written to run/status.json
        self._published_at = 0.0  # and when (monotonic)
        self._summary = ""  # the STATUS= line last sent to systemd
        self._ingest = IngestRate()  # the recent ingest rate: the disk's time to the floor
        self._stale = StaleFiles(self.layout.tmp_dir)  # receives that died left these
        self._clock_trusted = True  # as last said in the log

    @property
    def config(self) -> Config:
        """The configuration in force."""
        return self.live.current()

    def start(self) -> None:
        """Check what start-up needs, lock the data dir, recover the archive, start
        listening, then report SERVING. A failure of the checks leaves nothing written."""
        self._preflight()
        self._lock.acquire()
        self._locked = True
        if self.config.agent.allow_unknown:
            log.warning(
                "unknown AEs may %s: fine for a first test, not for a hospital network",
                " and ".join(sorted(self.config.agent.allow_unknown)),
            )
        current = self.live.current
        self.forwarder = ForwardingProcess(current, self.status)
        prefetching = ConfiguredPrefetching(current)
        self.archive = Archive(
            self.layout.root,
            floor=lambda: current().agent.min_free_mb * 1048576,
            routing=ConfiguredRouting(current, self.forwarder.wake),
            clock_trusted=lambda: self.status.snapshot().clock.trusted,
            prefetching=prefetching,
        )
        self._arrivals.note(self.archive.newest_arrival(), trusted=True)
        self.clock = ClockJudge(
            self._arrivals.newest, lambda: current().clock, self.clock_sources
        )
        self._judge_clock()  # before recovery indexes anything: its arrivals are flagged too
        found = recover(self.archive)
        log.info("archive ready: %s", found)
        self.studies = StudyJudge(self.archive.studies, current, self.study_clock)
        self.commitments = CommitmentReporter(current, self.archive, self.status)
        self.mpps_forwarder = MppsForwarder(current, self.archive)
        self.server = DicomServer(
            current,
            self.archive,
            self.status,
            self.commitments.wake,
            on_mpps_final=self.archive.studies.mpps_final,
            on_mpps_queued=self.mpps_forwarder.wake,
            fall_through=Remote(current, self.archive, self.status),
        )
        self.server.start()
        self.commitments.start()
        self.mpps_forwarder.start()
        self.forwarder.start(self.archive)
        self.prefetcher = PrefetchWorker(current, self.archive, self.landing(), self.status)
        prefetching.listen(self.prefetcher.wake)
        self.prefetcher.start()  # after the listener: its C-MOVEs land there
        if self.config.metrics is not None:
            self.metrics = MetricsEndpoint(current, self.status)
            self.metrics.start()
        self._housekeeper = threading.Thread(
            target=self._housekeep, name="housekeeping", daemon=True
        )
        self._housekeeper.start()
        self.status.set_state(State.SERVING)
        self.reporter.ready(self.status.snapshot().summary())

    def _preflight(self) -> None:
        """ConfigError naming the key, before anything is written: a port another process
        holds, TLS files that cannot be used, a data directory that cannot be made."""
        settings = self.config.agent
        if settings.plain_listener:
            ports.check_listenable("agent.port", settings.bind, settings.port)
        if self.config.tls is not None:
            ports.check_listenable("tls.port", settings.bind, self.config.tls.port)
            tls.load(self.config.tls)
            exposed = tls.key_exposure(self.config.tls)
            if exposed:
                log.warning("%s", exposed)
        metrics = self.config.metrics
        if metrics is not None:
            ports.check_listenable("metrics.port", metrics.bind, metrics.port)
        try:
            self.layout.create()
        except OSError as exc:
            raise ConfigError(
                "agent.data_dir", f"cannot create {exc.filename or self.layout.root}: "
                f"{exc.strerror or exc}"
            ) from None
        if not os.access(self.layout.run_dir, os.W_OK):
            raise ConfigError("agent.data_dir", f"cannot write in {self.layout.run_dir}")

    def reload(self, new: Config) -> list[str]:
        """Apply ``new`` where it can change live; return the keys that need a restart."""
        with self._reloading:
            self.reporter.reloading()
            effective, later = reconfigure.split(self.config, new)
            effective, contexts, refused = reconfigure.reload_tls(self.config, effective)
            changed = reconfigure.changed_keys(self.config, effective)
            if effective.agent.log_level != self.config.agent.log_level:
                level = effective.agent.log_level.upper()
                logging.getLogger().setLevel(level)
                configure_pynetdicom(debug=level == "DEBUG")
            self.live.replace(effective)  # every part reads it from now on
            if self.server is not None and contexts is not None:
                self.server.renew_tls(contexts)
            if self.metrics is not None and contexts is not None:
                self.metrics.renew_tls()
            if self.forwarder is not None:
                self.forwarder.reconfigured()  # its process holds a copy: send it
            self.status.recovered("configuration")  # the file was read: a refusal is over
            line = reconfigure.outcome(changed, later, refused)
            if refused is not None:
                log.error("%s", line)
                self.status.error(f"TLS reload refused: {refused}", part="tls")
            else:
                log.warning("%s", line)
            self.reporter.ready(self.status.snapshot().summary())
            return later

    def landing(self) -> Landing:
        """Where a retrieve lands instances in this agent: its archive, status and forwarder."""
        if self.archive is None or self.forwarder is None:
            raise AgentError("the agent is not started: nothing to land instances in")
        return Landing(self.archive, self.status, self.forwarder.wake, "this agent")

    def close(self) -> None:
        """Stop serving, flush the status, close the archive and release the data dir."""
        self.reporter.stopping()
        self.status.set_state(State.STOPPING)
        if self.metrics is not None:
            self.metrics.close()  # bounded: its accepting loop ends within half a second
        if self.prefetcher is not None:
            self.prefetcher.stop()  # ends its pull at the next sub-operation
        if self.forwarder is not None:
            self.forwarder.stop_soon()  # its senders finish while associations do
        if self.prefetcher is not None:
            self.prefetcher.close()  # before the listener its C-MOVE lands in
        if self.server is not None:
            self.server.close()
        if self.commitments is not None:
            self.commitments.close()
        if self.mpps_forwarder is not None:
            self.mpps_forwarder.close()
        if self.forwarder is not None:
            self.forwarder.close()
        self._stop.set()
        self.status.nudge()  # the housekeeper may be waiting for a change to publish
        threads.join(self._housekeeper, HOUSEKEEPER_STOPS_WITHIN)
        self.status.set_state(State.STOPPED)
        if self._locked:  # else another agent's status file may be there: not ours to write
            with contextlib.suppress(OSError):
                publish(self.status.snapshot(), self.layout.run_dir)
        if self.archive is not None:
            self.archive.close()
        self._lock.release()
        self._locked = False

    def __enter__(self) -> Agent:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _housekeep(self) -> None:
        """Measure, report and sweep, once a tick, until stopped."""
        last_sweep = time.monotonic()
        unfinished = False  # the last sweep ran out of time: go on next tick
        while not self._stop.is_set():
            try:
                self._measure()
                peerlog.LIMITER.flush()  # report what peers' repeated failures did not write
                snapshot = self.status.snapshot()
                self._report(snapshot)
                if self.studies is not None:  # after the report: its failure never stops that
                    self.studies.tick()
                due = time.monotonic() - last_sweep > SWEEP_EVERY
                if snapshot.below_floor or unfinished or due:
                    unfinished = self._sweep() >= retention.BATCH
                    last_sweep = time.monotonic()
                self.status.recovered("housekeeping")
            except Exception as exc:  # housekeeping must outlive any one failure
                log.exception("housekeeping failed; trying again next tick")
                self.status.error(f"housekeeping: {exc}", part="housekeeping")
            self._between_ticks(TICK)

    def _between_ticks(self, seconds: float) -> None:
        """Wait out a tick, publishing changes as they come (at most every PUBLISH_GAP):
        another process's `edge-agent status` is then not a tick behind the model."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.status.wait_for_change(self._published, remaining)
            snapshot = self.status.snapshot()
            if snapshot.version == self._published or self._stop.is_set():
                continue
            with contextlib.suppress(OSError):  # the next tick tries again, and says why
                self._publish(snapshot)
            self._stop.wait(min(PUBLISH_GAP, max(0.0, deadline - time.monotonic())))

    def _publish(self, snapshot: Snapshot) -> None:
        publish(snapshot, self.layout.run_dir)
        self._published, self._published_at = snapshot.version, time.monotonic()

    def _report(self, snapshot: Snapshot) -> None:
        """Publish the status file, tell systemd, and feed its watchdog if all is well."""
        stale = time.monotonic() - self._published_at >= REFRESH_EVERY
        if snapshot.version != self._published or stale:
            self._publish(snapshot)
        summary = snapshot.summary()
        if summary != self._summary:
            self.reporter.status(summary)
            self._summary = summary
        if snapshot.state not in (State.SERVING, State.FAILED):
            return  # starting or stopping: nothing to prove, and the listener may be closed
        sick = self._sickness()
        if sick is None:
            self.status.beat()
            self.reporter.watchdog()
            if snapshot.state is State.FAILED:
                log.warning("working again: the listener serves and the index answers")
                self.status.set_state(State.SERVING)
                self.status.recovered("health")
        elif snapshot.state is State.SERVING:
            log.error("%s: the systemd watchdog is no longer fed", sick)
            self.status.error(sick, part="health")
            self.status.set_state(State.FAILED)

    def _sickness(self) -> str | None:
        """Why the agent does not work (None: the listener serves and the index answers)."""
        if self.server is None or not self.server.serving():
            return "the DICOM listener is not serving"
        trouble = self.forwarder.trouble() if self.forwarder is not None else None
        if trouble is not None:
            return trouble
        if self.archive is not None:
            return self.archive.index.trouble()
        return None

    def _measure(self) -> None:
        self._judge_clock()
        if self.archive is not None:
            free, floor = self.archive.free_bytes(), self.archive.min_free_bytes
            self._ingest.sample(time.monotonic(), self.status.snapshot().received_bytes)
            self.status.disk(free, free < floor, floor, self._ingest.seconds_to(free - floor))
        if self.server is not None:
            self.status.set_associations(self.server.active_associations())
        if self.forwarder is not None:
            self.forwarder.refresh_status()
        if self.mpps_forwarder is not None:
            self.mpps_forwarder.refresh_status(self.status)
        if self.prefetcher is not None:
            self.prefetcher.refresh_status()

    def _judge_clock(self) -> None:
        """Judge the system clock (``agent.timekeeping``), show it, say once when trust
        is lost and once when it returns, and pass a jump on."""
        if self.clock is None or not self.judges_clock:
            return
        before = self.status.snapshot()
        self._arrivals.note(before.last_received_at, before.clock.trusted)
        tick = self.clock.tick(*self.clock_readings())
        self.status.clock_state(tick.state)
        if tick.jump is not None:
            self._clock_jumped(tick.jump)
        if tick.state.trusted != self._clock_trusted:
            self._clock_trusted = tick.state.trusted
            if tick.state.trusted:
                log.warning("the system clock is trusted again")
            else:
                log.warning("the system clock is not trusted: %s", tick.state.doubt())

    def _clock_jumped(self, seconds: float) -> None:
        """The system clock jumped ``seconds`` (+ forward, - back; ``agent.timekeeping``
        saw it): re-base what the index schedules by wall clock, then wake whoever waits
        on those schedules to read them again."""
        if self.archive is None:
            return
        moved = self.archive.rebase_clock(seconds)
        log.warning("the clock jumped %+.0f s: retry schedules re-based (%d forward jobs,"
                    " %d commitment rows, %d MPPS messages)", seconds, moved.forward_jobs,
                    moved.pacs_commits + moved.commitments, moved.mpps_jobs)
        if self.forwarder is not None:
            self.forwarder.wake(sorted(set(self.forwarder.senders)
                                       | set(self.config.forward.destinations)))
        for waiting in (self.commitments, self.mpps_forwarder, self.prefetcher):
            if waiting is not None:
                waiting.wake()

    def _sweep(self) -> int:
        """Drop dead temp files; let retention free what every destination has."""
        self._sweep_stale_temp_files()
        return self.forwarder.sweep() if self.forwarder is not None else 0

    def _sweep_stale_temp_files(self) -> None:
        """Remove temp files nobody has written to for a while (a receive that died),
        timed on the monotonic clock: a jump of the wall clock neither deletes a file
        being received nor keeps a leftover for the length of the jump."""
        self._stale.sweep(max(STALE_TEMP_AFTER, 2 * self.config.agent.network_timeout))
