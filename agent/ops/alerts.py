"""The alerts shipped in ``monitoring/edge-agent.rules.yml``, judged without Prometheus:
``edge-agent status`` and the console's ``status`` print what would fire.

Every threshold and ``for:`` duration is written here once; ``tests/test_alert_rules.py``
checks that the rules file carries the same numbers, and ``tests/rules/`` tests the rules
with ``promtool`` on the same boundaries ``tests/test_alerts.py`` tests :func:`judge` on.

A rule's ``for:`` (how long its condition must hold before it fires) needs a history;
the status snapshot is one moment. :func:`judge` uses the condition's own age where the
snapshot gives it, and judges the condition alone where it does not:

- undelivered too old: exact; the condition began when the oldest waiting instance's age
  passed the threshold (it has been waiting ever since).
- no delivery: the condition began at the later of "threshold after the last delivery
  (or the agent's start)" and the oldest waiting instance's arrival (the queue has not
  been empty since); exact while that instance is what keeps the queue non-empty.
- certificate expires soon / expired: exact; the condition began at a fixed time.
- unhealthy: from the start while starting, from when the agent stopped answering while
  it is silent; judged at once when it failed or is stopping.
- disk floor within a day, below the floor, clock not synchronised or not plausible,
  quarantined: the snapshot does not say since when, so they show as soon as the
  condition holds (sooner than Prometheus would: the CLI errs on the side of telling).
- agent down: the agent is not running (no status to judge); Prometheus's
  ``EdgeAgentAbsent`` (no target scraped at all) has no equivalent here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.status import STUCK_AFTER

MINUTE = 60.0
HOUR = 60 * MINUTE
DAY = 24 * HOUR

# The thresholds (seconds, bytes, counts), each the number in its rule's expression.
UNDELIVERED_AGE = 30 * MINUTE  # the oldest undelivered instance older than this
NO_DELIVERY_FOR = 30 * MINUTE  # no delivery for this long while the queue is not empty
DISK_FLOOR_WITHIN = DAY  # the disk reaches the floor within this, at the recent rate
CERTIFICATE_WITHIN = 14 * DAY  # the TLS certificate expires within this


@dataclass(frozen=True)
class Rule:
    """One shipped alert: its name, severity, ``for:`` (seconds) and the numbers its
    expression compares with, in the order they appear."""

    name: str
    severity: str  # "critical": data at risk or nothing works; "warning": act soon
    hold: float
    numbers: tuple[float, ...]


# neither while the destination waits for a send window (edge_agent_destination_sending 0)
UNDELIVERED = Rule("EdgeAgentUndeliveredTooOld", "warning", 5 * MINUTE, (UNDELIVERED_AGE, 0))
NO_DELIVERY = Rule("EdgeAgentNoDelivery", "warning", 5 * MINUTE, (NO_DELIVERY_FOR, 0, 0))
QUARANTINED = Rule("EdgeAgentQuarantined", "warning", 1 * MINUTE, (0,))
DISK_SOON = Rule("EdgeAgentDiskFloorWithinADay", "warning", 15 * MINUTE, (DISK_FLOOR_WITHIN,))
DISK_BELOW = Rule("EdgeAgentDiskBelowFloor", "critical", 2 * MINUTE, ())
CERTIFICATE_SOON = Rule(
    "EdgeAgentCertificateExpiresSoon", "warning", 10 * MINUTE, (CERTIFICATE_WITHIN, 0)
)
CERTIFICATE_EXPIRED = Rule("EdgeAgentCertificateExpired", "critical", 5 * MINUTE, (0,))
CLOCK_UNSYNCHRONISED = Rule("EdgeAgentClockNotSynchronised", "warning", 30 * MINUTE, (0,))
CLOCK_IMPLAUSIBLE = Rule("EdgeAgentClockImplausible", "critical", 5 * MINUTE, (0,))
UNHEALTHY = Rule("EdgeAgentUnhealthy", "critical", 5 * MINUTE, (0,))
DOWN = Rule("EdgeAgentDown", "critical", 5 * MINUTE, (0,))
ABSENT = Rule("EdgeAgentAbsent", "critical", 15 * MINUTE, ())  # Prometheus only

RULES = (
    UNDELIVERED, NO_DELIVERY, QUARANTINED, DISK_SOON, DISK_BELOW, CERTIFICATE_SOON,
    CERTIFICATE_EXPIRED, CLOCK_UNSYNCHRONISED, CLOCK_IMPLAUSIBLE, UNHEALTHY, DOWN, ABSENT,
)


@dataclass(frozen=True)
class Alert:
    """An alert that would fire: the rule's name and severity, and one line of words."""

    name: str
    severity: str
    summary: str

    def line(self) -> str:
        """As ``status`` prints it."""
        return f"{self.severity} {self.name}: {self.summary}"


def judge(agent: Mapping[str, Any] | None, now: float) -> list[Alert]:
    """The alerts that would fire at ``now`` (epoch seconds) for the agent's published
    status (``Snapshot.to_json()``, as ``edge-agent status`` reads it); None: the agent
    is not running. Pure: reads nothing but its arguments."""
    if agent is None:
        return [_alert(DOWN, "the agent is not running: start it (systemctl start edge-agent)")]
    started = _epoch(agent.get("started_at"))
    alerts = _health(agent, started, now)
    for destination in agent.get("destinations") or []:
        alerts += _destination(destination, started, now)
    return alerts + _disk(agent) + _certificate(agent.get("certificate_expires"), now) + _clock(
        agent.get("clock") or {}
    )


