"""DICOM TLS against real peers: DCMTK's echoscu/storescu/findscu into the agent's TLS
port, pynetdicom as a TLS peer, DCMTK's storescp as a TLS destination."""

from __future__ import annotations

import json
import logging
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dicomgen
import pytest
from pynetdicom import AE

from agent import config as config_module
from agent.app import Agent
from agent.config import Config
from agent.errors import PeerError
from agent.net.scu import Target, echo
from tests.certs import Pair, Pki, make_pki
from tests.support import dcmtk, free_port, peer, wait_until, write_config

VERIFICATION = "1.2.840.10008.1.1"
pytestmark = pytest.mark.skipif(subprocess.run(["which", "openssl"], capture_output=True)
                                .returncode != 0, reason="openssl is not installed")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_config(root: Path, pki: Pki, peers: dict[str, dict[str, Any]],
               **tls: Any) -> Path:
    """An agent config with a plain port, a TLS port (ephemeral) and ``peers``."""
    path = write_config(root / "agent.toml",
                        {"ae_title": "EDGE", "port": free_port(), "bind": "127.0.0.1",
                         "data_dir": str(root / "data"), "min_free_mb": 0}, peers)
    table = {"certificate": str(pki.agent.cert), "private_key": str(pki.agent.key),
             "ca": str(pki.ca), "port": 0, **tls}
    lines = ["", "[tls]"] + [f"{k} = {_toml(v)}" for k, v in table.items()]
    path.write_text(path.read_text() + "\n".join(lines) + "\n")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, (int, float)) else f'"{value}"'


PEERS = {
    "CT": peer("MODALITY", allow=("echo", "store", "find")),
    "SECURE": {**peer("SECURE", allow=("echo", "store")), "tls": True},
}


@pytest.fixture
def tls_agent(tmp_path: Path, pki: Pki) -> Iterator[Agent]:
    running = Agent(config_module.load_file(tls_config(tmp_path, pki, PEERS)))
    running.start()
    try:
        yield running
    finally:
        running.close()


def tls_port(agent: Agent) -> int:
    assert agent.server is not None
    return agent.server.tls_port


