"""Bearer and OAuth2 DICOMweb destinations through a real reverse proxy: nginx in front
of Orthanc's DICOMweb, checking every request's token with ``auth_request`` against a
token server that issues short-lived tokens (tests/webproxy.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import dicomgen
import pytest

from agent import config as config_module
from agent.app import Agent
from agent.archive.index import connect
from agent.errors import PeerError
from agent.ops.echo import echo_peer
from tests import scu
from tests.certs import make_pki
from tests.pacs import DICOMWEB_PLUGIN, OrthancWeb
from tests.support import wait_until
from tests.test_dicomweb import archived, orthanc_files, states, web_config
from tests.webproxy import NGINX, Nginx, TokenServer

pytestmark = [
    pytest.mark.skipif(not DICOMWEB_PLUGIN.exists(), reason="orthanc-dicomweb"),
    pytest.mark.skipif(not NGINX.exists(), reason="nginx"),
    pytest.mark.slow,
]

CLIENT, SECRET = "edge-box", "client-s3cret"
LIFETIME = 3.0  # seconds a token lives: short, so that the test sees it renewed


@pytest.fixture
def tokens() -> Iterator[TokenServer]:
    with TokenServer(CLIENT, SECRET, LIFETIME) as running:
        yield running


@pytest.fixture
def proxy(tmp_path: Path, tokens: TokenServer) -> Iterator[tuple[OrthancWeb, Nginx]]:
    """Orthanc (no auth of its own) behind nginx, which asks ``tokens``."""
    with OrthancWeb(tmp_path / "orthanc") as orthanc, Nginx(
            tmp_path / "nginx", f"http://127.0.0.1:{orthanc.http_port}/dicom-web/",
            f"http://127.0.0.1:{tokens.port}/validate") as nginx:
        yield orthanc, nginx  # type: ignore[misc]


def attempts(data_dir: Path) -> set[int]:
    conn = connect(data_dir / "index.sqlite", readonly=True)
    try:
        return {row[0] for row in conn.execute("SELECT attempts FROM forward_jobs")}
    finally:
        conn.close()


def send_and_wait(agent: Agent, port: int, paths: list[Path], data_dir: Path) -> None:
    assert scu.store(port, paths) == [0] * len(paths)
    wait_until(lambda: states(data_dir) == {"done"}, 60, "every job done")


def test_oauth2_token_is_cached_renewed_before_expiry_and_after_a_401(
        proxy: tuple[OrthancWeb, Nginx], tokens: TokenServer, tmp_path: Path) -> None:
    orthanc, nginx = proxy
    (tmp_path / "client.secret").write_text(SECRET + "\n")
    config = config_module.load_file(web_config(tmp_path, {
        "url": nginx.dicomweb, "auth": "oauth2", "token_url": tokens.token_url,
        "client_id": CLIENT, "client_secret_file": "client.secret", "scope": "dicom.write"}))
    echo = echo_peer(config, "CLOUD")  # a token of its own, in this process
    assert "HTTP 200" in echo.summary and len(tokens.issued) == 1
    data = tmp_path / "data"
    study = dicomgen.write_series(tmp_path / "study", 30, size=32)
    with Agent(config) as agent:
        port = config.agent.port
        send_and_wait(agent, port, study[:10], data)
        assert len(tokens.issued) == 2  # one token for both lanes, cached
        first = tokens.issued[-1]
        wait_until(lambda: tokens.expired(first), 10, "the first token to expire")
        send_and_wait(agent, port, study[10:20], data)
        assert len(tokens.issued) == 3 and not tokens.refused  # renewed, never sent stale
        tokens.revoke_all()  # the next request's token is refused: 401
        send_and_wait(agent, port, study[20:], data)
        assert len(tokens.issued) == 4 and tokens.refused == [tokens.issued[2]]
    assert attempts(data) == {1}  # one try each: the 401 was retried within the request
    assert orthanc_files(orthanc) == archived(data)


def test_bearer_token_file_is_read_again_when_it_changes_and_after_a_401(
        proxy: tuple[OrthancWeb, Nginx], tokens: TokenServer, tmp_path: Path) -> None:
    orthanc, nginx = proxy
    token_file = tmp_path / "cloud.token"
    token_file.write_text("token-AAAA\n")
    tokens.accept("token-AAAA")
    config = config_module.load_file(web_config(tmp_path, {
        "url": nginx.dicomweb, "auth": "bearer", "token_file": "cloud.token"}))
    data = tmp_path / "data"
    study = dicomgen.write_series(tmp_path / "study", 30, size=32)
    with Agent(config) as agent:
        port = config.agent.port
        send_and_wait(agent, port, study[:10], data)
        tokens.revoke_all()  # rotated: the new token in the file before the old one dies
        tokens.accept("token-BBBB")
        token_file.write_text("token-BBBB\n")
        send_and_wait(agent, port, study[10:20], data)
        assert not tokens.refused  # read again as it changed: never sent the old one
        # rotated behind our back (the same size and mtime): a 401, the file read again
        before = token_file.stat()
        tokens.revoke_all()
        tokens.accept("token-CCCC")
        token_file.write_text("token-CCCC\n")
        os.utime(token_file, ns=(before.st_atime_ns, before.st_mtime_ns))
        send_and_wait(agent, port, study[20:], data)
        assert set(tokens.refused) == {"token-BBBB"}
    assert attempts(data) == {1}  # one try each
    assert orthanc_files(orthanc) == archived(data)


def test_https_is_verified_against_the_configured_ca(
        tmp_path: Path, tokens: TokenServer) -> None:
    pki = make_pki(tmp_path / "pki")
    (tmp_path / "cloud.token").write_text("token-TLS\n")
    tokens.accept("token-TLS")
    with OrthancWeb(tmp_path / "orthanc") as orthanc, Nginx(
            tmp_path / "nginx", f"http://127.0.0.1:{orthanc.http_port}/dicom-web/",
            f"http://127.0.0.1:{tokens.port}/validate", tls=(pki.agent.cert, pki.agent.key)
    ) as nginx:
        cloud = {"url": nginx.dicomweb, "auth": "bearer", "token_file": "cloud.token"}
        untrusted = config_module.load_file(web_config(tmp_path, cloud))
        with pytest.raises(PeerError, match=r"TLS: certificate verify failed.*system's trust"):
            echo_peer(untrusted, "CLOUD")
        config = config_module.load_file(web_config(tmp_path, {**cloud, "ca": str(pki.ca)}))
        assert "HTTP 200" in echo_peer(config, "CLOUD").summary
        study = dicomgen.write_series(tmp_path / "study", 5, size=16)
        with Agent(config) as agent:
            send_and_wait(agent, config.agent.port, study, tmp_path / "data")
        assert orthanc_files(orthanc) == archived(tmp_path / "data")
