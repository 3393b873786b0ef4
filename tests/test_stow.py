"""STOW-RS as the agent sends it and reads the answers: the body streamed from the
archived files, and each HTTP status and Failure Reason against a scripted service."""

from __future__ import annotations

import email.parser
import time
from pathlib import Path

import dicomgen
import pytest
from pydicom import dcmread

from agent import config as config_module
from agent.app import Agent
from agent.archive import Archive
from agent.archive.index import connect
from agent.forward.forwarder import Forwarder
from agent.forward.rules import ConfiguredRouting
from agent.forward.web_sender import WebSender
from agent.reconfigure import LiveConfig
from agent.web.stow import CHUNK, Part, StowBody, retry_after
from tests import scu
from tests.stow_peer import Answer, ScriptedStow
from tests.support import free_port, wait_until, write_config
from tests.test_dicomweb import archived, web_config
from tests.test_forward_backoff import ManualClock, Recorder
from tests.test_live_config import routed_config, sent_by


def uid_of(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def job_rows(data_dir: Path) -> dict[str, tuple[str, int, str | None]]:
    """Each job: SOP Instance UID -> (state, attempts, last error)."""
    conn = connect(data_dir / "index.sqlite", readonly=True)
    try:
        rows = conn.execute("SELECT SOPInstanceUID, state, attempts, last_error FROM forward_jobs")
        return {uid: (state, tries, error) for uid, state, tries, error in rows}
    finally:
        conn.close()


def settled(data_dir: Path) -> bool:
    rows = job_rows(data_dir)
    return bool(rows) and all(s in ("done", "quarantined") for s, _, _ in rows.values())


def test_the_body_is_streamed_in_chunks_and_parses_to_the_files(tmp_path: Path) -> None:
    files = [*dicomgen.write_series(tmp_path / "s", 3, size=512),
             dicomgen.large_instance(tmp_path / "big.dcm", 3 * CHUNK + 17)]
    body = StowBody([Part(uid_of(p), p, p.stat().st_size) for p in files])
    chunks = list(body)
    assert max(len(c) for c in chunks) <= CHUNK  # never a whole file in memory
    data = b"".join(chunks)
    assert len(data) == len(body) and list(body) == chunks  # its length, and again after a 401
    assert body.content_type.startswith('multipart/related; type="application/dicom"; boundary=')
    message = email.parser.BytesParser().parsebytes(
        f"Content-Type: {body.content_type}\r\n\r\n".encode() + data)
    parts = message.get_payload()
    assert [p.get_content_type() for p in parts] == ["application/dicom"] * 4
    assert [p.get_payload(decode=True) for p in parts] == [p.read_bytes() for p in files]


def test_a_paced_body_takes_every_byte_before_it_goes_and_a_stop_ends_it(
    tmp_path: Path,
) -> None:
    files = [dicomgen.large_instance(tmp_path / "big.dcm", 2 * CHUNK + 5)]
    taken: list[int] = []
    body = StowBody([Part(uid_of(p), p, p.stat().st_size) for p in files], take=taken.append)
    sent = []
    for chunk in body:
        assert sum(taken) == sum(map(len, sent)) + len(chunk)  # taken before it is let go
        sent.append(chunk)
    assert sum(taken) == len(body)

    class Stopped(Exception):
        pass

    def stop_after_one(nbytes: int) -> None:
        if taken:
            raise Stopped()
        taken.append(nbytes)

    taken.clear()
    with pytest.raises(Stopped):
        list(StowBody([Part(uid_of(p), p, p.stat().st_size) for p in files],
                      take=stop_after_one))


def test_a_dicomweb_destination_takes_a_cap_and_send_windows(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        '[peers.CLOUD]\nkind = "dicomweb"\nurl = "http://127.0.0.1:1/dicom-web"\n'
        'max_bytes_per_second = 1_000_000\nsend_windows = ["22:00-06:00"]\n'
        'priority = { Modality = "CT" }\n[forward]\nto = ["CLOUD"]\n')
    cloud = config_module.load(path).peers["CLOUD"]
    assert (cloud.kind, cloud.max_bytes_per_second, cloud.priority) == (
        "dicomweb", 1_000_000, (("Modality", "CT"),))
    assert [(w.start, w.end) for w in cloud.send_windows] == [(22 * 60, 6 * 60)]


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert retry_after("7") == 7.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert retry_after("soon") is None and retry_after(None) is None


def test_each_instance_is_judged_by_its_failure_reason(tmp_path: Path) -> None:
    sent = dicomgen.write_series(tmp_path / "study", 5, size=16)
    refused, busy, duplicate, coerced, fine = map(uid_of, sent)
    first = {refused: ("failed", 0xC000), busy: ("failed", 0xA700),
             duplicate: ("failed", 0x0111), coerced: ("ok", 0xB000), fine: ("ok", None)}

    def later(uids: list[str]) -> dict[str, tuple[str, int | None]]:
        return {u: ("failed", 0xC000) if u == refused else ("ok", None) for u in uids}

    with ScriptedStow([Answer(202, instances=lambda uids: {u: first[u] for u in uids})],
                      default=Answer(202, instances=later)) as service:
        config = config_module.load_file(web_config(
            tmp_path, {"url": service.url}, {"associations": 1}))
        with Agent(config):
            assert scu.store(config.agent.port, sent) == [0] * 5
            wait_until(lambda: settled(tmp_path / "data"), 30, "every job settled")
        rows = job_rows(tmp_path / "data")
        assert rows[refused][:2] == ("quarantined", 2)  # 0xC000: permanent, permanent_tries
        assert "Failure Reason 0xC000" in (rows[refused][2] or "")
        assert rows[busy][:2] == ("done", 2)  # 0xA700: out of resources, tried again
        assert rows[duplicate][:2] == ("done", 1)  # 0x0111: it had it already
        assert rows[coerced][:2] == ("done", 1) and rows[fine][:2] == ("done", 1)
        assert set(service.requests[0].uids) == set(first)  # one request for the five
        assert service.requests[0].files == archived(tmp_path / "data")  # as archived


@pytest.mark.slow
def test_http_statuses_transient_then_delivered(tmp_path: Path) -> None:
    sent = dicomgen.write_series(tmp_path / "study", 4, size=16)
    script = [Answer(500), Answer(429, {"Retry-After": "2"}), Answer(drop=True), Answer(408),
              Answer(503, {"Retry-After": "1"})]
    with ScriptedStow(script) as service:
        config = config_module.load_file(web_config(
            tmp_path, {"url": service.url}, {"associations": 1, "retry_max": 5}))
        with Agent(config):
            assert scu.store(config.agent.port, sent) == [0] * 4
            wait_until(lambda: settled(tmp_path / "data"), 60, "every job settled")
        rows = job_rows(tmp_path / "data")
        assert {r[0] for r in rows.values()} == {"done"} and len(service.stored) == 4
        requests = service.requests  # the five scripted failures were transient: tried again
        assert sum(r[1] for r in rows.values()) == 4 + sum(len(r.uids) for r in requests[:5])
        for i, waits in ((1, 2.0), (4, 1.0)):  # the answers with a Retry-After
            for uid in requests[i].uids:  # its next try waited at least that long
                later = next(r for r in requests[i + 1:] if uid in r.uids)
                assert later.at - requests[i].at >= waits


def test_a_request_refused_with_400_is_quarantined(tmp_path: Path) -> None:
    sent = dicomgen.write_series(tmp_path / "study", 3, size=16)
    with ScriptedStow([], default=Answer(400)) as service:
        config = config_module.load_file(web_config(
            tmp_path, {"url": service.url}, {"associations": 1}))
        with Agent(config):
            assert scu.store(config.agent.port, sent) == [0] * 3
            wait_until(lambda: settled(tmp_path / "data"), 30, "every job settled")
        rows = job_rows(tmp_path / "data")
        assert {r[:2] for r in rows.values()} == {("quarantined", 2)}
        assert all("HTTP 400" in (r[2] or "") for r in rows.values())


def test_a_reload_turning_a_dicom_peer_into_a_dicomweb_one_changes_its_senders(
        tmp_path: Path) -> None:
    dead = routed_config(tmp_path / "dead", ["PACS"], None, {"PACS": free_port()},
                         associations=2)
    with ScriptedStow([]) as service:
        path = write_config(tmp_path / "web.toml",
                            {"port": free_port(), "data_dir": str(tmp_path / "data")},
                            {"PACS": {"kind": "dicomweb", "url": service.url}})
        path.write_text(path.read_text() + '\n[forward]\nto = ["PACS"]\nassociations = 2\n')
        web = config_module.load_file(path)
        archive = Archive(tmp_path / "data", routing=ConfiguredRouting(LiveConfig(dead).current))
        uids = sent_by(archive, "MODALITY", 6)
        clock, events = ManualClock(time.time() + 1), Recorder()
        forwarder = Forwarder(dead, archive, events, clock)
        try:
            forwarder.start()
            wait_until(lambda: len(events.probes()) >= 1, 30, "PACS reported down")
            forwarder.reconfigure(web)  # the clock stands still: only the reload can do it
            wait_until(lambda: sorted(service.stored) == sorted(uids), 30, "all by STOW-RS")
            assert {type(s) for s in forwarder.senders["PACS"]} == {WebSender}
        finally:
            forwarder.close()
            archive.close()
