"""DICOMweb destinations (``kind = "dicomweb"``): STOW-RS to Orthanc's DICOMweb plugin
with HTTP basic auth, byte for byte; a wrong password quarantined; Orthanc stopped
mid-way and everything arriving once it is back, across an agent restart; echo."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dicomgen
import pytest
from pydicom import dcmread

from agent import config as config_module
from agent.app import Agent
from agent.errors import ConfigError, ConfigErrors, PeerError
from agent.ops.echo import echo_peer
from tests import scu
from tests.pacs import DICOMWEB_PLUGIN, OrthancWeb
from tests.support import (
    AgentProcess,
    free_port,
    peer,
    run_cli,
    toml_value,
    wait_until,
    write_config,
)
from tests.test_forward import jobs

pytestmark = pytest.mark.skipif(not DICOMWEB_PLUGIN.exists(),
                                reason="Orthanc's DICOMweb plugin (orthanc-dicomweb)")

FAST_RETRY = {"retry_first": 0.2, "retry_max": 0.5, "permanent_tries": 2}
USERS = {"edge": "s3cret-pass"}


@pytest.fixture
def orthanc_web(tmp_path: Path) -> Iterator[OrthancWeb]:
    """Orthanc with DICOMweb, basic auth for user ``edge``."""
    with OrthancWeb(tmp_path / "orthanc", USERS) as running:
        yield running  # type: ignore[misc]


def web_config(root: Path, cloud: dict[str, Any], forward: dict[str, Any] | None = None
               ) -> Path:
    """An agent config (a modality CT) forwarding to the DICOMweb peer CLOUD."""
    path = write_config(root / "agent.toml",
                        {"port": free_port(), "bind": "127.0.0.1",
                         "data_dir": str(root / "data"), "min_free_mb": 0},
                        {"CT": peer("MODALITY", allow=("store",)),
                         "CLOUD": {"kind": "dicomweb", **cloud}})
    settings = {"to": ["CLOUD"], **FAST_RETRY, **(forward or {})}
    lines = ["", "[forward]"] + [f"{k} = {toml_value(v)}" for k, v in settings.items()]
    path.write_text(path.read_text() + "\n".join(lines) + "\n")
    return path


def basic(root: Path, url: str, password: str) -> dict[str, Any]:
    """The CLOUD keys for basic auth, the password in a file beside the config."""
    (root / "cloud.password").write_text(password + "\n")
    return {"url": url, "auth": "basic", "user": "edge", "password_file": "cloud.password"}


def archived(data_dir: Path) -> dict[str, bytes]:
    """Every archived file's bytes by SOP Instance UID."""
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p.read_bytes()
            for p in (data_dir / "archive").rglob("*.dcm")}


def orthanc_files(orthanc: OrthancWeb) -> dict[str, bytes]:
    """Every file Orthanc holds, by SOP Instance UID, as it stored it."""
    query = {"Level": "Instance", "Query": {}, "Expand": True}
    found = orthanc.rest("/tools/find", json.dumps(query).encode())
    return {item["MainDicomTags"]["SOPInstanceUID"]: orthanc.raw(f"/instances/{item['ID']}/file")
            for item in found}


def states(data_dir: Path) -> set[str]:
    return set(jobs(data_dir).values())


@pytest.mark.slow
def test_500_instances_reach_orthanc_by_stow_rs_byte_identical(
        orthanc_web: OrthancWeb, tmp_path: Path) -> None:
    config = config_module.load_file(web_config(
        tmp_path, {**basic(tmp_path, orthanc_web.dicomweb, USERS["edge"]), "max_instances": 40,
                   "max_request_mb": 1}))
    sent = dicomgen.write_series(tmp_path / "study", 500, size=64)
    with Agent(config) as agent:
        assert scu.store(config.agent.port, sent) == [0] * 500
        wait_until(lambda: states(tmp_path / "data") == {"done"}, 120, "every job done")
        destination = agent.status.snapshot().destinations[0]
        assert destination.name == "CLOUD" and destination.last_success is not None
    ours, theirs = archived(tmp_path / "data"), orthanc_files(orthanc_web)
    assert len(ours) == 500
    assert theirs == ours  # the Part 10 files, meta header and all, byte for byte


def test_a_wrong_password_is_quarantined_as_permanent(orthanc_web: OrthancWeb,
                                                      tmp_path: Path) -> None:
    config = config_module.load_file(web_config(
        tmp_path, basic(tmp_path, orthanc_web.dicomweb, "not-the-password")))
    sent = dicomgen.write_series(tmp_path / "study", 5, size=16)
    with Agent(config):
        assert scu.store(config.agent.port, sent) == [0] * 5
        wait_until(lambda: states(tmp_path / "data") == {"quarantined"}, 30, "quarantine")
    assert orthanc_web.count() == 0
    errors = _last_errors(tmp_path / "data")
    assert errors and all("HTTP 401" in e and "credentials were refused" in e for e in errors)
    assert "not-the-password" not in (tmp_path / "data").joinpath("run", "status.json").read_text()


def _last_errors(data_dir: Path) -> list[str]:
    from agent.archive.index import connect

    conn = connect(data_dir / "index.sqlite", readonly=True)
    try:
        return [row[0] for row in conn.execute("SELECT last_error FROM forward_jobs")]
    finally:
        conn.close()


