"""The status report: what the archive holds and what the running agent reports."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from typing import Any

from agent.archive import Layout, prefetch_jobs
from agent.archive.index import Counts, counts_at
from agent.archive.study_list import state_counts_at
from agent.ops.alerts import judge
from agent.ops.clock import clock_line
from agent.ops.reachability import pace_line, state_line
from agent.procfs import process_alive
from agent.status import Snapshot
from agent.status_file import LIVE_STATES, read_published
from agent.status_parts import ClockState
from agent.tls import certificate_days_left, certificate_warning


@dataclass(frozen=True)
class StatusReport:
    """Everything ``status`` shows, as the plain JSON data ``status --json`` prints."""

    info: dict[str, Any]

    @property
    def running(self) -> bool:
        """Whether an agent answers for this data directory."""
        return bool(self.info["running"])

    def to_json(self) -> dict[str, Any]:
        """The report as ``edge-agent status --json`` prints it."""
        return dict(self.info)

    def lines(self) -> list[str]:
        """The report as text, as the CLI prints it and the console shows it."""
        info = self.info
        counts = info["archive"]
        lines = [f"note      {info['note']}"] if info.get("note") else []
        lines += [
            f"archive   {info['data_dir']}",
            f"          {counts['patients']} patients, {counts['studies']} studies, "
            f"{counts['series']} series, {counts['instances']} instances, "
            f"{size(counts['bytes'])}",
        ]
        if info.get("studies"):
            lines.append(_studies_line(info["studies"]))
        if counts["conflicts"]:
            lines.append(
                f"          {counts['conflicts']} conflicting copies kept aside (see conflicts/)"
            )
        if counts.get("clock_untrusted"):
            lines.append(f"          {counts['clock_untrusted']} arrived while the clock was"
                         " not trusted (their arrival times are doubtful)")
        if info.get("prefetch") and any(info["prefetch"].get(s) for s in prefetch_jobs.STATES):
            lines.append(f"prefetch  {prefetch_counts_line(info['prefetch'])}")
        if info["disk_free"] is not None:
            lines.append(f"disk      {size(info['disk_free'])} free")
        agent = info["agent"]
        if agent is None:
            lines.append("agent     not running")
        else:
            lines += _agent_lines(agent, info["answering"]) + _problem_lines(agent)
        return lines + _alert_lines(info.get("alerts") or [])


def _alert_lines(alerts: list[dict[str, str]]) -> list[str]:
    """The shipped alert rules' judgements (``agent.ops.alerts``): one line each, or none."""
    if not alerts:
        return ["alerts    none"]
    return [f"alert     {a['severity']} {a['name']}: {a['summary']}" for a in alerts]


def _studies_line(studies: dict[str, int]) -> str:
    """How many studies are arriving (re-opened ones among them) and complete."""
    open_now = studies["arriving"] + studies["reopened"]
    again = f" ({studies['reopened']} re-opened)" if studies["reopened"] else ""
    return f"studies   {open_now} arriving{again}, {studies['complete']} complete"


def _agent_lines(agent: dict[str, Any], answering: bool) -> list[str]:
    """The running agent's part of the report."""
    state = agent["state"] if answering else "not answering"
    lines = [
        f"agent     {state} on {agent['listening']} (pid {agent['pid']}, "
        f"since {agent['started_at']})",
        f"          {_received(agent)}, {agent['refused']} refused, "
        f"{agent['associations']} associations open",
    ]
    if agent.get("commit_reports_owed") or agent.get("commit_reports_sent"):
        lines.append(
            f"commit    to modalities: {agent['commit_reports_owed']} transactions await "
            f"their report, {agent['commit_reports_sent']} reported"
        )
    if agent.get("commit_awaiting") or agent.get("commit_failed"):
        lines.append(
            f"commit    from destinations: {agent['commit_awaiting']} instances await "
            f"commitment, {agent['commit_failed']} not committed"
        )
    if agent.get("forwarder_pid"):
        lines.append(f"forward   sent by the forwarding process (pid {agent['forwarder_pid']})")
    for destination in agent.get("destinations", []):
        lines.append(
            f"forward   {destination['name']}: {destination['pending']} pending, "
            f"{destination['retrying']} retrying, {destination['quarantined']} quarantined"
            f"{_held(destination)}; last success {destination['last_success'] or 'never'}"
        )
        lines.append(f"          state {state_line(destination, time.time())}")
        if pace_line(destination):
            lines.append(f"          pace  {pace_line(destination)}")
        if destination["last_error"]:
            lines.append(f"          last error {destination['last_error']}")
    lines += _mpps_lines(agent.get("mpps") or [])
    if agent.get("below_floor"):
        lines.append("disk      FREE SPACE BELOW THE FLOOR: new images are refused")
    if agent.get("certificate_expires"):
        lines.append(f"tls       {_certificate(agent['certificate_expires'])}")
    if agent.get("clock"):
        lines.append(clock_line(ClockState.from_json(agent["clock"])))
    return lines


