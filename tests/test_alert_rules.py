"""The shipped Prometheus rules (monitoring/edge-agent.rules.yml): valid for ``promtool
check rules``; every alert tested by ``promtool test rules`` (tests/rules/*.test.yml),
firing on one series and silent on another; only the agreed metric names; and the same
numbers as agent/ops/alerts.py, which judges them for ``edge-agent status``."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.ops import alerts
from tests.support import REPO

RULES_FILE = REPO / "monitoring" / "edge-agent.rules.yml"
RULE_TESTS = sorted((REPO / "tests" / "rules").glob("*.test.yml"))
PROMTOOL = Path("/usr/bin/promtool")  # Debian's prometheus package (scripts/test.sh)

# The metric names the endpoint and the rules agreed on (issue 22), and Prometheus's own.
AGREED_METRICS = {
    "edge_agent_oldest_undelivered_age_seconds", "edge_agent_last_delivery_timestamp_seconds",
    "edge_agent_queue_instances", "edge_agent_quarantined_instances",
    "edge_agent_disk_floor_eta_seconds", "edge_agent_disk_free_bytes",
    "edge_agent_disk_floor_bytes", "edge_agent_certificate_expiry_seconds",
    "edge_agent_clock_synchronised", "edge_agent_clock_plausible", "edge_agent_healthy", "up",
    "edge_agent_destination_sending",  # issue 24: a destination waiting for its send window
}
# those with a label ``destination``
PER_DESTINATION = {
    "edge_agent_oldest_undelivered_age_seconds", "edge_agent_last_delivery_timestamp_seconds",
    "edge_agent_queue_instances", "edge_agent_quarantined_instances",
    "edge_agent_destination_sending",
}
NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?")
DURATION = re.compile(r"(\d+)([smhd])")
UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def promtool(*args: str) -> None:
    """Run promtool; fail the test with everything it printed unless it succeeds."""
    assert PROMTOOL.exists(), "promtool is not installed (apt-get install prometheus)"
    done = subprocess.run([str(PROMTOOL), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"


def shipped() -> list[dict[str, Any]]:
    """The alerting rules of the one group, as parsed YAML."""
    groups = yaml.safe_load(RULES_FILE.read_text())["groups"]
    assert [g["name"] for g in groups] == ["edge-agent"]
    return list(groups[0]["rules"])


def seconds(duration: str) -> float:
    """A Prometheus duration (``5m``, ``1h30m``) in seconds."""
    parts = DURATION.findall(duration)
    assert "".join(n + u for n, u in parts) == duration, duration
    return float(sum(int(n) * UNIT[u] for n, u in parts))


def test_promtool_accepts_the_rules() -> None:
    promtool("check", "rules", str(RULES_FILE))


@pytest.mark.parametrize("path", RULE_TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(path: Path) -> None:
    promtool("test", "rules", str(path))


def test_every_alert_is_tested_firing_and_silent() -> None:
    fires: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        document = yaml.safe_load(path.read_text())
        assert document["rule_files"] == ["../../monitoring/edge-agent.rules.yml"], path
        for case in document["tests"]:
            for check in case["alert_rule_test"]:
                (fires if check["exp_alerts"] else silent).add(check["alertname"])
    names = {rule["alert"] for rule in shipped()}
    assert names - fires == set(), "never shown firing"
    assert names - silent == set(), "never shown silent"


def test_the_rules_carry_the_judges_numbers() -> None:
    """Name, severity, ``for:`` and every number of each expression, as in alerts.RULES."""
    judged = {rule.name: rule for rule in alerts.RULES}
    rules = shipped()
    assert [r["alert"] for r in rules] == list(judged)
    for rule in rules:
        expected = judged[rule["alert"]]
        assert rule["labels"]["severity"] == expected.severity, rule["alert"]
        assert seconds(rule["for"]) == expected.hold, rule["alert"]
        numbers = tuple(float(n) for n in NUMBER.findall(rule["expr"]))
        assert numbers == expected.numbers, rule["alert"]


def test_the_rules_use_only_the_agreed_metric_names() -> None:
    for rule in shipped():
        names = set(re.findall(r"\b(edge_agent_\w+|up)\b", rule["expr"]))
        assert names, rule["alert"]
        assert names <= AGREED_METRICS, rule["alert"]


def test_every_alert_says_what_to_do_and_a_per_destination_one_names_it() -> None:
    for rule in shipped():
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        if set(re.findall(r"edge_agent_\w+", rule["expr"])) & PER_DESTINATION:
            for text in annotations.values():
                assert "{{ $labels.destination }}" in text, rule["alert"]
