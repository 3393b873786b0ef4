"""The metrics endpoint: a real agent on ephemeral ports, scraped with a real HTTP client;
its text parsed by prometheus_client and checked by ``promtool check metrics``."""

from __future__ import annotations

import http.client
import json
import logging
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dicomgen
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent import config as config_module
from agent.app import Agent
from agent.errors import ConfigError, ConfigErrors
from agent.field.console.commands import AgentCommands
from agent.field.console.table import CommandTable
from agent.metrics.collector import StatusCollector
from agent.metrics.endpoint import MAX_CONNECTIONS
from agent.status import State, StatusModel
from agent.status_file import read_published
from agent.status_parts import ClockState
from tests.certs import make_pki
from tests.conftest import MODALITY_AE
from tests.support import dcmtk, free_port, peer, run_cli, wait_until, write_config

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
TOKEN = "s3cret-token-for-the-test"
# the names issue 22 fixes and the alert rules (monitoring/edge-agent.rules.yml) rely on
AGREED = {f"edge_agent_{name}" for name in (
    "instances_received", "instances_duplicates", "instances_refused", "received_bytes",
    "associations_open", "associations_rejected", "delivered", "delivery_failures",
    "quarantined_instances", "queue_instances", "queue_bytes",
    "oldest_undelivered_age_seconds", "last_delivery_timestamp_seconds", "destination_up",
    "commitment_outstanding", "disk_free_bytes", "disk_floor_bytes", "disk_floor_eta_seconds",
    "certificate_expiry_seconds", "clock_synchronised", "clock_plausible", "healthy",
    "start_time_seconds", "cstore_duration_seconds", "delivery_duration_seconds",
    "cfind_duration_seconds")}


def make_config(tmp_path: Path, metrics: str | None = "port = 0", extra: str = "",
                name: str = "agent.toml") -> Path:
    """An agent on a free port with one modality, and the [metrics] table given."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = write_config(
        tmp_path / name,
        {"ae_title": "EDGE", "port": free_port(), "bind": "127.0.0.1",
         "data_dir": str(tmp_path / "data"), "min_free_mb": 0},
        {"CT": peer(MODALITY_AE, allow=("echo", "store"))},
    )
    text = path.read_text() + extra
    if metrics is not None:
        text += f"\n[metrics]\n{metrics}\n"
    path.write_text(text)
    return path


def start(running: list[Agent], config: Path) -> Agent:
    agent = Agent(config_module.load_file(config))
    running.append(agent)
    agent.start()
    return agent


def port_of(agent: Agent) -> int:
    assert agent.metrics is not None and agent.metrics.url is not None
    return int(agent.metrics.url.rsplit(":", 1)[1])


def get(port: int, path: str, *, token: str | None = None, method: str = "GET",
        context: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request with http.client: status, headers, body."""
    connection: http.client.HTTPConnection
    if context is not None:
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=10,
                                                 context=context)
    else:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    try:
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def families(text: str) -> dict[str, Any]:
    """The parsed metric families by name (counters without ``_total``)."""
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(text: str, sample: str, **labels: str) -> float:
    """The value of one sample (by its full name and labels)."""
    for family in text_string_to_metric_families(text):
        for each in family.samples:
            if each.name == sample and each.labels == labels:
                return float(each.value)
    raise AssertionError(f"no sample {sample}{labels} in:\n{text}")


def promtool_check(text: str) -> None:
    result = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result