def _held(destination: dict[str, Any]) -> str:
    """Jobs held for their study (``forward.when = "complete"``), if any: not failures.
    A status file written before they existed has no count."""
    held = destination.get("held", 0)
    return f", {held} held until their study is complete" if held else ""


def _mpps_lines(queues: list[dict[str, Any]]) -> list[str]:
    """Passing MPPS on (forward.mpps_to): what waits and what is quarantined, per peer."""
    lines = [
        f"mpps      {q['name']}: {q['waiting']} waiting, {q['retrying']} retrying, "
        f"{q['quarantined']} quarantined"
        for q in queues
    ]
    if any(q["quarantined"] for q in queues):
        lines.append("          quarantined MPPS messages: edge-agent queue lists them, "
                     "'queue retry PEER' sends them again")
    return lines


def _received(agent: dict[str, Any]) -> str:
    """What came in this run: new instances, and copies of ones already held."""
    text = f"{agent['received']} received this run"
    if agent.get("duplicates"):
        text += f" (and {agent['duplicates']} duplicates of instances already held)"
    if agent.get("conflicts"):
        text += f", {agent['conflicts']} conflicting copies kept aside"
    return text


def _problem_lines(agent: dict[str, Any]) -> list[str]:
    """Each part's current problem, with its time; an agent that went silent says so."""
    problems = list(agent.get("problems") or [])
    if agent.get("silent_for") is not None or ("problems" not in agent and agent["last_error"]):
        problems.append({"part": "agent", "message": agent["last_error"],
                         "at": agent.get("written_at", "?")})
    return [f"error     {p['part']}: {p['message']} (at {p['at']})" for p in problems]


def _certificate(expires: str) -> str:
    """The TLS certificate's expiry line, with a warning from 30 days before."""
    left = certificate_days_left(expires)
    line = f"certificate valid until {expires[:10]} ({left} days left)"
    warning = certificate_warning(expires)
    return f"{line}; {warning.upper()}: renew it" if warning else line


def status_report(
    layout: Layout,
    live: Snapshot | None = None,
    note: str | None = None,
    now: float | None = None,
) -> StatusReport:
    """The status of the archive at ``layout`` and of the agent serving it.

    ``live`` is the running agent's own model (the console); otherwise the snapshot that
    agent last published is read. Either way the report holds plain JSON values. ``note``
    says how the data directory was found (``agent.ops.locate``); ``now`` (epoch
    seconds, default the clock) is the moment the alerts are judged at.
    """
    info = gather(layout, live, now)
    if note is not None:
        info["note"] = note
    return StatusReport(json.loads(json.dumps(info)))


def gather(
    layout: Layout, live: Snapshot | None = None, now: float | None = None
) -> dict[str, Any]:
    """Everything ``status`` shows, from the index, the disk and the status model.

    ``live`` is the running agent's own model (the console); otherwise the snapshot
    that agent last published is read. Either says when the agent is not answering.
    ``alerts`` are the shipped alert rules' judgements at ``now`` (default the clock).
    """
    at = time.time() if now is None else now
    published = live.to_json() if live is not None else read_published(layout.run_dir, at)
    running = published is not None and (live is not None or _is_live(published))
    return {
        "data_dir": str(layout.root),
        "archive": dataclasses.asdict(_counts(layout)),
        "studies": _study_counts(layout),
        "prefetch": _prefetch_counts(layout),
        "disk_free": shutil.disk_usage(layout.root).free if layout.root.exists() else None,
        "running": running,
        "answering": running and published is not None and published.get("silent_for") is None,
        "agent": published if running else None,
        "alerts": [dataclasses.asdict(a) for a in judge(published if running else None, at)],
    }


def _is_live(published: dict[str, Any]) -> bool:
    state = published.get("state")
    return state in LIVE_STATES and process_alive(int(published.get("pid", 0)))


def _counts(layout: Layout) -> Counts:
    if not layout.index_path.exists():
        return Counts(0, 0, 0, 0, 0, 0)
    return counts_at(layout.index_path)


def _study_counts(layout: Layout) -> dict[str, int]:
    """Studies arriving, re-opened and complete (``agent.archive.studies``)."""
    if not layout.index_path.exists():
        return {"arriving": 0, "reopened": 0, "complete": 0}
    return state_counts_at(layout.index_path)


def _prefetch_counts(layout: Layout) -> dict[str, int]:
    """Prefetch jobs per state, studies and bytes landed (``agent.archive.prefetch_jobs``)."""
    if not layout.index_path.exists():
        return prefetch_jobs.no_counts()
    return prefetch_jobs.counts_at(layout.index_path)


def prefetch_counts_line(counts: dict[str, int] | Any) -> str:
    """Prefetch jobs per state and what they landed, in one line (``status``, ``queue``)."""
    states = ", ".join(f"{counts.get(state, 0)} {state}" for state in prefetch_jobs.STATES)
    return f"{states} ({counts.get('studies', 0)} studies, {size(counts.get('bytes', 0))} fetched)"


def size(count: int) -> str:
    """A byte count as a person reads it: 512 B, 3.4 MB."""
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"