def dcmtk_tls(tool: str, port: int, *args: str, client: Pair | None, pki: Pki,
              aet: str = "MODALITY", plain: bool = False,
              files: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK client into the agent; ``client`` None: anonymous TLS (+tla)."""
    security: list[str] = []
    if not plain:
        security = ["+tla"] if client is None else ["+tls", str(client.key), str(client.cert)]
        security += ["+cf", str(pki.ca)]
    command = [dcmtk(tool), *security, "-aet", aet, "-aec", "EDGE", *args, "127.0.0.1", str(port),
               *files]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def echo_ok(agent: Agent, pki: Pki) -> bool:
    return dcmtk_tls("echoscu", tls_port(agent), client=pki.client, pki=pki).returncode == 0


def test_dcmtk_echo_store_and_find_over_tls(tls_agent: Agent, pki: Pki, tmp_path: Path) -> None:
    port = tls_port(tls_agent)
    assert dcmtk_tls("echoscu", port, client=pki.client, pki=pki).returncode == 0
    sent = dicomgen.write_series(tmp_path / "series", 3, size=32)
    stored = dcmtk_tls("storescu", port, client=pki.client, pki=pki,
                       files=tuple(map(str, sent)))
    assert stored.returncode == 0, stored.stderr
    assert tls_agent.status.snapshot().received == 3
    found = dcmtk_tls("findscu", port, "-S", "-k", "QueryRetrieveLevel=STUDY",
                      "-k", "StudyInstanceUID", client=pki.client, pki=pki)
    assert found.returncode == 0, found.stderr
    assert "StudyInstanceUID" in found.stdout + found.stderr


@pytest.mark.parametrize("who", ["anonymous", "foreign", "plain"])
def test_refused_clients_are_logged_and_the_agent_keeps_serving(
        tls_agent: Agent, pki: Pki, who: str, caplog: pytest.LogCaptureFixture) -> None:
    assert tls_agent.server is not None
    ended = tls_agent.server.connections_ended()
    client = {"anonymous": None, "foreign": pki.foreign, "plain": None}[who]
    refused = dcmtk_tls("echoscu", tls_port(tls_agent), client=client, pki=pki,
                        plain=who == "plain")
    assert refused.returncode != 0
    assert tls_agent.server.wait_connections_ended(ended + 1, 30)
    [line] = [r.getMessage() for r in caplog.records if "refused a TLS connection" in
              r.getMessage()]
    assert "127.0.0.1:" in line
    expected = {"anonymous": "no client certificate", "foreign": "certificate was not accepted",
                "plain": "does not speak TLS"}[who]
    assert expected in line or (who == "plain" and "completed no TLS handshake" in line), line
    assert echo_ok(tls_agent, pki)


def test_a_silent_connection_does_not_delay_a_tls_echo(tmp_path: Path, pki: Pki) -> None:
    config = config_module.load_file(tls_config(tmp_path, pki, PEERS, handshake_timeout=120))
    with Agent(config) as agent, \
            socket.create_connection(("127.0.0.1", tls_port(agent))) as silent:
        assert echo_ok(agent, pki)
        silent.setblocking(False)
        with pytest.raises(BlockingIOError):  # still open: nothing to read, not closed
            silent.recv(1)


def pynetdicom_echo(port: int, aet: str, context: ssl.SSLContext | None) -> Any:
    """Associate and C-ECHO; the association, with ``echoed`` set to the status."""
    ae = AE(ae_title=aet)
    ae.add_requested_context(VERIFICATION)
    tls_args = None if context is None else (context, "127.0.0.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGE", tls_args=tls_args)
    assoc.echoed = None
    if assoc.is_established:
        assoc.echoed = int(assoc.send_c_echo().Status)
        assoc.release()
    return assoc


def client_context(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    context.load_cert_chain(pki.client.cert, pki.client.key)
    return context


def test_a_tls_peer_may_not_use_the_plain_port(tls_agent: Agent, pki: Pki,
                                               caplog: pytest.LogCaptureFixture) -> None:
    plain = pynetdicom_echo(tls_agent.config.agent.port, "SECURE", None)
    assert plain.is_rejected
    rejection = plain.acceptor.primitive
    assert (rejection.result, rejection.result_source, rejection.diagnostic) == (1, 1, 3)
    assert any("may only come in over TLS" in r.getMessage() for r in caplog.records)
    assert pynetdicom_echo(tls_port(tls_agent), "SECURE", client_context(pki)).echoed == 0
    # any listed peer may use the TLS port; an unknown AE may not
    assert pynetdicom_echo(tls_port(tls_agent), "MODALITY", client_context(pki)).echoed == 0
    assert pynetdicom_echo(tls_port(tls_agent), "STRANGER", client_context(pki)).is_rejected


class TlsStoreSCP:
    """DCMTK's storescp on TLS, presenting ``pair``, requiring a client certificate."""

    def __init__(self, workdir: Path, pki: Pki, pair: Pair) -> None:
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [dcmtk("storescp"), "+tls", str(pair.key), str(pair.cert), "+cf", str(pki.ca),
             "-aet", "STORESCP", "-od", str(workdir), str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def __enter__(self) -> TlsStoreSCP:
        def listening() -> bool:
            assert self.proc.poll() is None, "storescp exited"
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", self.port)) == 0
        wait_until(listening, 20, "storescp to listen")
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def outgoing_config(tmp_path: Path, pki: Pki, port: int, verify_name: bool = True) -> Config:
    peers = {"DEST": {**peer("STORESCP", port=port), "tls": True, "verify_name": verify_name}}
    return config_module.load_file(tls_config(tmp_path, pki, peers))


def test_outgoing_tls_presents_our_certificate_and_checks_the_name(tmp_path: Path,
                                                                   pki: Pki) -> None:
    with TlsStoreSCP(tmp_path / "good", pki, pki.client) as scp:
        config = outgoing_config(tmp_path, pki, scp.port)
        assert echo(config, Target("STORESCP", "127.0.0.1", scp.port, "DEST")) > 0
    with TlsStoreSCP(tmp_path / "elsewhere", pki, pki.other_host) as scp:
        config = outgoing_config(tmp_path, pki, scp.port)
        with pytest.raises(PeerError, match=r"does not name 127\.0\.0\.1"):
            echo(config, Target("STORESCP", "127.0.0.1", scp.port, "DEST"))
        lenient = outgoing_config(tmp_path, pki, scp.port, verify_name=False)
        assert echo(lenient, Target("STORESCP", "127.0.0.1", scp.port, "DEST")) > 0


def test_a_peer_without_tls_is_not_reached_over_tls(tmp_path: Path, pki: Pki) -> None:
    with TlsStoreSCP(tmp_path / "scp", pki, pki.client) as scp:
        config = outgoing_config(tmp_path, pki, scp.port)
        plain = Target("STORESCP", "127.0.0.1", scp.port, "STORESCP@127.0.0.1:1")
        assert echo(config, Target("STORESCP", "127.0.0.1", scp.port, "DEST")) > 0
        with pytest.raises(PeerError):  # an ad-hoc target that is no configured peer
            echo(config, Target("OTHER", "127.0.0.1", scp.port, plain.name))


def test_forwarding_to_orthanc_over_tls(tmp_path: Path, pki: Pki) -> None:
    from bench.peers import Orthanc

    from tests import scu

    tls = {"certificate": pki.client.cert, "private_key": pki.client.key, "trusted": pki.ca}
    agent_tls_port = free_port()
    edge = {"AET": "EDGE", "Host": "127.0.0.1", "Port": agent_tls_port, "UseDicomTls": True}
    with Orthanc(tmp_path / "orthanc", modalities={"EDGE": edge}, tls=tls) as orthanc:
        pacs = peer("ORTHANC", port=orthanc.port, allow=("echo", "find"))
        path = tls_config(tmp_path, pki, {**PEERS, "PACS": {**pacs, "tls": True}},
                          port=agent_tls_port)
        path.write_text(path.read_text() + '\n[forward]\nto = ["PACS"]\n')
        config = config_module.load_file(path)
        sent = dicomgen.write_series(tmp_path / "study", 200, size=64)
        with Agent(config) as agent:
            assert scu.store(config.agent.port, sent) == [0] * 200
            wait_until(lambda: orthanc.count() == 200, 60, "Orthanc to hold 200 instances")
            assert agent.status.snapshot().destinations[0].last_success is not None
            # Orthanc, a tls peer, comes in over TLS: echo and query the agent
            assert orthanc.rest("/modalities/EDGE/echo", b"{}") == {}
            query = {"Level": "Study", "Query": {"StudyInstanceUID": ""}}
            answer = orthanc.rest("/modalities/EDGE/query", json.dumps(query).encode())
            assert len(orthanc.rest(f"/queries/{answer['ID']}/answers")) == 1
        with pytest.raises(PeerError):  # its DICOM port speaks TLS only: plain fails
            echo(config_module.load_file(tls_config(tmp_path, pki, PEERS)),
                 Target("ORTHANC", "127.0.0.1", orthanc.port, "ORTHANC@127.0.0.1"))


def test_status_shows_the_expiry_and_reload_takes_a_renewed_certificate(
        tmp_path: Path, pki: Pki) -> None:
    import shutil

    from agent.archive import Layout
    from agent.ops.status import status_report

    cert, key = tmp_path / "agent.crt", tmp_path / "agent.key"
    shutil.copy(pki.agent.cert, cert)
    shutil.copy(pki.agent.key, key)
    path = tls_config(tmp_path, pki, PEERS, certificate=cert, private_key=key)
    config = config_module.load_file(path)
    with Agent(config) as agent:
        before = agent.status.snapshot()
        assert before.certificate_expires is not None
        assert before.listening == (f"127.0.0.1:{config.agent.port}, "
                                    f"TLS 127.0.0.1:{tls_port(agent)}")
        assert "TLS certificate" not in before.summary()  # 30 days left: no warning yet
        text = "\n".join(status_report(Layout(config.agent.data_dir), before).lines())
        assert "tls       certificate valid until" in text
        assert "RENEW" not in text
        renewed = make_pki_leaf(tmp_path / "renewed", pki)  # same CA, 10 days
        shutil.copy(renewed.cert, cert)
        shutil.copy(renewed.key, key)
        agent.reload(config_module.load_file(path))
        after = agent.status.snapshot()
        assert after.certificate_expires != before.certificate_expires
        assert "TLS certificate expires in" in after.summary()
        text = "\n".join(status_report(Layout(config.agent.data_dir), after).lines())
        assert "RENEW IT" in text.upper()
        assert echo_ok(agent, pki)  # served with the renewed certificate


def make_pki_leaf(directory: Path, pki: Pki) -> Pair:
    """A certificate for the agent signed by the test CA, valid for 10 days."""
    from tests import certs

    directory.mkdir()
    ca = certs.Pair(pki.ca, pki.ca.with_suffix(".key"))
    return certs._leaf(directory, "renewed", ca, "IP:127.0.0.1,DNS:localhost", days=10)


def same_dataset(sent: Path, received: bytes) -> bool:
    """The data set (file meta aside) that came back equals the one that was sent."""
    from io import BytesIO

    from pydicom import dcmread

    original, copy = dcmread(sent), dcmread(BytesIO(received))
    return bool(original == copy)


def test_orthanc_queries_and_c_moves_from_the_agent_over_tls(tmp_path: Path,
                                                            pki: Pki) -> None:
    from bench.peers import Orthanc

    from tests import scu

    tls = {"certificate": pki.client.cert, "private_key": pki.client.key, "trusted": pki.ca}
    agent_tls_port = free_port()
    edge = {"AET": "EDGE", "Host": "127.0.0.1", "Port": agent_tls_port, "UseDicomTls": True}
    with Orthanc(tmp_path / "orthanc", modalities={"EDGE": edge}, tls=tls) as orthanc:
        pacs = {**peer("ORTHANC", port=orthanc.port, allow=("echo", "find", "move")),
                "tls": True}
        config = config_module.load_file(tls_config(tmp_path, pki, {**PEERS, "PACS": pacs},
                                                    port=agent_tls_port))
        sent = dicomgen.write_series(tmp_path / "study", 12, size=32)
        with Agent(config) as agent:
            assert scu.store(config.agent.port, sent) == [0] * 12  # plain, from the CT
            assert orthanc.count() == 0  # nothing forwarded: only the C-MOVE brings them
            query = {"Level": "Study", "Query": {"StudyInstanceUID": ""}}
            answer = orthanc.rest("/modalities/EDGE/query", json.dumps(query).encode())
            assert len(orthanc.rest(f"/queries/{answer['ID']}/answers")) == 1
            move = {"TargetAet": "ORTHANC", "Synchronous": True}
            orthanc.rest(f"/queries/{answer['ID']}/retrieve", json.dumps(move).encode())
            assert orthanc.count() == 12
            assert agent.status.snapshot().refused == 0
        by_uid = {dicomgen_uid(path): path for path in sent}
        for instance in orthanc.rest("/instances"):
            tags = orthanc.rest(f"/instances/{instance}/simplified-tags")
            raw = orthanc_file(orthanc, instance)
            assert same_dataset(by_uid.pop(tags["SOPInstanceUID"]), raw)
        assert by_uid == {}


def dicomgen_uid(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def orthanc_file(orthanc: Any, instance: str) -> bytes:
    """The DICOM file Orthanc stored for ``instance``."""
    import urllib.request

    url = f"http://127.0.0.1:{orthanc.http_port}/instances/{instance}/file"
    with urllib.request.urlopen(url, timeout=30) as answer:
        return bytes(answer.read())


def test_c_get_over_tls_with_pynetdicom(tmp_path: Path, pki: Pki) -> None:
    from pydicom import dcmread
    from pydicom.dataset import Dataset
    from pynetdicom import build_context, build_role, evt

    from tests import scu

    peers = {**PEERS, "WS": peer("WS", allow=("echo", "get"))}
    config = config_module.load_file(tls_config(tmp_path, pki, peers))
    sent = dicomgen.write_series(tmp_path / "study", 5, size=32)
    header = dcmread(sent[0], stop_before_pixels=True)
    got: dict[str, bytes] = {}

    def on_store(event: evt.Event) -> int:
        # the agent in this process made pynetdicom stream received data sets to a file
        got[str(event.request.AffectedSOPInstanceUID)] = dicomgen.dataset_bytes(
            Path(event.dataset_path))
        return 0x0000

    with Agent(config) as agent:
        assert scu.store(config.agent.port, sent) == [0] * 5
        ae = AE(ae_title="WS")
        ae.requested_contexts = [build_context("1.2.840.10008.5.1.4.1.2.2.3"),
                                 build_context(header.SOPClassUID)]
        assoc = ae.associate("127.0.0.1", tls_port(agent), ae_title="EDGE",
                             tls_args=(client_context(pki), "127.0.0.1"),
                             ext_neg=[build_role(header.SOPClassUID, scp_role=True)],
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
        assert assoc.is_established
        assert isinstance(assoc.dul.socket.socket, ssl.SSLSocket)
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = header.StudyInstanceUID
        responses = [status for status, _ in
                     assoc.send_c_get(query, "1.2.840.10008.5.1.4.1.2.2.3") if status]
        assoc.release()
    assert int(responses[-1].Status) == 0x0000
    assert int(responses[-1].NumberOfCompletedSuboperations) == 5
    assert {dicomgen_uid(path): dicomgen.dataset_bytes(path) for path in sent} == got


def test_a_refused_tls_reload_logs_one_truthful_line_and_keeps_serving(
        tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    path = tls_config(tmp_path, pki, PEERS)
    bad = tmp_path / "bad.toml"  # the same file but for a key that is not the certificate's
    bad.write_text(path.read_text().replace(str(pki.agent.key), str(pki.client.key)))
    with Agent(config_module.load_file(path)) as agent:
        caplog.clear()
        agent.reload(config_module.load_file(bad))
        said = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
        assert len(said) == 1, said
        assert said[0].startswith(
            "configuration unchanged; the TLS files were refused, still serving the previous "
            f"certificate: tls.private_key: {pki.client.key} is not the key of")
        assert agent.config.tls is not None and agent.config.tls.private_key == pki.agent.key
        [problem] = agent.status.snapshot().problems
        assert problem.part == "tls" and problem.message.startswith("TLS reload refused")
        assert echo_ok(agent, pki)  # still served with the previous certificate
        caplog.clear()
        agent.reload(config_module.load_file(path))  # fixed: the problem is over
        assert agent.status.snapshot().problems == ()
        assert [r.getMessage() for r in caplog.records if r.name == "agent.app"] == [
            "configuration unchanged"]
