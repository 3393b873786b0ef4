"""Prefetch by hand (``edge-agent prefetch PATIENT_ID``, the console's ``prefetch``) and
the prefetch part of ``queue`` and ``status``.

A job by hand is written to the index like a triggered one; the running agent's worker
finds it at its next look at the queue (within ``agent.prefetch.worker.POLL``
seconds), and an agent that is not running finds it when it starts. Nothing here pulls
anything itself, so the command returns at once and the pull yields to forwarding as
every prefetch does.

No line shown here names the patient: the ID is the operator's own input, and the
listing is often pasted into tickets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.archive import Layout
from agent.archive import prefetch_jobs as jobs
from agent.archive.index import Index
from agent.archive.lock import DataDirBusy, DataDirLock
from agent.config import Config
from agent.errors import ConfigError, UsageError
from agent.ops.status import prefetch_counts_line, size

SHOWN = 20


@dataclass(frozen=True)
class PrefetchQueued:
    """A job by hand, queued (or not: already waiting is not possible, each is new)."""

    job: int
    priors_from: str
    running: bool  # an agent serves the data directory: it starts the job by itself

    def lines(self) -> list[str]:
        """What the CLI prints and the console shows."""
        when = ("the running agent starts it within seconds" if self.running
                else "the agent is not running: it starts once the agent runs")
        return [f"OK prefetch #{self.job} queued: priors from {self.priors_from}; {when}",
                "edge-agent queue shows its progress"]


def queue_prefetch(config: Config, patient_id: str, peer: str | None) -> PrefetchQueued:
    """Queue a prefetch of ``patient_id``'s priors from ``peer`` (default: the first
    ``[[prefetch]]`` rule's ``priors_from``); the rule with that ``priors_from`` gives
    the window and limits, any modality."""
    source = peer or next((rule.priors_from for rule in config.prefetch), None)
    if source is None:
        raise UsageError("say where the priors are: --from PEER (no [[prefetch]] rule names one)")
    if source not in config.peers:
        known = ", ".join(sorted(config.peers)) or "none configured"
        raise ConfigError("", f"--from {source}: not a configured peer ({known})")
    if not jobs.safe_patient_id(patient_id):
        raise UsageError("give one patient ID, without * ? or \\ (they would match others)")
    layout = Layout(config.agent.data_dir)
    layout.create()
    trigger = jobs.Trigger(patient_id.strip(), None, jobs.HAND, "", source)
    with Index(layout.index_path) as index:
        number = jobs.PrefetchQueue(index).add(trigger)
    assert number is not None  # a job by hand has no trigger study: never a duplicate
    return PrefetchQueued(number, source, _agent_running(layout))


def _agent_running(layout: Layout) -> bool:
    lock = DataDirLock(layout.run_dir)
    try:
        lock.acquire()
    except DataDirBusy:
        return True
    lock.release()
    return False


def prefetch_state(layout: Layout, shown: int = SHOWN) -> tuple[dict[str, int], tuple[Any, ...]]:
    """Job counts per state and the first ``shown`` jobs (those not done first), as plain
    values without patient IDs, for ``queue``."""
    if not layout.index_path.exists():
        return {}, ()
    with Index(layout.index_path) as index:
        queue = jobs.PrefetchQueue(index)
        listed = tuple(dict(jobs.as_mapping(job)) for job in queue.listing(shown))
        return queue.counts(), listed


def prefetch_lines(
    counts: Mapping[str, int], listed: Sequence[Mapping[str, Any]], now: float
) -> list[str]:
    """The ``queue`` listing's prefetch section: counts, then each job shown."""
    if not any(counts.get(state) for state in jobs.STATES):
        return []
    return [f"prefetch: {prefetch_counts_line(counts)}"] + [_row(job, now) for job in listed]


def _row(job: Mapping[str, Any], now: float) -> str:
    trigger = {jobs.HAND: "by hand"}.get(job["trigger"], f"{job['trigger']} from {job['source']}")
    if job["state"] in (jobs.QUEUED, jobs.RETRYING):
        due = job["next_attempt"] - now
        when = "due now" if due <= 0 else f"next in {due:.0f} s"
    else:
        when = ""  # running, done or failed: the state says it
    error = f"  last error: {job['last_error']}" if job["last_error"] else ""
    return (f"  #{job['id']:<6} {job['state']:9} {when:14} {trigger} <- {job['priors_from']}"
            f"  tries {job['attempts']}  {job['studies']} studies, {size(job['bytes'])}{error}")
