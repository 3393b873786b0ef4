"""Rights are checked on every request by the live configuration (a reload acts on open
associations), and an error while deciding on an association rejects it."""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import dicomgen
import pytest
from pydicom import dcmread

from agent import config as config_module
from agent.app import Agent
from agent.config import Config
from agent.net import access, scp
from agent.net.access import Caller
from agent.net.qr import QueryRetrieveHandlers
from tests import scu
from tests.support import dcmtk, free_port, peer, wait_until, write_config

EVERYTHING = ("echo", "find", "move", "get")
# DCMTK prints 0x0124 (Refused: Not Authorized) as "0x124" where it does not name it
NOT_AUTHORISED = re.compile(r"0x0?124\b")


def agent_config(path: Path, port: int, ws_allow: tuple[str, ...], dest_port: int) -> Path:
    """CT stores, WS may do what ``ws_allow`` says, DEST receives C-MOVEs."""
    return write_config(
        path,
        {"port": port, "bind": "127.0.0.1", "data_dir": str(path.parent / "data"),
         "min_free_mb": 0},
        {"CT": peer("MODALITY", allow=("store",)), "WS": peer("WS", allow=ws_allow),
         "DEST": peer("DEST", dest_port, allow=())})


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Agent, Path, str]]:
    """An agent holding a 3-instance series; its config file; the study UID."""
    path = agent_config(tmp_path / "agent.toml", free_port(), EVERYTHING, free_port())
    sent = dicomgen.write_series(tmp_path / "series", 3, size=32)
    with Agent(config_module.load_file(path)) as agent:
        assert scu.store(agent.config.agent.port, sent) == [0] * 3
        yield agent, path, str(dcmread(sent[0], stop_before_pixels=True).StudyInstanceUID)


def reload_on_first(agent: Agent, path: Path, service: str, method: str) -> None:
    """While the archive answers the first request, a reload takes ``service`` from WS."""
    assert agent.server is not None
    reader = agent.server._reader
    original: Callable[..., Any] = getattr(reader, method)
    fewer = tuple(s for s in EVERYTHING if s != service)
    revoked = agent_config(path.with_name("revoked.toml"), agent.config.agent.port, fewer,
                           agent.config.peers["DEST"].port)
    calls = []

    def answer_then_reload(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        if not calls:
            calls.append(1)
            assert agent.reload(config_module.load_file(revoked)) == []
        return result

    setattr(reader, method, answer_then_reload)


def refusals(caplog: pytest.LogCaptureFixture, what: str) -> list[str]:
    """The warning lines that refused a ``what`` request."""
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.getMessage().startswith(f"refused {what}")]