@pytest.mark.slow
def test_orthanc_stopped_mid_way_gets_everything_after_it_returns_across_a_restart(
        orthanc_web: OrthancWeb, tmp_path: Path) -> None:
    config_file = web_config(tmp_path, {**basic(tmp_path, orthanc_web.dicomweb, USERS["edge"]),
                                        "max_instances": 10})
    port = config_module.load_file(config_file).agent.port
    sent = dicomgen.write_series(tmp_path / "study", 200, size=64)
    process = AgentProcess(config_file, tmp_path / "data")
    try:
        process.start()
        stopped: list[bool] = []

        def stop_orthanc_once(_path: Path, _status: int) -> None:
            if not stopped and orthanc_web.count() >= 20:
                orthanc_web.stop()
                stopped.append(True)

        assert scu.store(port, sent, after_each=stop_orthanc_once) == [0] * 200
        assert stopped, "Orthanc was stopped while the study went out"
        wait_until(lambda: _down(tmp_path / "data"), 30, "CLOUD reported down")
        process.stop()  # the agent restarts while the destination is away
        assert "quarantined" not in states(tmp_path / "data")
        orthanc_web.start()
        process.start()
        wait_until(lambda: states(tmp_path / "data") == {"done"}, 120, "every job done")
    finally:
        process.stop()
    assert orthanc_files(orthanc_web) == archived(tmp_path / "data")


def _down(data_dir: Path) -> bool:
    try:
        published = json.loads((data_dir / "run" / "status.json").read_text())
    except (OSError, ValueError):
        return False
    return any(d.get("name") == "CLOUD" and d.get("state") == "down"
               for d in published.get("destinations", []))


def test_echo_says_ok_or_why_not(orthanc_web: OrthancWeb, tmp_path: Path) -> None:
    good_file = web_config(tmp_path, basic(tmp_path, orthanc_web.dicomweb, USERS["edge"]))
    printed = run_cli("echo", "CLOUD", "--config", str(good_file))
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.startswith(f"OK CLOUD ({orthanc_web.dicomweb}/studies) answered an"
                                     " authenticated QIDO-RS request with HTTP 200 in ")
    bad = config_module.load_file(web_config(
        tmp_path, basic(tmp_path, orthanc_web.dicomweb, "wrong")))
    with pytest.raises(PeerError, match=r"HTTP 401.*credentials were refused"):
        echo_peer(bad, "CLOUD")
    gone = config_module.load_file(web_config(
        tmp_path, basic(tmp_path, f"http://127.0.0.1:{free_port()}/dicom-web", "x")))
    with pytest.raises(PeerError, match="unreachable: Connection refused"):
        echo_peer(gone, "CLOUD")
    tls = config_module.load_file(web_config(
        tmp_path, basic(tmp_path, f"https://127.0.0.1:{orthanc_web.http_port}/dicom-web", "x")))
    with pytest.raises(PeerError, match="TLS"):
        echo_peer(tls, "CLOUD")


def test_a_dicomweb_peer_is_only_a_destination(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("x")
    text = (
        '[agent]\nport = 11112\n'
        '[peers.CLOUD]\nkind = "dicomweb"\nurl = "https://a.example/dicom-web"\n'
        'auth = "basic"\nuser = "u"\npassword_file = "pw"\nport = 104\n'
        '[peers.WEB2]\nkind = "dicomweb"\nurl = "ftp://x"\nauth = "oauth2"\n'
        '[peers.MOD]\nae_title = "MOD"\nhost = "127.0.0.1"\nport = 104\n'
        '[qr]\nfall_through = ["CLOUD"]\n'
        '[forward]\nmpps_to = ["CLOUD"]\n'
        '[[prefetch]]\nfrom = ["MOD"]\npriors_from = "CLOUD"\n'
    )
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(ConfigErrors) as caught:
        config_module.load_file(path)
    keys = {e.key for e in caught.value.errors}
    assert {"peers.CLOUD.port", "peers.WEB2.url", "peers.WEB2.token_url",
            "peers.WEB2.client_id", "peers.WEB2.client_secret_file", "qr.fall_through",
            "prefetch[0].priors_from", "forward.mpps_to"} <= keys


def test_a_dicomweb_peer_loads_with_its_files_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("x\n")
    path = tmp_path / "agent.toml"
    path.write_text('[agent]\nport = 11112\n[peers.CLOUD]\nkind = "dicomweb"\n'
                    'url = "https://a.example/dicom-web/"\nauth = "oauth2"\n'
                    'token_url = "https://a.example/token"\nclient_id = "edge"\n'
                    'client_secret_file = "secret"\nscope = "dicom"\n'
                    '[forward]\nto = ["CLOUD"]\n')
    config = config_module.load_file(path)
    web = config.peers["CLOUD"].web
    assert web is not None and web.url == "https://a.example/dicom-web"
    assert web.client_secret_file == tmp_path / "secret"
    with pytest.raises(ConfigError, match=r"peers\.CLOUD\.kind"):
        from agent.net.scu import resolve_target
        resolve_target(config, "CLOUD")
