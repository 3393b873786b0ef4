"""Study completeness (issue 21 items 3 and 5): a study is complete by MPPS, by the
modality's own commitment request, or by a quiet period; the timers run on an injected
clock and survive a restart. Real peers: DCMTK's storescu and pynetdicom as the modality,
the agent as it runs, ``edge-agent studies`` and ``status`` as an operator runs them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import dicomgen
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from agent import config as config_module
from agent.app import Agent
from agent.archive import Layout
from agent.archive.studies import StudyBook
from agent.errors import ConfigError, ConfigErrors
from agent.ops.studies import studies
from tests.commitment_peers import ReportCatcher, request, store
from tests.support import dcmtk, free_port, run_cli, write_config

MOD_AE, QUIET_AE = "MOD", "SILENT"
QUIET = 10.0


class FakeClock:
    """A monotonic clock that moves only when the test says."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_config(tmp_path: Path, mod_port: int = 104) -> Path:
    """An agent with a modality that may store and ask for commitment (MOD), one whose
    studies never complete by quiet (SILENT: quiet_seconds = 0), and a short quiet period."""
    path = write_config(
        tmp_path / "agent.toml",
        {"ae_title": "EDGE", "port": free_port(), "bind": "127.0.0.1",
         "data_dir": str(tmp_path / "data"), "min_free_mb": 0},
        {"MODALITY": {"ae_title": MOD_AE, "host": "127.0.0.1", "port": mod_port,
                      "allow": ["echo", "store", "commit"]},
         "QUIETLESS": {"ae_title": QUIET_AE, "host": "127.0.0.1", "port": 104,
                       "allow": ["echo", "store"], "quiet_seconds": 0}},
    )
    path.write_text(path.read_text() + f"\n[study]\nquiet_seconds = {QUIET}\ngive_up_hours = 1\n")
    return path


def start(config: Path, clock: FakeClock, agents: list[Agent]) -> Agent:
    """The agent in this process, its study timers on ``clock``."""
    agent = Agent(config_module.load_file(config))
    agent.study_clock = clock
    agent.start()
    agents.append(agent)
    return agent


def tick(agent: Agent) -> None:
    """One judgement of the quiet and give-up timers (as the housekeeping tick does)."""
    assert agent.studies is not None
    agent.studies.tick()


def study(agent: Agent, uid: str) -> dict[str, Any]:
    """The study as ``edge-agent studies --json`` shows it."""
    listing = studies(Layout(agent.config.agent.data_dir), every=True).to_json()
    return next(entry for entry in listing if entry["study_instance_uid"] == uid)


def book(agent: Agent) -> StudyBook:
    assert agent.archive is not None
    return agent.archive.studies


