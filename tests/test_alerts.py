"""The shipped alerts judged without Prometheus (agent/ops/alerts.py), at fixed times, on
both sides of each threshold and ``for:``: the boundaries tests/rules/*.test.yml give
promtool. And ``edge-agent status`` (text and ``--json``) prints the judgements."""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent.archive import Layout
from agent.ops import alerts
from agent.ops.alerts import judge
from agent.ops.status import status_report
from agent.status import STUCK_AFTER, Snapshot, State
from agent.status_destinations import Destination
from agent.status_file import publish
from agent.status_parts import ClockState
from tests.support import agent_env, run_cli

NOW = 1_800_000_000.0
STARTED = NOW - 10 * alerts.DAY
MIN = alerts.MINUTE


def iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat(timespec="seconds")


def well(**changes: Any) -> Snapshot:
    """A serving agent with nothing to alert on, changed by ``changes``."""
    base = Snapshot(
        state=State.SERVING, started_at=iso(STARTED), disk_free=10**10, disk_floor=10**9,
        clock=ClockState(synchronised=True, plausible=True),
        destinations=(Destination("pacs", last_delivery=NOW - 60),),
    )
    return replace(base, **changes)


def pacs(**changes: Any) -> Snapshot:
    """``well()`` with the destination pacs changed (a delivery a minute ago, unless
    ``changes`` say otherwise)."""
    return well(destinations=(Destination("pacs", **{"last_delivery": NOW - 60, **changes}),))


def fired(snapshot: Snapshot | None, now: float = NOW) -> dict[str, str]:
    """Name -> summary of the alerts that fire for ``snapshot`` published, at ``now``."""
    published = None if snapshot is None else snapshot.to_json()
    return {a.name: a.summary for a in judge(published, now)}


def test_a_well_agent_fires_nothing() -> None:
    assert fired(well()) == {}


def test_undelivered_too_old_fires_once_over_the_age_for_the_hold() -> None:
    rule = alerts.UNDELIVERED
    threshold, hold = alerts.UNDELIVERED_AGE, rule.hold
    assert fired(pacs(pending=1, oldest_waiting=NOW - threshold)) == {}
    assert fired(pacs(pending=1, oldest_waiting=NOW - threshold - hold + 1)) == {}
    hit = fired(pacs(pending=1, oldest_waiting=NOW - threshold - hold, last_delivery=NOW))
    assert list(hit) == [rule.name]
    assert hit[rule.name].startswith("pacs: an instance has waited 35 min")
    # only what will be tried counts: quarantined ones have their own alert
    gone = fired(pacs(quarantined=1, oldest_waiting=NOW - 2 * threshold, last_delivery=NOW))
    assert rule.name not in gone


def test_no_delivery_fires_while_the_queue_is_not_empty_for_the_hold() -> None:
    rule = alerts.NO_DELIVERY
    threshold, hold = alerts.NO_DELIVERY_FOR, rule.hold
    old = NOW - 10 * threshold  # the queue has been non-empty for long
    at_threshold = pacs(retrying=5, last_delivery=NOW - threshold, oldest_waiting=NOW - 60)
    assert rule.name not in fired(at_threshold)
    short = pacs(retrying=5, last_delivery=NOW - threshold - hold + 1, oldest_waiting=old)
    assert rule.name not in fired(short)
    hit = fired(pacs(retrying=5, last_delivery=NOW - threshold - hold, oldest_waiting=old))
    assert hit[rule.name] == "pacs: nothing delivered for 35 min while 5 wait; " \
        "see its last error in edge-agent queue"
    empty = pacs(last_delivery=NOW - 10 * threshold)
    assert fired(empty) == {}


@pytest.mark.parametrize("kind", ["pending", "retrying", "held"])
def test_every_job_that_will_be_tried_counts_as_waiting(kind: str) -> None:
    """As edge_agent_queue_instances counts them (held: until its study is complete)."""
    old = NOW - 10 * alerts.UNDELIVERED_AGE
    assert set(fired(pacs(**{kind: 1}, oldest_waiting=old, last_delivery=old))) == {
        alerts.UNDELIVERED.name, alerts.NO_DELIVERY.name
    }


def test_no_delivery_holds_only_since_the_queue_became_non_empty() -> None:
    rule = alerts.NO_DELIVERY
    last = NOW - 10 * alerts.NO_DELIVERY_FOR
    assert rule.name not in fired(pacs(pending=1, last_delivery=last,
                                       oldest_waiting=NOW - rule.hold + 1))
    assert rule.name in fired(pacs(pending=1, last_delivery=last, oldest_waiting=NOW - rule.hold))


def test_no_delivery_since_the_start_counts_from_the_start() -> None:
    rule = alerts.NO_DELIVERY
    since = alerts.NO_DELIVERY_FOR + rule.hold
    waiting = {"pending": 2, "oldest_waiting": NOW - 20 * since, "last_delivery": None}
    assert rule.name in fired(replace(pacs(**waiting), started_at=iso(NOW - since)))
    assert rule.name not in fired(replace(pacs(**waiting), started_at=iso(NOW - since + 1)))


def test_quarantined_instances_fire_naming_the_destination() -> None:
    assert fired(pacs(quarantined=0, last_delivery=NOW)) == {}
    hit = fired(pacs(quarantined=2, last_delivery=NOW))
    assert hit == {alerts.QUARANTINED.name: "pacs: 2 instances quarantined (given up on); "
                   "fix the cause, then edge-agent queue retry pacs"}