def _alert(rule: Rule, summary: str) -> Alert:
    return Alert(rule.name, rule.severity, summary)


def _held(rule: Rule, since: float | None, now: float) -> bool:
    """Whether a condition that holds now, and has since ``since`` (None: unknown, taken
    as held long enough), has held for the rule's ``for:``."""
    return since is None or now - since >= rule.hold


def _health(agent: Mapping[str, Any], started: float | None, now: float) -> list[Alert]:
    """Not serving: the watchdog's health check does not pass (``edge_agent_healthy``)."""
    state = agent.get("state")
    silent = agent.get("silent_for")
    if state == "serving" and silent is None:
        return []
    since = None
    if silent is not None:
        since = now - max(0.0, float(silent) - STUCK_AFTER)
        state = f"not answering for {float(silent):.0f} s"
    elif state == "starting":
        since = started
    if not _held(UNHEALTHY, since, now):
        return []
    return [_alert(UNHEALTHY, f"the agent is {state}: see journalctl -u edge-agent")]


def _destination(d: Mapping[str, Any], started: float | None, now: float) -> list[Alert]:
    """The per-destination alerts: a backlog too old, no delivery, quarantined jobs."""
    name = d.get("name", "?")
    waiting = int(d.get("pending", 0)) + int(d.get("retrying", 0)) + int(d.get("held", 0))
    if not d.get("window_open", True):  # it waits for a send window, as configured
        waiting = 0
    oldest = d.get("oldest_waiting") if waiting else None
    alerts = []
    if oldest is not None and now - oldest > UNDELIVERED_AGE and _held(
        UNDELIVERED, oldest + UNDELIVERED_AGE, now
    ):
        alerts.append(_alert(UNDELIVERED, (
            f"{name}: an instance has waited {(now - oldest) / MINUTE:.0f} min to be "
            f"delivered; check that {name} is reachable (edge-agent queue, edge-agent echo)"
        )))
    last = d.get("last_delivery") or started
    if waiting and last is not None and now - last > NO_DELIVERY_FOR:
        since = max(last + NO_DELIVERY_FOR, oldest if oldest is not None else 0.0)
        if _held(NO_DELIVERY, since, now):
            alerts.append(_alert(NO_DELIVERY, (
                f"{name}: nothing delivered for {(now - last) / MINUTE:.0f} min while "
                f"{waiting} wait; see its last error in edge-agent queue"
            )))
    if int(d.get("quarantined", 0)) > 0:
        alerts.append(_alert(QUARANTINED, (
            f"{name}: {d['quarantined']} instances quarantined (given up on); fix the "
            f"cause, then edge-agent queue retry {name}"
        )))
    return alerts


def _disk(agent: Mapping[str, Any]) -> list[Alert]:
    """Below the floor now, or reaching it within a day at the recent ingest rate."""
    free, floor = agent.get("disk_free"), agent.get("disk_floor")
    if (free is not None and floor is not None and free < floor) or agent.get("below_floor"):
        return [_alert(DISK_BELOW, (
            "free disk is below the floor: new images are refused; make room or check "
            "that delivered copies can be deleted (retention, destinations up)"
        ))]
    full_in = agent.get("disk_full_in")
    if full_in is not None and full_in < DISK_FLOOR_WITHIN:
        return [_alert(DISK_SOON, (
            f"the disk reaches the floor in {full_in / HOUR:.1f} h at the recent rate; "
            "check that deliveries keep up and retention deletes delivered copies"
        ))]
    return []


def _certificate(expires: str | None, now: float) -> list[Alert]:
    """The TLS certificate expired, or expires within CERTIFICATE_WITHIN."""
    moment = _epoch(expires)
    if moment is None:
        return []
    left = moment - now
    if left < 0 and _held(CERTIFICATE_EXPIRED, moment, now):
        return [_alert(CERTIFICATE_EXPIRED, (
            f"the TLS certificate expired on {expires}: peers refuse TLS; install a new one"
        ))]
    if 0 < left < CERTIFICATE_WITHIN and _held(
        CERTIFICATE_SOON, moment - CERTIFICATE_WITHIN, now
    ):
        return [_alert(CERTIFICATE_SOON, (
            f"the TLS certificate expires in {left / DAY:.1f} days ({expires}): renew it"
        ))]
    return []


def _clock(clock: Mapping[str, Any]) -> list[Alert]:
    """The system clock not synchronised (or cannot tell), or not plausible."""
    alerts = []
    if clock.get("plausible", True) is False:
        why = f" ({clock['why']})" if clock.get("why") else ""
        alerts.append(_alert(CLOCK_IMPLAUSIBLE, (
            f"the system clock is not plausible{why}: age-based retention is suspended; "
            "set the time and give the box a time source (NTP or an RTC)"
        )))
    if clock.get("synchronised") is not True:
        alerts.append(_alert(CLOCK_UNSYNCHRONISED, (
            "the system clock is not synchronised: check NTP (timedatectl) or the RTC"
        )))
    return alerts


def _epoch(iso: Any) -> float | None:
    """An ISO 8601 time as epoch seconds (None if absent or unreadable)."""
    if not isinstance(iso, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(iso)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.timestamp()
