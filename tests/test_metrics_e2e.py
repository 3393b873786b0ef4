"""The metrics endpoint while the agent works for real: DCMTK's storescu sends, the agent
forwards to Orthanc, and an HTTP client scrapes ``/metrics`` as Prometheus would. The
text is read with ``prometheus_client``'s parser and checked by ``promtool``; the
counters equal what was sent and delivered, and the oldest undelivered instance ages
while Orthanc is away and is back to zero once it returns."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from pathlib import Path

import dicomgen
import pytest
from bench.peers import Orthanc
from prometheus_client.parser import text_string_to_metric_families

from agent import config as config_module
from agent.app import Agent
from tests.support import dcmtk, free_port, wait_until
from tests.test_forward import forward_config

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def scrape(port: int) -> str:
    """The text of one scrape, as a Prometheus server's HTTP client gets it."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain")
        return str(answer.read().decode("utf-8"))


def samples(text: str) -> Samples:
    """Every sample of a scrape, by name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def storescu(port: int, files: list[Path]) -> None:
    """Send ``files`` as the modality does, with DCMTK."""
    subprocess.run(
        [dcmtk("storescu"), "-aet", "MODALITY", "-aec", "EDGE", "127.0.0.1", str(port),
         *map(str, files)],
        check=True, capture_output=True, timeout=120,
    )


def promtool_check(text: str) -> None:
    """``promtool check metrics`` reads the text from stdin; any problem fails the test."""
    checked = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()


@pytest.mark.slow
def test_metrics_follow_a_modality_the_agent_and_a_pacs_that_goes_away(
    orthanc: Orthanc, tmp_path: Path
) -> None:
    metrics_port = free_port()
    config_path = forward_config(tmp_path, {"PACS": ("ORTHANC", orthanc.port)}, ["PACS"])
    config_path.write_text(
        config_path.read_text() + f'\n[metrics]\nport = {metrics_port}\nbind = "127.0.0.1"\n'
    )
    config = config_module.load_file(config_path)
    first = dicomgen.write_series(tmp_path / "first", 10, size=32)
    second = dicomgen.write_series(tmp_path / "second", 5, size=32)
    with Agent(config):
        storescu(config.agent.port, first)
        wait_until(
            lambda: value(samples(scrape(metrics_port)), "edge_agent_delivered_total",
                          destination="PACS") == 10,
            60, "the metrics to count 10 delivered",
        )
        text = scrape(metrics_port)
        promtool_check(text)
        found = samples(text)
        assert value(found, "edge_agent_instances_received_total") == 10
        sent_bytes = sum(path.stat().st_size for path in first)
        # the files as stored: the data sets sent, each with the agent's own file meta
        assert 0.9 * sent_bytes < value(found, "edge_agent_received_bytes_total") < 1.1 * sent_bytes
        assert value(found, "edge_agent_queue_instances", destination="PACS") == 0
        assert value(found, "edge_agent_oldest_undelivered_age_seconds", destination="PACS") == 0
        assert value(found, "edge_agent_cstore_duration_seconds_count") == 10
        assert orthanc.count() == 10
        stranger = subprocess.run(  # an AE the agent does not know: rejected, and counted
            [dcmtk("echoscu"), "-aet", "STRANGER", "-aec", "EDGE", "127.0.0.1",
             str(config.agent.port)], capture_output=True, timeout=60,
        )
        assert stranger.returncode != 0
        wait_until(
            lambda: samples(scrape(metrics_port)).get(
                ("edge_agent_associations_rejected_total", (("reason", "unknown-ae"),))
            ) == 1,
            30, "the rejected association to be counted",
        )

        orthanc.__exit__()  # the PACS goes away; what arrives now waits
        storescu(config.agent.port, second)
        wait_until(
            lambda: value(samples(scrape(metrics_port)), "edge_agent_queue_instances",
                          destination="PACS") == 5,
            60, "five instances queued",
        )
        age = value(samples(scrape(metrics_port)), "edge_agent_oldest_undelivered_age_seconds",
                    destination="PACS")
        wait_until(
            lambda: value(samples(scrape(metrics_port)),
                          "edge_agent_oldest_undelivered_age_seconds",
                          destination="PACS") > age,
            30, "the oldest undelivered instance to age",
        )
        waiting_bytes = value(samples(scrape(metrics_port)), "edge_agent_queue_bytes",
                              destination="PACS")
        assert waiting_bytes >= sum(path.stat().st_size for path in second) * 0.9

        orthanc.__enter__()  # back, on the same port
        wait_until(lambda: orthanc.count() == 15, 120, "the waiting five at Orthanc too")
        wait_until(
            lambda: (
                lambda s: value(s, "edge_agent_delivered_total", destination="PACS") == 15
                and value(s, "edge_agent_oldest_undelivered_age_seconds",
                          destination="PACS") == 0
                and value(s, "edge_agent_queue_instances", destination="PACS") == 0
            )(samples(scrape(metrics_port))),
            60, "every instance delivered and nothing waiting",
        )
        final = samples(scrape(metrics_port))
        assert value(final, "edge_agent_instances_received_total") == 15
        assert value(final, "edge_agent_delivery_duration_seconds_count",
                     destination="PACS") == 15
        assert value(final, "edge_agent_last_delivery_timestamp_seconds",
                     destination="PACS") > 0
