"""Send windows and the priority rule: parsed at load (errors naming their key), judged
at a given local time (inside, outside, across midnight, on an untrusted clock), and
the configuration keys of a destination's pace."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from agent import config as config_module
from agent.archive import priority
from agent.archive.keys import KEYS
from agent.errors import ConfigErrors
from agent.forward.pace_settings import PRIORITY_KEYS, Window
from agent.forward.windows import window_state
from agent.metrics.collector import StatusCollector
from agent.ops import alerts
from agent.ops.reachability import pace_line, rate_words
from agent.status import StatusModel
from tests.test_metrics_endpoint import value

NIGHT = (Window(22 * 60, 6 * 60),)


def at(hour: int, minute: int = 0, day: int = 5) -> float:
    """Epoch seconds of a local time (January 2026: no DST change near it)."""
    return dt.datetime(2026, 1, day, hour, minute).timestamp()


def parse(**pacs: Any) -> config_module.Config:
    peer = {"ae_title": "PACS", "host": "127.0.0.1", "port": 104, **pacs}
    return config_module.parse({"agent": {"data_dir": "/tmp/x"}, "peers": {"PACS": peer},
                                "forward": {"to": ["PACS"]}})


def errors(**pacs: Any) -> str:
    with pytest.raises(ConfigErrors) as raised:
        parse(**pacs)
    return str(raised.value)


def test_the_issue_s_keys_load() -> None:
    peer = parse(max_bytes_per_second=10_000_000, send_windows=["22:00-06:00", "12:00-13:30"],
                 priority={"Modality": "CT", "StudyDescription": "*STROKE*"}).peers["PACS"]
    assert peer.max_bytes_per_second == 10_000_000
    assert [str(w) for w in peer.send_windows] == ["22:00-06:00", "12:00-13:30"]
    assert dict(peer.priority) == {"Modality": "CT", "StudyDescription": "*STROKE*"}
    plain = parse().peers["PACS"]
    assert (plain.max_bytes_per_second, plain.send_windows, plain.priority) == (None, (), ())


@pytest.mark.parametrize("keys, named", [
    ({"max_bytes_per_second": 0}, "peers.PACS.max_bytes_per_second: must be at least 1"),
    ({"max_bytes_per_second": 1.5}, "peers.PACS.max_bytes_per_second: must be"),
    ({"send_windows": "22:00-06:00"}, "peers.PACS.send_windows: must be"),
    ({"send_windows": ["22-06"]}, "peers.PACS.send_windows[0]: '22-06' is not a window"),
    ({"send_windows": ["08:00-17:00", "25:00-26:00"]}, "peers.PACS.send_windows[1]:"),
    ({"send_windows": ["08:60-09:00"]}, "peers.PACS.send_windows[0]:"),
    ({"send_windows": ["06:00-06:00"]}, "peers.PACS.send_windows[0]: '06:00-06:00' starts"),
    ({"send_windows": [22]}, "peers.PACS.send_windows[0]: a window is a string"),
    ({"priority": {"Modality": "CT"}}, "peers.PACS.priority: bypasses send windows"),
    ({"send_windows": ["22:00-06:00"], "priority": {"PatientName": "X*"}},
     "peers.PACS.priority.PatientName: is not an attribute"),
    ({"send_windows": ["22:00-06:00"], "priority": {"Modality": 3}},
     "peers.PACS.priority.Modality: a pattern is a string"),
])
def test_a_bad_pace_key_is_named(keys: dict[str, Any], named: str) -> None:
    assert named in errors(**keys)


def test_24_00_ends_a_window_and_midnight_starts_one() -> None:
    peer = parse(send_windows=["18:00-24:00", "00:00-02:00"]).peers["PACS"]
    assert [str(w) for w in peer.send_windows] == ["18:00-24:00", "00:00-02:00"]
    assert window_state(peer.send_windows, at(23, 59), True).open
    assert window_state(peer.send_windows, at(1, 0), True).open
    assert not window_state(peer.send_windows, at(2, 0), True).open


@pytest.mark.parametrize("hour, minute, inside", [
    (22, 0, True), (23, 30, True), (0, 0, True), (5, 59, True),  # across midnight
    (6, 0, False), (12, 0, False), (21, 59, False),
])
def test_a_window_across_midnight(hour: int, minute: int, inside: bool) -> None:
    state = window_state(NIGHT, at(hour, minute), trusted=True)
    assert state.open is inside
    if inside:
        assert state.opens_at is None and state.reason == (
            "inside its send window 22:00-06:00 (of 22:00-06:00)")
    else:
        assert state.reason == "outside its send windows (22:00-06:00); opens at 22:00"
        assert state.opens_at == at(22, 0)


def test_the_next_opening_is_the_nearest_start_tomorrow_included() -> None:
    windows = (Window(22 * 60, 6 * 60), Window(12 * 60, 13 * 60))
    assert window_state(windows, at(7), True).opens_at == at(12)
    assert window_state(windows, at(14), True).opens_at == at(22)
    day = (Window(9 * 60, 17 * 60),)
    assert window_state(day, at(18), True).opens_at == at(9, day=6)  # tomorrow morning
    assert window_state(day, at(18), True).reason == (
        "outside its send windows (09:00-17:00); opens at 09:00")


def test_an_untrusted_clock_ignores_the_windows_and_says_so() -> None:
    state = window_state(NIGHT, at(12), trusted=False)
    assert state.open and state.opens_at is None
    assert state.reason == "send windows (22:00-06:00) ignored: the clock is not trusted"


def test_no_windows_is_always_open_and_says_nothing() -> None:
    state = window_state((), at(12), trusted=True)
    assert state.open and state.reason is None


def test_every_priority_key_is_an_indexed_column() -> None:
    levels = {key.keyword: level for level, keys in KEYS.items() for key in keys}
    assert set(priority.COLUMNS) >= PRIORITY_KEYS
    assert all(levels[keyword] in priority._ALIAS for keyword in PRIORITY_KEYS)


def test_the_pace_line_says_why_a_destination_waits_and_its_cap() -> None:
    closed = {"window": "outside its send windows (22:00-06:00); opens at 22:00",
              "window_open": False, "max_bytes_per_second": 10_000_000}
    assert pace_line(closed) == (
        "outside its send windows (22:00-06:00); opens at 22:00; its jobs wait (not counted"
        " as failed tries); capped at 10 MB/s (not reached now)")
    sending = {"window": "inside its send window 22:00-06:00 (of 22:00-06:00)",
               "max_bytes_per_second": 10_000_000, "throttled": True}
    assert pace_line(sending) == ("inside its send window 22:00-06:00 (of 22:00-06:00);"
                                  " throttled: sending at its cap of 10 MB/s")
    assert pace_line({"name": "PACS"}) is None
    assert [rate_words(n) for n in (2_500_000, 512_000, 900)] == [
        "2.5 MB/s", "512 kB/s", "900 B/s"]


def test_a_destination_waiting_for_its_window_raises_no_backlog_alert() -> None:
    """Waiting for a send window is what was configured, not a fault: neither the status's
    judge nor the metrics' rules (edge_agent_destination_sending 0) call it one."""
    now = at(12)
    pacs = {"name": "PACS", "pending": 40, "oldest_waiting": now - 8 * 3600,
            "last_delivery": now - 8 * 3600, "window_open": False}
    agent = {"state": "serving", "started_at": "2026-01-04T00:00:00+00:00",
             "clock": {"synchronised": True}, "destinations": [pacs]}
    assert [a.name for a in alerts.judge(agent, now)] == []
    pacs["window_open"] = True  # the window opened: the same backlog is one
    assert {a.name for a in alerts.judge(agent, now)} == {
        "EdgeAgentUndeliveredTooOld", "EdgeAgentNoDelivery"}


def test_the_metrics_say_whether_a_destination_sends_and_its_cap() -> None:
    status = StatusModel()
    status.queue_depth({"PACS": {"pending": 2}, "RIS": {}}, ("PACS", "RIS"), {})
    status.destination_pace("PACS", "outside its send windows (22:00-06:00); opens at 22:00",
                            False, 10_000_000)
    status.destination_throttled("PACS", True)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status, clock=lambda: at(12)))
    text = generate_latest(registry).decode()
    assert value(text, "edge_agent_destination_sending", destination="PACS") == 0
    assert value(text, "edge_agent_destination_sending", destination="RIS") == 1
    assert value(text, "edge_agent_destination_max_bytes_per_second",
                 destination="PACS") == 10_000_000
    assert value(text, "edge_agent_destination_max_bytes_per_second", destination="RIS") == 0
    assert value(text, "edge_agent_destination_throttled", destination="PACS") == 1
    assert value(text, "edge_agent_destination_throttled", destination="RIS") == 0