def storescu(port: int, directory: Path) -> None:
    result = subprocess.run(
        [dcmtk("storescu"), "-aet", MODALITY_AE, "-aec", "EDGE", "+sd", "127.0.0.1", str(port),
         str(directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# --- what /metrics serves ---------------------------------------------------------------


def test_a_scrape_counts_what_storescu_stored_and_passes_promtool(
        running: list[Agent], tmp_path: Path) -> None:
    agent = start(running, make_config(tmp_path))
    sent = dicomgen.write_series(tmp_path / "study", 5, size=8)
    assert agent.server is not None
    storescu(agent.server.port, tmp_path / "study")

    status, headers, body = get(port_of(agent), "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert value(text, "edge_agent_instances_received_total") == len(sent)
    stored_bytes = value(text, "edge_agent_received_bytes_total")
    assert stored_bytes > 0 and stored_bytes == agent.status.snapshot().received_bytes
    assert value(text, "edge_agent_healthy") == 1
    assert value(text, "edge_agent_cstore_duration_seconds_count") >= 0  # the lead feeds it
    promtool_check(text)
    assert families(text)["edge_agent_instances_received"].type == "counter"

    # each scrape is counted in the status model (and so in `edge-agent metrics`)
    assert agent.status.snapshot().metrics.scrapes == 1
    get(port_of(agent), "/metrics")
    scraped = agent.status.snapshot().metrics
    assert scraped.scrapes == 2 and scraped.last_scrape is not None
    assert scraped.endpoint == f"http://127.0.0.1:{port_of(agent)}"


def test_every_agreed_name_from_one_snapshot() -> None:
    """The collector alone, on a model set by hand and a fixed clock: every name the alert
    rules use, with the values the agreement gives them."""
    status = StatusModel()
    now = 1_800_000_000.0
    status.set_state(State.SERVING)
    status.stored("stored", 1000)
    status.stored("duplicate", 1000)
    status.refused("disk full", 0xA700)
    status.refused("cut off", None)
    status.association_rejected("unknown-ae")
    status.forwarded("PACS", 0.2)
    status.forward_failed("PACS", "refused")
    status.queue_depth({"PACS": {"pending": 2, "retrying": 1, "quarantined": 4},
                        "RIS": {"pending": 1}}, ("PACS", "RIS"),
                       {"PACS": (3000, now - 90.0), "RIS": (10, None)})
    status.destination_state("RIS", now - 5, "refused", now + 5)
    status.destination_commitments({"PACS": {"awaiting": 3}})
    status.disk(5 * 2**30, False, floor=2**30, full_in=None)
    status.certificate("2030-01-01T00:00:00+00:00")
    status.clock_state(ClockState(synchronised=None, plausible=False, trusted=False))
    status.timings.cstore.observe(0.02)
    status.timings.cfind.observe(0.03)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status, clock=lambda: now))

    text = generate_latest(registry).decode()
    promtool_check(text)
    assert set(families(text)) >= AGREED
    assert value(text, "edge_agent_instances_refused_total", status="0xA700") == 1
    assert value(text, "edge_agent_instances_refused_total", status="none") == 1
    assert value(text, "edge_agent_associations_rejected_total", reason="unknown-ae") == 1
    assert value(text, "edge_agent_instances_duplicates_total") == 1
    assert value(text, "edge_agent_delivered_total", destination="PACS") == 1
    assert value(text, "edge_agent_delivery_failures_total", destination="PACS") == 1
    assert value(text, "edge_agent_queue_instances", destination="PACS") == 3
    assert value(text, "edge_agent_quarantined_instances", destination="PACS") == 4
    assert value(text, "edge_agent_queue_bytes", destination="PACS") == 3000
    assert value(text, "edge_agent_oldest_undelivered_age_seconds", destination="PACS") == 90
    assert value(text, "edge_agent_oldest_undelivered_age_seconds", destination="RIS") == 0
    started = value(text, "edge_agent_start_time_seconds")
    assert value(text, "edge_agent_last_delivery_timestamp_seconds", destination="RIS") == started
    assert value(text, "edge_agent_last_delivery_timestamp_seconds", destination="PACS") > started
    assert value(text, "edge_agent_destination_up", destination="PACS") == 1
    assert value(text, "edge_agent_destination_up", destination="RIS") == 0
    assert value(text, "edge_agent_commitment_outstanding", destination="PACS") == 3
    assert value(text, "edge_agent_disk_free_bytes") == 5 * 2**30
    assert value(text, "edge_agent_disk_floor_bytes") == 2**30
    assert value(text, "edge_agent_disk_floor_eta_seconds") == float("inf")
    assert value(text, "edge_agent_certificate_expiry_seconds") == 1_893_456_000 - now
    assert value(text, "edge_agent_clock_synchronised") == 0
    assert value(text, "edge_agent_clock_plausible") == 0
    assert value(text, "edge_agent_cstore_duration_seconds_count") == 1
    assert value(text, "edge_agent_cfind_duration_seconds_bucket", le="0.05") == 1
    assert "_created" not in text  # no per-process creation times: noise for the rules

    status.disk(5 * 2**30, False, floor=2**30, full_in=3600.0)
    status.clock_state(ClockState(synchronised=True))
    status.set_state(State.FAILED)
    text = generate_latest(registry).decode()
    assert value(text, "edge_agent_disk_floor_eta_seconds") == 3600
    assert value(text, "edge_agent_clock_synchronised") == 1
    assert value(text, "edge_agent_healthy") == 0


# --- /healthz, other paths and methods --------------------------------------------------


def test_healthz_follows_the_health_check(running: list[Agent], tmp_path: Path) -> None:
    agent = start(running, make_config(tmp_path))
    port = port_of(agent)
    assert get(port, "/healthz")[:1] == (200,)
    assert get(port, "/nothing")[0] == 404
    assert get(port, "/metrics", method="POST")[0] == 405
    assert get(port, "/metrics", method="HEAD")[0] == 405

    assert agent.server is not None and agent.server._server is not None
    agent.server._server.socket.close()  # what a crashed listener looks like
    wait_until(lambda: agent.status.snapshot().state is State.FAILED, 10, "the health check")
    status, _headers, body = get(port, "/healthz")
    assert status == 503 and body == b"unhealthy\n"
    assert value(get(port, "/metrics")[2].decode(), "edge_agent_healthy") == 0


def test_the_endpoint_is_absent_without_a_metrics_table(
        running: list[Agent], tmp_path: Path) -> None:
    port = free_port()
    off = start(running, make_config(tmp_path, metrics=None))
    assert off.metrics is None and off.status.snapshot().metrics.endpoint is None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    off.close()
    on = start(running, make_config(tmp_path, metrics=f"port = {port}", name="on.toml"))
    assert get(port, "/healthz")[0] == 200  # the same port, once [metrics] names it
    assert on.status.snapshot().metrics.endpoint == f"http://127.0.0.1:{port}"


# --- the bearer token -------------------------------------------------------------------


def test_a_missing_or_wrong_token_gets_401_and_nothing_else(
        running: list[Agent], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token_file = tmp_path / "metrics.token"
    token_file.write_text(f"  {TOKEN}\n")  # surrounding white space is not the token's
    agent = start(running, make_config(tmp_path, metrics='port = 0\ntoken_file = "metrics.token"'))
    port = port_of(agent)
    for path in ("/metrics", "/healthz", "/elsewhere"):
        for token in (None, "wrong", TOKEN + "x", ""):
            status, headers, body = get(port, path, token=token)
            assert (status, body) == (401, b""), (path, token)
            assert headers["WWW-Authenticate"].startswith("Bearer")
    status, _headers, body = get(port, "/metrics", method="POST")
    assert (status, body) == (401, b"")
    assert agent.status.snapshot().metrics.scrapes == 0  # nothing was served

    status, _headers, body = get(port, "/metrics", token=TOKEN)
    assert status == 200 and b"edge_agent_instances_received_total" in body
    assert get(port, "/healthz", token=TOKEN)[0] == 200
    assert get(port, "/elsewhere", token=TOKEN)[0] == 404
    assert get(port, "/metrics", token=TOKEN, method="POST")[0] == 405

    token_file.write_text("rotated-token-longer\n")  # a new token takes effect at once
    assert get(port, "/metrics", token=TOKEN)[0] == 401
    assert get(port, "/metrics", token="rotated-token-longer")[0] == 200
    token_file.unlink()  # an unreadable file refuses everyone, and says so
    assert get(port, "/metrics", token="rotated-token-longer")[0] == 401
    assert "every metrics request is refused" in caplog.text
    assert TOKEN not in caplog.text and "rotated-token" not in caplog.text


def test_the_token_file_is_checked_with_the_configuration(tmp_path: Path) -> None:
    missing = make_config(tmp_path, metrics='port = 9110\ntoken_file = "nowhere.token"')
    with pytest.raises(ConfigErrors, match=r"metrics\.token_file: .*nowhere.token does not exist"):
        config_module.load_file(missing)
    (tmp_path / "empty.token").write_text("\n")
    empty = make_config(tmp_path, metrics='port = 9110\ntoken_file = "empty.token"')
    with pytest.raises(ConfigErrors, match=r"metrics\.token_file: .*is empty"):
        config_module.load_file(empty)
    result = run_cli("check-config", "--config", str(missing))
    assert result.returncode == 2 and "metrics.token_file" in result.stderr


def test_the_metrics_table_is_validated_like_the_others(tmp_path: Path) -> None:
    def errors(metrics: str) -> str:
        with pytest.raises(ConfigErrors) as caught:
            config_module.load_file(make_config(tmp_path, metrics=metrics))
        return str(caught.value)

    assert "metrics.tls: true needs a [tls] table" in errors("port = 9110\ntls = true")
    assert "metrics.port: a port is 0-65535" in errors("port = 99999")
    assert "metrics.bind" in errors('port = 9110\nbind = "not a host!"')
    assert "metrics.colour: unknown key" in errors("port = 9110\ncolour = 'red'")
    clash = make_config(tmp_path, metrics=None)
    agent_port = config_module.load_file(clash).agent.port
    clash.write_text(clash.read_text() + f"\n[metrics]\nport = {agent_port}\n")
    with pytest.raises(ConfigErrors, match=rf"metrics\.port: is agent\.port \({agent_port}\)"):
        config_module.load_file(clash)
    assert config_module.load_file(make_config(tmp_path, metrics="bind = '::1'")).metrics is None

    good = make_config(tmp_path, metrics="port = 9110")
    settings = config_module.load_file(good).metrics
    assert settings is not None and (settings.bind, settings.port) == ("127.0.0.1", 9110)
    result = run_cli("check-config", "--config", str(good))
    assert result.returncode == 0, result.stderr
    assert "metrics on http://127.0.0.1:9110/metrics and /healthz, no token required" \
        in result.stdout


def test_a_reload_takes_a_new_token_file_and_keeps_the_address(
        running: list[Agent], tmp_path: Path) -> None:
    (tmp_path / "a.token").write_text("first-token\n")
    (tmp_path / "b.token").write_text("second-token\n")
    first = make_config(tmp_path, metrics='port = 0\ntoken_file = "a.token"')
    agent = start(running, first)
    port = port_of(agent)
    changed = tmp_path / "changed.toml"
    changed.write_text(first.read_text().replace('"a.token"', '"b.token"')
                       .replace("[metrics]\nport = 0", "[metrics]\nport = 1"))
    assert agent.reload(config_module.load_file(changed)) == ["metrics.port"]
    assert get(port, "/metrics", token="first-token")[0] == 401
    assert get(port, "/metrics", token="second-token")[0] == 200

    removed = tmp_path / "removed.toml"  # the [metrics] table gone: off after a restart
    removed.write_text(first.read_text().split("\n[metrics]")[0])
    assert agent.reload(config_module.load_file(removed)) == ["metrics"]
    assert get(port, "/metrics", token="second-token")[0] == 200


# --- HTTPS ------------------------------------------------------------------------------


def test_https_with_the_agent_certificate_and_plain_http_fails(
        running: list[Agent], tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    tls = (f'\n[tls]\ncertificate = "{pki.agent.cert}"\nprivate_key = "{pki.agent.key}"\n'
           f'ca = "{pki.ca}"\nport = 0\n')
    agent = start(running, make_config(tmp_path, metrics="port = 0\ntls = true", extra=tls))
    port = port_of(agent)
    assert agent.metrics is not None and agent.metrics.url == f"https://127.0.0.1:{port}"
    trusting = ssl.create_default_context(cafile=str(pki.ca))
    status, _headers, body = get(port, "/metrics", context=trusting)
    assert status == 200
    expiry = value(body.decode(), "edge_agent_certificate_expiry_seconds")
    assert 364 * 86400 < expiry <= 365 * 86400
    with pytest.raises((http.client.HTTPException, OSError)):
        get(port, "/metrics")
    assert get(port, "/healthz", context=trusting)[0] == 200  # still serving after that


def test_a_bind_beyond_loopback_warns_once(
        running: list[Agent], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    start(running, make_config(tmp_path / "a", metrics="port = 0"))
    assert "reachable from the network" not in caplog.text
    agent = start(running, make_config(tmp_path / "b", metrics='port = 0\nbind = "0.0.0.0"'))
    for _ in range(3):
        assert get(port_of(agent), "/metrics")[0] == 200
    warnings = [r for r in caplog.records if "reachable from the network" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "without a token" in warnings[0].getMessage()


def test_the_metrics_command_and_the_console_say_where_and_when(
        running: list[Agent], tmp_path: Path) -> None:
    off_config = make_config(tmp_path / "off", metrics=None)
    off = run_cli("metrics", "--config", str(off_config))
    assert off.returncode == 0 and "off: the configuration has no [metrics] port" in off.stdout

    config = make_config(tmp_path)
    stopped = run_cli("metrics", "--config", str(config))
    assert "off: the agent is not running (configured for http://127.0.0.1:0)" in stopped.stdout
    agent = start(running, config)
    url = f"http://127.0.0.1:{port_of(agent)}"
    get(port_of(agent), "/metrics")
    wait_until(lambda: (read_published(agent.layout.run_dir) or {}).get("metrics", {})
               .get("scrapes") == 1, 10, "the scrape to be published")
    result = run_cli("metrics", "--config", str(config))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"metrics   on at {url}/metrics and /healthz"
    assert lines[1].strip() == "no token is required"
    assert lines[2].strip().startswith("last scrape 20") and lines[2].endswith(
        ", 1 since the agent started")
    as_json = json.loads(run_cli("metrics", "--json", "--config", str(config)).stdout)
    assert as_json["endpoint"] == url and as_json["scrapes"] == 1

    reply = AgentCommands(agent, CommandTable()).metrics({})  # type: ignore[arg-type]  # no LEDs
    assert reply.ok and reply.text == f"on at {url}/metrics and /healthz"
    assert any("1 since the agent started" in line for line in reply.body)


@pytest.fixture(autouse=True)
def _no_stray_servers() -> Iterator[None]:
    """Every endpoint a test started is closed with its agent (its thread gone)."""
    yield
    assert not [t for t in threading.enumerate() if t.name == "metrics" and t.is_alive()]


def test_a_bad_address_names_the_key(running: list[Agent], tmp_path: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        taken = holder.getsockname()[1]
        with pytest.raises(ConfigError, match=r"metrics\.port: port \d+ is already in use"):
            start(running, make_config(tmp_path, metrics=f"port = {taken}"))
    finally:
        holder.close()


def test_idle_connections_beyond_the_bound_are_closed_and_the_slots_come_back(
        running: list[Agent], tmp_path: Path) -> None:
    agent = start(running, make_config(tmp_path))
    port = port_of(agent)
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10)
            for _ in range(MAX_CONNECTIONS)]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
            assert extra.recv(1024) == b""  # closed at once: every slot is taken
    finally:
        for each in idle:
            each.close()

    def answered() -> bool:
        try:
            return get(port, "/healthz")[0] == 200
        except OSError:
            return False

    wait_until(answered, 10, "a slot to come back")
