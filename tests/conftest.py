"""Fixtures: configs, an in-process agent on an ephemeral port, child-process agents."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench.peers import Orthanc

from agent import config as config_module
from agent.app import Agent
from tests.support import AgentProcess, free_port, peer, write_config

MODALITY_AE = "MODALITY"

# a test run under a systemd service must not notify that service for in-process agents
for _name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
    os.environ.pop(_name, None)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """An empty data directory."""
    return tmp_path / "data"


@pytest.fixture
def config_file(tmp_path: Path, data_dir: Path) -> Path:
    """A config with one modality peer allowed to echo and store, on a free port."""
    return write_config(
        tmp_path / "agent.toml",
        {"ae_title": "EDGE", "port": free_port(), "bind": "127.0.0.1",
         "data_dir": str(data_dir), "min_free_mb": 0},
        {"CT": peer(MODALITY_AE, allow=("echo", "store"))},
    )


@pytest.fixture
def agent(config_file: Path) -> Iterator[Agent]:
    """The agent running in this process; stopped after the test."""
    running = Agent(config_module.load_file(config_file))
    running.start()
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def running() -> Iterator[list[Agent]]:
    """Agents a test starts in this process (and may restart); each closed after it."""
    agents: list[Agent] = []
    yield agents
    for each in agents:
        each.close()


@pytest.fixture
def agent_process(config_file: Path, data_dir: Path) -> Iterator[AgentProcess]:
    """The agent as a child process (for signals and kill -9); stopped after the test."""
    process = AgentProcess(config_file, data_dir)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """Orthanc 1.10.1 on ephemeral ports, as the central PACS."""
    with Orthanc(tmp_path / "orthanc") as running:
        yield running