def test_the_disk_floor_within_a_day_and_below_it() -> None:
    day = alerts.DISK_FLOOR_WITHIN
    assert fired(well(disk_full_in=None)) == {}  # nothing coming in
    assert fired(well(disk_full_in=day)) == {}
    assert list(fired(well(disk_full_in=day - 1))) == [alerts.DISK_SOON.name]
    assert fired(well(disk_free=10**9, disk_floor=10**9)) == {}
    below = fired(well(disk_free=10**9 - 1, disk_floor=10**9, disk_full_in=0.0))
    assert list(below) == [alerts.DISK_BELOW.name]


def test_the_certificate_within_fourteen_days_for_the_hold_then_expired() -> None:
    soon, expired = alerts.CERTIFICATE_SOON, alerts.CERTIFICATE_EXPIRED
    within = alerts.CERTIFICATE_WITHIN
    assert fired(well(certificate_expires=iso(NOW + within + alerts.DAY))) == {}
    assert fired(well(certificate_expires=iso(NOW + within - soon.hold + 1))) == {}
    assert list(fired(well(certificate_expires=iso(NOW + within - soon.hold)))) == [soon.name]
    assert fired(well(certificate_expires=iso(NOW - expired.hold + 1))) == {}
    assert list(fired(well(certificate_expires=iso(NOW - expired.hold)))) == [expired.name]


@pytest.mark.parametrize("synchronised", [False, None])
def test_a_clock_not_synchronised_or_not_known_to_be_fires(synchronised: bool | None) -> None:
    hit = fired(well(clock=ClockState(synchronised=synchronised)))
    assert list(hit) == [alerts.CLOCK_UNSYNCHRONISED.name]


def test_an_implausible_clock_fires_with_its_reason() -> None:
    clock = ClockState(synchronised=True, plausible=False, why="before the release date")
    hit = fired(well(clock=clock))
    assert list(hit) == [alerts.CLOCK_IMPLAUSIBLE.name]
    assert "(before the release date)" in hit[alerts.CLOCK_IMPLAUSIBLE.name]


def test_an_agent_not_running_is_down_and_one_not_serving_unhealthy_after_the_hold() -> None:
    unhealthy = alerts.UNHEALTHY
    assert list(fired(None)) == [alerts.DOWN.name]
    assert list(fired(well(state=State.FAILED))) == [unhealthy.name]
    starting = well(state=State.STARTING, started_at=iso(NOW - unhealthy.hold + 1))
    assert fired(starting) == {}
    assert list(fired(replace(starting, started_at=iso(NOW - unhealthy.hold)))) == [
        unhealthy.name
    ]
    silent = well(state=State.FAILED, silent_for=STUCK_AFTER + unhealthy.hold - 1)
    assert fired(silent) == {}
    assert list(fired(replace(silent, silent_for=STUCK_AFTER + unhealthy.hold))) == [
        unhealthy.name
    ]


def test_an_older_agents_status_without_the_new_fields_is_judged_without_error() -> None:
    old = {"state": "serving", "started_at": iso(STARTED),
           "destinations": [{"name": "pacs", "pending": 1, "retrying": 0}]}
    assert [a.name for a in judge(old, NOW)] == [
        alerts.NO_DELIVERY.name, alerts.CLOCK_UNSYNCHRONISED.name  # none since the start
    ]


def test_the_status_report_prints_the_alerts_or_none(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    quiet = status_report(layout, well(), now=NOW)
    assert quiet.lines()[-1] == "alerts    none"
    assert quiet.to_json()["alerts"] == []
    report = status_report(layout, pacs(quarantined=3, last_delivery=NOW), now=NOW)
    assert report.lines()[-1] == (
        "alert     warning EdgeAgentQuarantined: pacs: 3 instances quarantined "
        "(given up on); fix the cause, then edge-agent queue retry pacs"
    )
    assert report.to_json()["alerts"] == [
        {"name": "EdgeAgentQuarantined", "severity": "warning",
         "summary": report.lines()[-1].split(": ", 1)[1]}
    ]


def test_edge_agent_status_prints_what_the_published_status_fires(tmp_path: Path) -> None:
    """The CLI, in its own process, judges the file a running agent published."""
    data = tmp_path / "data"
    (data / "run").mkdir(parents=True)
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\ndata_dir = "{data}"\n')
    now = time.time()
    snapshot = well(started_at=iso(now - alerts.DAY), destinations=(
        Destination("pacs", pending=4, oldest_waiting=now - 3 * alerts.HOUR,
                    last_delivery=now - 3 * alerts.HOUR),
    ))
    publish(snapshot, data / "run", now)
    text = run_cli("status", "--config", str(config), env=agent_env())
    assert text.returncode == 0, text.stderr
    lines = [line for line in text.stdout.splitlines() if line.startswith("alert")]
    assert [line.split(":")[0] for line in lines] == [
        "alert     warning EdgeAgentUndeliveredTooOld", "alert     warning EdgeAgentNoDelivery"
    ]
    assert all(" pacs: " in line for line in lines)
    as_json = run_cli("status", "--json", "--config", str(config), env=agent_env())
    names = [a["name"] for a in json.loads(as_json.stdout)["alerts"]]
    assert names == ["EdgeAgentUndeliveredTooOld", "EdgeAgentNoDelivery"]