def run(tool: str, *args: str, port: int) -> subprocess.CompletedProcess[str]:
    """A DCMTK tool as WS, sending its request twice over one association."""
    return subprocess.run([dcmtk(tool), "-v", "-aet", "WS", "-aec", "EDGE", "--repeat", "2",
                           *args, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60)


def test_a_reload_refuses_the_next_c_find_on_the_same_association(
        served: tuple[Agent, Path, str], caplog: pytest.LogCaptureFixture) -> None:
    agent, path, study = served
    reload_on_first(agent, path, "find", "find")
    caplog.set_level(logging.WARNING)
    result = run("findscu", "-S", "-k", "QueryRetrieveLevel=STUDY", "-k",
                 f"StudyInstanceUID={study}", port=agent.config.agent.port)
    output = result.stdout + result.stderr
    assert output.count("Requesting Association") == 1  # both requests on one association
    assert output.count("Find Response: 1 (Pending)") == 1  # the first answered
    assert NOT_AUTHORISED.search(output)  # the second refused: Not Authorized
    assert len(refusals(caplog, "C-FIND")) == 1
    assert study not in " ".join(refusals(caplog, "C-FIND"))


def test_a_reload_refuses_the_next_c_get_on_the_same_association(
        served: tuple[Agent, Path, str], caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    agent, path, study = served
    reload_on_first(agent, path, "get", "resolve")
    caplog.set_level(logging.WARNING)
    got = tmp_path / "got"
    got.mkdir()
    result = run("getscu", "-S", "-od", str(got), "-k", "QueryRetrieveLevel=STUDY", "-k",
                 f"StudyInstanceUID={study}", port=agent.config.agent.port)
    output = result.stdout + result.stderr
    assert output.count("Requesting Association") == 1
    assert len(list(got.iterdir())) == 3  # the first C-GET delivered
    assert NOT_AUTHORISED.search(output), output
    assert len(refusals(caplog, "C-GET")) == 1


def test_a_reload_refuses_the_next_c_move_on_the_same_association(
        served: tuple[Agent, Path, str], caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    agent, path, study = served
    reload_on_first(agent, path, "move", "resolve")
    caplog.set_level(logging.WARNING)
    moved = tmp_path / "moved"
    moved.mkdir()
    dest_port = agent.config.peers["DEST"].port
    destination = subprocess.Popen([dcmtk("storescp"), "-aet", "DEST", "-od", str(moved),
                                    str(dest_port)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
    try:
        echo = [dcmtk("echoscu"), "-aec", "DEST", "127.0.0.1", str(dest_port)]
        wait_until(lambda: subprocess.run(echo, capture_output=True).returncode == 0, 20,
                   "storescp to listen")
        result = run("movescu", "-S", "-aem", "DEST", "-k", "QueryRetrieveLevel=STUDY", "-k",
                     f"StudyInstanceUID={study}", port=agent.config.agent.port)
    finally:
        destination.terminate()
        destination.wait(10)
    output = result.stdout + result.stderr
    assert output.count("Requesting Association") == 1
    assert len(list(moved.iterdir())) == 3  # the first C-MOVE delivered
    assert NOT_AUTHORISED.search(output), output
    assert len(refusals(caplog, "C-MOVE")) == 1


def test_an_error_while_admitting_rejects_the_association(
        served: tuple[Agent, Path, str], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    agent, _path, study = served

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the lookup failed")

    monkeypatch.setattr(scp, "admit", broken)
    caplog.set_level(logging.ERROR)
    result = subprocess.run([dcmtk("findscu"), "-aet", "WS", "-aec", "EDGE", "-S", "-k",
                             "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                             "127.0.0.1", str(agent.config.agent.port)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "Association Rejected" in result.stderr
    assert "Transient" in result.stderr  # rejected-transient, service user, no reason given
    assert any("could not decide on an association request" in r.getMessage()
               for r in caplog.records)


def test_an_error_while_checking_rights_refuses_the_request(
        served: tuple[Agent, Path, str], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    agent, _path, study = served

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the configuration could not be read")

    monkeypatch.setattr(scp, "recheck", broken)
    result = run("findscu", "-S", "-k", "QueryRetrieveLevel=STUDY", "-k",
                 f"StudyInstanceUID={study}", port=agent.config.agent.port)
    output = result.stdout + result.stderr
    assert "Pending" not in output and NOT_AUTHORISED.search(output)


class _Broken:
    """SOP class extended negotiation items that cannot be read."""

    def items(self) -> Any:
        raise ValueError("malformed")


class _Association:
    """Something the handlers can key by association."""


class _Event:
    def __init__(self) -> None:
        self.assoc = _Association()
        self.app_info = _Broken()


def test_extended_negotiation_that_cannot_be_read_declines_every_option(
        caplog: pytest.LogCaptureFixture) -> None:
    handlers = QueryRetrieveHandlers(config_module.builtin_default(), None,  # type: ignore[arg-type]
                                     lambda assoc: None)
    assert handlers.on_sop_extended(_Event()) == {}
    assert "every option declined" in caplog.text


def config_with(base: Config, **ws: Any) -> Config:
    """``base`` with peers.WS changed."""
    peers = dict(base.peers)
    peers["WS"] = replace(peers["WS"], **ws)
    return replace(base, peers=peers)


def test_recheck_follows_the_live_configuration(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    base = config_module.load_file(
        agent_config(tmp_path / "agent.toml", free_port(), EVERYTHING, free_port()))
    admitted = access.admit(base, "WS", "EDGE", "127.0.0.1")
    assert isinstance(admitted, Caller) and admitted.may("find")
    resolved: list[str] = []
    monkeypatch.setattr(access, "host_matches",
                        lambda host, address: resolved.append(host) or host == "localhost")
    assert access.recheck(base, admitted).allowed == frozenset(EVERYTHING)
    assert resolved == []  # the same host: not resolved again on every request
    assert not access.recheck(config_with(base, allow=frozenset({"echo"})), admitted).may("find")
    assert access.recheck(config_with(base, host="localhost"), admitted).may("find")
    assert not access.recheck(config_with(base, host="elsewhere"), admitted).may("find")
    assert resolved == ["localhost", "elsewhere"]
    gone = replace(base, peers={k: v for k, v in base.peers.items() if k != "WS"})
    assert access.recheck(gone, admitted).allowed == base.agent.allow_unknown == frozenset()