def storescu(agent: Agent, files: list[Path], calling_ae: str = MOD_AE) -> None:
    """DCMTK's storescu as the modality: one association for ``files``."""
    result = subprocess.run(
        [dcmtk("storescu"), "-aet", calling_ae, "-aec", "EDGE", "127.0.0.1",
         str(agent.config.agent.port), *map(str, files)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr


def burst(directory: Path, count: int, study_of: dicomgen.Study) -> list[Path]:
    return dicomgen.write_series(directory, count, study=study_of, size=8)


# -- configuration ------------------------------------------------------------------------


def test_study_settings_their_defaults_and_errors_naming_the_key() -> None:
    default = config_module.parse({})
    assert (default.study.quiet_seconds, default.study.give_up_hours) == (60.0, 24.0)
    raw = {"study": {"quiet_seconds": 5, "give_up_hours": 2.5},
           "peers": {"CT": {"ae_title": "CT", "host": "h", "port": 104, "quiet_seconds": 0},
                     "MR": {"ae_title": "MR", "host": "h", "port": 104, "quiet_seconds": 30}}}
    config = config_module.parse(raw)
    assert (config.study.quiet_seconds, config.study.give_up_hours) == (5.0, 2.5)
    assert [config.quiet_seconds(ae) for ae in ("CT", "MR", "OTHER")] == [0.0, 30.0, 5.0]
    for raw, key in (
        ({"study": {"quiet_seconds": -1}}, "study.quiet_seconds"),
        ({"study": {"quiet_seconds": "60"}}, "study.quiet_seconds"),
        ({"study": {"give_up_hours": 0}}, "study.give_up_hours"),
        ({"study": {"quiet": 60}}, "study.quiet"),
        ({"peers": {"CT": {"ae_title": "CT", "host": "h", "port": 104, "quiet_seconds": -5}}},
         "peers.CT.quiet_seconds"),
    ):
        with pytest.raises((ConfigError, ConfigErrors)) as caught:
            config_module.parse(raw)
        assert key in str(caught.value)


# -- the quiet rule --------------------------------------------------------------------------


def test_two_bursts_with_a_short_gap_are_one_study_and_a_long_gap_reopens_it(
        tmp_path: Path, running: list[Agent]) -> None:
    clock = FakeClock(1000.0)
    agent = start(make_config(tmp_path), clock, running)
    exam = dicomgen.Study()
    storescu(agent, burst(tmp_path / "a", 3, exam))
    tick(agent)
    assert study(agent, exam.study_uid)["state"] == "arriving"
    clock.now = 1000.0 + QUIET - 5  # a shorter gap than the quiet period
    storescu(agent, burst(tmp_path / "b", 2, exam))
    tick(agent)
    clock.now = 1005.0 + QUIET - 1  # quiet since the second burst, but not long enough
    tick(agent)
    shown = study(agent, exam.study_uid)
    assert (shown["state"], shown["reason"], shown["received"]) == ("arriving", None, 5)
    clock.now = 1005.0 + QUIET
    tick(agent)
    shown = study(agent, exam.study_uid)
    assert (shown["state"], shown["reason"], shown["received"]) == ("complete", "quiet", 5)
    assert shown["expected"] is None and shown["missing"] == []
    clock.now = 1100.0  # a longer gap: the late instance re-opens the study at once
    storescu(agent, burst(tmp_path / "c", 1, exam))
    shown = study(agent, exam.study_uid)
    assert (shown["state"], shown["reason"], shown["received"]) == ("reopened", None, 6)
    tick(agent)
    clock.now = 1100.0 + QUIET - 1
    tick(agent)
    assert study(agent, exam.study_uid)["state"] == "reopened"
    clock.now = 1100.0 + QUIET
    tick(agent)
    shown = study(agent, exam.study_uid)
    assert (shown["state"], shown["reason"], shown["received"]) == ("complete", "quiet", 6)


def test_a_peer_with_quiet_seconds_0_never_completes_by_quiet(
        tmp_path: Path, running: list[Agent]) -> None:
    clock = FakeClock(1000.0)
    agent = start(make_config(tmp_path), clock, running)
    silent, chatty = dicomgen.Study(), dicomgen.Study()
    storescu(agent, burst(tmp_path / "s", 2, silent), calling_ae=QUIET_AE)
    storescu(agent, burst(tmp_path / "c", 2, chatty))
    tick(agent)
    clock.now += 10 * 24 * 3600.0
    tick(agent)
    assert study(agent, silent.study_uid)["state"] == "arriving"
    assert study(agent, chatty.study_uid)["reason"] == "quiet"


def test_a_restart_in_the_middle_keeps_the_study_and_restarts_its_timer(
        tmp_path: Path, running: list[Agent]) -> None:
    config = make_config(tmp_path)
    first = start(config, FakeClock(1000.0), running)
    exam = dicomgen.Study()
    storescu(first, burst(tmp_path / "a", 3, exam))
    tick(first)
    assert isinstance(first.study_clock, FakeClock)
    first.study_clock.now = 1000.0 + QUIET - 1  # a second short of complete, then a stop
    tick(first)
    first.close()
    running.remove(first)
    clock = FakeClock(50.0)  # a new boot: the monotonic clock starts again, lower
    second = start(config, clock, running)
    tick(second)
    shown = study(second, exam.study_uid)
    assert (shown["state"], shown["received"]) == ("arriving", 3)  # not lost
    clock.now = 50.0 + QUIET - 1
    tick(second)
    assert study(second, exam.study_uid)["state"] == "arriving"  # never complete early
    clock.now = 50.0 + QUIET
    tick(second)
    assert study(second, exam.study_uid)["reason"] == "quiet"  # judged again, from start-up


# -- the modality's commitment request ------------------------------------------------------


def pairs(datasets: list[Dataset]) -> list[tuple[str, str]]:
    return [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in datasets]


def test_the_modalitys_commitment_request_completes_its_study_at_once(
        tmp_path: Path, running: list[Agent]) -> None:
    catcher = ReportCatcher(free_port())
    try:
        agent = start(make_config(tmp_path, catcher.server.server_address[1]),
                      FakeClock(1000.0), running)
        exam, other = dicomgen.Study(), dicomgen.Study()
        sent = list(dicomgen.series(4, study=exam, size=8))
        partial = list(dicomgen.series(3, study=other, size=8))
        store(agent.config.agent.port, sent + partial[:2])
        assert request(agent.config.agent.port, generate_uid(), pairs(sent)) == (True, 0)
        shown = study(agent, exam.study_uid)  # no tick: the request itself completes it
        assert (shown["state"], shown["reason"], shown["received"], shown["expected"]) == (
            "complete", "commitment", 4, 4)
        # a request naming an instance the archive does not hold proves nothing yet
        assert request(agent.config.agent.port, generate_uid(), pairs(partial)) == (True, 0)
        assert study(agent, other.study_uid)["state"] == "arriving"
        assert catcher.arrived.wait(30)  # the modality still gets its report
    finally:
        catcher.close()


# -- MPPS evidence, as the MPPS SCP hands it over ---------------------------------------------


def test_mpps_final_completes_at_once_or_waits_then_gives_up_with_the_missing_listed(
        tmp_path: Path, running: list[Agent]) -> None:
    clock = FakeClock(1000.0)
    config = make_config(tmp_path)
    agent = start(config, clock, running)
    port = agent.config.agent.port
    whole, short, late = dicomgen.Study(), dicomgen.Study(), dicomgen.Study()
    whole_sent = list(dicomgen.series(3, study=whole, size=8))
    short_all = list(dicomgen.series(3, study=short, size=8))
    late_all = list(dicomgen.series(2, study=late, size=8))
    store(port, whole_sent + short_all[:2] + late_all[:1])
    tick(agent)

    def uids(datasets: list[Dataset]) -> frozenset[str]:
        return frozenset(str(ds.SOPInstanceUID) for ds in datasets)

    # every referenced instance is here: complete at once
    book(agent).mpps_final("1.2.826.0.1.1", (whole.study_uid,), uids(whole_sent), False)
    shown = study(agent, whole.study_uid)
    assert (shown["state"], shown["reason"], shown["expected"]) == ("complete", "mpps", 3)

    # the last referenced instance completes its study the moment it is stored
    book(agent).mpps_final("1.2.826.0.1.2", (late.study_uid,), uids(late_all), False)
    assert study(agent, late.study_uid)["state"] == "arriving"
    store(port, late_all[1:])
    shown = study(agent, late.study_uid)
    assert (shown["state"], shown["reason"], shown["received"]) == ("complete", "mpps", 2)

    # one never sent: arriving (the quiet rule does not apply), then given up on
    never = str(short_all[2].SOPInstanceUID)
    book(agent).mpps_final("1.2.826.0.1.3", (short.study_uid,), uids(short_all), True)
    tick(agent)
    clock.now += 3600.0 - 1  # give_up_hours = 1; long past the quiet period
    tick(agent)
    shown = study(agent, short.study_uid)
    assert (shown["state"], shown["expected"], shown["missing"]) == ("arriving", 3, [never])
    clock.now += 1
    tick(agent)
    shown = study(agent, short.study_uid)
    assert (shown["state"], shown["reason"]) == ("complete", "gave-up")
    assert (shown["received"], shown["expected"], shown["missing"]) == (2, 3, [never])

    # the missing one after all: re-opened, nothing missing any more
    store(port, short_all[2:])
    shown = study(agent, short.study_uid)
    assert (shown["state"], shown["received"], shown["missing"]) == ("reopened", 3, [])

    # what an operator sees: studies --json, --phi, the table, and status --json
    listing = json.loads(cli("studies", "--json", config))
    assert {entry["study_instance_uid"]: (entry["state"], entry["reason"])
            for entry in listing} == {
        whole.study_uid: ("complete", "mpps"),
        late.study_uid: ("complete", "mpps"),
        short.study_uid: ("reopened", None),
    }
    assert all({"received", "expected", "missing", "accession_number"} <= set(entry)
               and "patient_name" not in entry for entry in listing)
    with_phi = json.loads(cli("studies", "--json", "--phi", config))
    assert {entry["patient_name"] for entry in with_phi} == {"DOE^JOHN"}
    table = cli("studies", config)
    assert whole.study_uid in table and "ACC0001" in table and "DOE" not in table
    assert "DOE^JOHN" in cli("studies", "--phi", config)
    counts = json.loads(cli("status", "--json", config))["studies"]
    assert counts == {"arriving": 0, "reopened": 1, "complete": 2}
    assert "1 arriving (1 re-opened), 2 complete" in cli("status", config)


def cli(command: str, *args: str | Path) -> str:
    """``edge-agent COMMAND ARGS --config FILE`` (the last argument): its standard output."""
    *flags, config = args
    result = run_cli(command, *map(str, flags), "--config", str(config))
    assert result.returncode == 0, result.stderr
    return result.stdout
