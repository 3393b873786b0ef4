"""The engine's contract with pynetdicom: every private name it relies on still exists,
the pin in pyproject.toml matches the version the engine was tested with, and the
event-driven loops really serve the associations of this process.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pynetdicom
import pytest
from pynetdicom import AE, association, dul

from agent.app import Agent

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib
from agent.net import engine
from agent.net.engine.dul import EventDrivenDUL
from agent.net.engine.reactor import ParkingGate, run_reactor

REPO = Path(__file__).resolve().parent.parent
VERIFICATION = "1.2.840.10008.1.1"


@pytest.mark.parametrize(("owner", "name"), engine.PRIVATE_NAMES,
                         ids=[name for _, name in engine.PRIVATE_NAMES])
def test_every_private_name_the_engine_uses_exists(owner: object, name: str) -> None:
    holder = owner
    if isinstance(owner, type) and name in {"_idle_timer", "_kill_thread"}:
        holder = dul.DULServiceProvider(_FakeAssociation())  # instance attributes
    assert hasattr(holder, name), (
        f"pynetdicom {pynetdicom.__version__} has no {getattr(owner, '__name__', owner)}.{name}:"
        " the engine (agent/net/engine/) must be adapted before this pynetdicom is used")


class _FakeAssociation:
    """Just enough of an Association for a DULServiceProvider to be built."""

    network_timeout = None
    acse_timeout = None


def test_pynetdicom_is_pinned_to_the_tested_minor_version() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    [requirement] = [d for d in project["dependencies"] if d.startswith("pynetdicom")]
    major, minor = engine.TESTED_VERSION.split(".")
    pattern = rf"pynetdicom>={major}\.{minor}\.\d+,<{major}\.{int(minor) + 1}"
    assert re.fullmatch(pattern, requirement), f"{requirement!r} is not pinned to {pattern}"
    assert pynetdicom.__version__.startswith(engine.TESTED_VERSION + ".")


def test_associations_both_ways_run_the_event_driven_loops(agent: Agent) -> None:
    assert association.DULServiceProvider is EventDrivenDUL
    assert association.Association._run_reactor is run_reactor
    assert agent.server is not None
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", agent.server.port, ae_title="EDGE")
    try:
        assert assoc.is_established
        assert isinstance(assoc.dul, EventDrivenDUL)
        assert assoc.send_c_echo().Status == 0x0000
        assert isinstance(assoc._reactor_checkpoint, ParkingGate)
    finally:
        assoc.release()
    assert not assoc.is_established
