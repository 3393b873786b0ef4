"""Coercion and de-identification per destination (issue 25), against Orthanc as PACS:
what reaches Orthanc is changed, the archived file never is."""

from __future__ import annotations

import hashlib
import io
import json
import os
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from bench.peers import Orthanc
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from agent import config as config_module
from agent.app import Agent
from agent.archive.index import connect
from agent.errors import ConfigErrors
from agent.outgoing import keyed
from agent.outgoing.deid import action_of
from agent.outgoing.writer import changed, prepare
from tests import scu
from tests.pacs import DICOMWEB_PLUGIN, OrthancWeb
from tests.support import free_port, peer, run_cli, toml_value, wait_until, write_config

CT = Path(get_testdata_file("CT_small.dcm"))  # a real GE CT header, with private groups
FAST_RETRY = "\n[forward]\nto = {to}\nretry_first = 0.2\nretry_max = 0.5\npermanent_tries = 2\n"


def study(directory: Path, series: int = 2, each: int = 2, **changes: Any) -> list[Path]:
    """One CT study from pydicom's CT_small: ``series`` series of ``each`` instances."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(series):
        for i in range(each):
            ds = dcmread(CT)
            for keyword, value in changes.items():
                setattr(ds, keyword, value)
            ds.SeriesInstanceUID = f"{ds.SeriesInstanceUID}.{s}"
            ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{s}.{i}"
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.SeriesNumber, ds.InstanceNumber = s + 1, i + 1
            paths.append(directory / f"{s}-{i}.dcm")
            ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def agent_config(root: Path, orthanc: Orthanc, extra: dict[str, Any], tables: str = "") -> Path:
    """Peers CT (the modality) and PACS (Orthanc, with ``extra`` keys); forward to PACS."""
    path = write_config(root / "agent.toml",
                        {"port": free_port(), "bind": "127.0.0.1",
                         "data_dir": str(root / "data"), "min_free_mb": 0},
                        {"CT": peer("MODALITY", allow=("store",)),
                         "PACS": {**peer("ORTHANC", orthanc.port, allow=("echo",)), **extra}})
    path.write_text(path.read_text() + tables + FAST_RETRY.format(to=toml_value(["PACS"])))
    return path


def received(orthanc: Orthanc) -> list[Dataset]:
    """Every instance Orthanc holds, as the file it stored."""
    found = []
    for ident in orthanc.rest("/instances"):
        url = f"http://127.0.0.1:{orthanc.http_port}/instances/{ident}/file"
        with urllib.request.urlopen(url, timeout=30) as answer:
            found.append(dcmread(io.BytesIO(answer.read())))
    return found


def jobs(data_dir: Path) -> list[tuple[str, str]]:
    """(state, last_error) of every forward job."""
    conn = connect(data_dir / "index.sqlite", readonly=True)
    try:
        return list(conn.execute("SELECT state, coalesce(last_error, '') FROM forward_jobs"))
    finally:
        conn.close()


def digests(directory: Path) -> dict[str, str]:
    """SHA-256 of every archived file."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((directory / "archive").rglob("*.dcm"))}


def test_rules_are_checked_at_load_and_errors_name_their_key(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        '[agent]\ndata_dir = "d"\n[peers.PACS]\nae_title = "P"\nhost = "127.0.0.1"\n'
        'port = 104\ndeidentify_options = ["retain-uids"]\n[peers.PACS.coerce]\n'
        'set = { Institution = "x", StudyDate = "2024-01-01", Rows = 70000 }\n'
        'remove = ["(0010,xx10)", "Nope"]\n')
    with pytest.raises(ConfigErrors) as raised:
        config_module.load_file(config)
    text = str(raised.value)
    for key in ("peers.PACS.coerce.set.Institution: 'Institution' is not a DICOM keyword",
                "peers.PACS.coerce.set.StudyDate: does not fit VR DA",
                "peers.PACS.coerce.set.Rows: does not fit VR US",
                "peers.PACS.coerce.remove[0]: xx stands for a private block",
                "peers.PACS.coerce.remove[1]: 'Nope' is not a DICOM keyword",
                'peers.PACS.deidentify_options: needs deidentify = "basic"'):
        assert key in text


def test_a_changed_copy_keeps_the_pixel_bytes_and_never_touches_the_file(
        tmp_path: Path) -> None:
    [source] = study(tmp_path / "in", 1, 1)
    before = source.read_bytes()
    outgoing = config_module.parse({
        "agent": {"data_dir": str(tmp_path / "data")},
        "peers": {"P": {"ae_title": "P", "host": "127.0.0.1", "port": 104,
                        "coerce": {"set": {"InstitutionName": "Radiology Room 2"}}}},
    }).peers["P"].outgoing
    sent = prepare(outgoing, source, tmp_path, "lane")
    assert source.read_bytes() == before
    assert sent.path.parent == tmp_path / "outgoing" / "lane"
    copy, original = dcmread(sent.path), dcmread(source)
    assert copy.InstitutionName == "Radiology Room 2"
    assert copy.PixelData == original.PixelData
    assert not list(sent.path.parent.glob(".*.part"))


def test_set_and_remove_reach_orthanc_not_the_archive(orthanc: Orthanc,
                                                      tmp_path: Path) -> None:
    tables = ('\n[peers.PACS.coerce]\nset = { InstitutionName = "Radiology Room 2",'
              ' StationName = "CT1" }\nremove = ["OperatorsName", "(0043,xx10)",'
              ' "(0009,xxxx)"]\n')
    config_file = agent_config(tmp_path, orthanc, {}, tables)
    config = config_module.load_file(config_file)
    paths = study(tmp_path / "in", 1, 2, OperatorsName="Smith^Op")
    with Agent(config):
        assert scu.store(config.agent.port, paths) == [0, 0]
        archived = digests(tmp_path / "data")  # as acknowledged (fsynced before Success)
        wait_until(lambda: orthanc.count() == 2, 60, "Orthanc to hold both instances")
        wait_until(lambda: {s for s, _ in jobs(tmp_path / "data")} == {"done"}, 30, "done")
    assert digests(tmp_path / "data") == archived and len(archived) == 2
    for ds in received(orthanc):
        assert ds.InstitutionName == "Radiology Room 2" and ds.StationName == "CT1"
        assert "OperatorsName" not in ds and 0x00431010 not in ds
        assert not [e for e in ds if e.tag.group == 0x0009]
        assert 0x00431011 in ds  # other elements of that private block stay
    for path in (tmp_path / "data" / "archive").rglob("*.dcm"):
        kept = dcmread(path)
        assert kept.InstitutionName == "JFK IMAGING CENTER" and kept.OperatorsName == "Smith^Op"


def _check_against_table(original: Dataset, sent: Dataset, key: bytes, kept: set[int]) -> int:
    """Every attribute of ``original`` that Table E.1-1 removes or replaces, checked in
    ``sent``; the number checked."""
    checked = 0
    for elem in original:
        tag = int(elem.tag)
        action = action_of(tag)
        if elem.tag.is_private:
            assert tag not in sent, f"private {elem.tag} was sent"
            checked += 1
            continue
        if action is None or tag in kept:
            continue
        checked += 1
        if action == "X/U":
            action = "U" if elem.VR == "UI" else "X"
        if action == "X":
            assert tag not in sent, f"{elem.keyword} should have been removed"
        elif action == "U":
            assert sent[tag].value == keyed.uid(key, str(elem.value)), elem.keyword
        elif elem.value not in (None, ""):
            assert tag not in sent or sent[tag].value != elem.value, f"{elem.keyword} kept"
    return checked


@pytest.mark.slow
def test_deidentified_destination_gets_no_identity_and_consistent_uids(
        orthanc: Orthanc, tmp_path: Path) -> None:
    config_file = agent_config(tmp_path, orthanc, {
        "deidentify": "basic", "deidentify_options": ["retain-device-identity"]})
    config = config_module.load_file(config_file)
    paths = study(tmp_path / "in", 2, 2)
    burned = study(tmp_path / "burned", 1, 1, BurnedInAnnotation="YES",
                   SOPInstanceUID="1.2.3.4.5.6")
    with Agent(config):  # half the study, then a restart, then the other half
        assert scu.store(config.agent.port, [paths[0], paths[2], *burned]) == [0, 0, 0]
        wait_until(lambda: orthanc.count() == 2, 60, "the first half")
        wait_until(lambda: sorted(s for s, _ in jobs(tmp_path / "data"))
                   == ["done", "done", "quarantined"], 30, "the burned-in one held back")
    with Agent(config):
        assert scu.store(config.agent.port, [paths[1], paths[3]]) == [0, 0]
        wait_until(lambda: orthanc.count() == 4, 60, "the second half")
    key = (tmp_path / "data" / keyed.SECRET_FILE).read_bytes()
    assert os.stat(tmp_path / "data" / keyed.SECRET_FILE).st_mode & 0o777 == 0o600
    held = [e for s, e in jobs(tmp_path / "data") if s == "quarantined"]
    assert len(held) == 1 and "Burned In Annotation is YES" in held[0]
    conn = connect(tmp_path / "data" / "index.sqlite", readonly=True)
    try:  # held back at the first try: no retry would send it
        assert conn.execute("SELECT attempts FROM forward_jobs WHERE state = 'quarantined'"
                            ).fetchall() == [(1,)]
    finally:
        conn.close()
    sent = {ds.SOPInstanceUID: ds for ds in received(orthanc)}
    assert orthanc.rest("/statistics")["CountStudies"] == 1
    assert orthanc.rest("/statistics")["CountSeries"] == 2
    checked = 0
    for path in paths:
        original = dcmread(path, stop_before_pixels=True)
        copy = sent[keyed.uid(key, original.SOPInstanceUID)]
        checked += _check_against_table(original, copy, key, {0x00081010})
        assert copy.StationName == original.StationName  # retain-device-identity
        assert copy.PatientIdentityRemoved == "YES"
        assert copy.SeriesInstanceUID == keyed.uid(key, original.SeriesInstanceUID)
    assert checked > 200  # CT_small's private and public identifying attributes
    listing = run_cli("queue", "--config", str(config_file))
    assert "held back from a de-identified destination" in listing.stdout


def test_a_change_that_cannot_be_made_quarantines_with_its_reason(
        orthanc: Orthanc, tmp_path: Path) -> None:
    tables = ('\n[peers.PACS.coerce]\nset = { "OtherPatientIDsSequence[3].PatientID"'
              ' = "X" }\n')
    config = config_module.load_file(agent_config(tmp_path, orthanc, {}, tables))
    paths = study(tmp_path / "in", 1, 1)
    with Agent(config):
        assert scu.store(config.agent.port, paths) == [0]
        wait_until(lambda: [s for s, _ in jobs(tmp_path / "data")] == ["quarantined"], 30,
                   "quarantine")
    [(_, reason)] = jobs(tmp_path / "data")
    assert "item 3 of the sequence does not exist" in reason
    assert orthanc.count() == 0
    assert not list((tmp_path / "data" / "outgoing").rglob("*.dcm"))


def test_preview_prints_one_attribute_a_line(tmp_path: Path) -> None:
    config_file = write_config(tmp_path / "agent.toml", {"data_dir": str(tmp_path / "data")},
                               {"PACS": peer("P")})
    config_file.write_text(config_file.read_text() + '[peers.PACS.coerce]\n'
                           'set = { InstitutionName = "Radiology Room 2" }\n'
                           'remove = ["(0009,xxxx)"]\n')
    shown = run_cli("preview", "--config", str(config_file), "PACS", str(CT))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "(0008,0080) InstitutionName: 'JFK IMAGING CENTER' -> 'Radiology Room 2'" in lines
    assert "(0009,0010) private: removed" in lines
    assert json.dumps(lines[0]).startswith('"PACS receives')
    config_file.write_text(config_file.read_text() + '[peers.RESEARCH]\nae_title = "R"\n'
                           'host = "127.0.0.1"\nport = 105\ndeidentify = "basic"\n')
    shown = run_cli("preview", "--config", str(config_file), "RESEARCH", str(CT))
    assert "(0010,0040) PatientSex: 'O' -> ''" in shown.stdout.splitlines()
    assert "examples: the agent makes its secret" in shown.stdout  # none made by preview
    assert not (tmp_path / "data" / keyed.SECRET_FILE).exists()


@pytest.mark.skipif(not DICOMWEB_PLUGIN.exists(), reason="Orthanc's DICOMweb plugin")
def test_a_deidentified_dicomweb_destination_is_judged_by_the_new_uids(tmp_path: Path) -> None:
    users = {"edge": "s3cret-pass"}
    (tmp_path / "cloud.password").write_text(users["edge"] + "\n")
    paths = study(tmp_path / "in", 1, 3)
    with OrthancWeb(tmp_path / "orthanc", users) as orthanc:
        path = write_config(tmp_path / "agent.toml",
                            {"port": free_port(), "bind": "127.0.0.1",
                             "data_dir": str(tmp_path / "data"), "min_free_mb": 0},
                            {"CT": peer("MODALITY", allow=("store",)),
                             "CLOUD": {"kind": "dicomweb", "url": orthanc.dicomweb,
                                       "auth": "basic", "user": "edge",
                                       "password_file": "cloud.password",
                                       "deidentify": "basic", "max_instances": 2}})
        path.write_text(path.read_text() + FAST_RETRY.format(to=toml_value(["CLOUD"])))
        config = config_module.load_file(path)
        with Agent(config):
            assert scu.store(config.agent.port, paths) == [0, 0, 0]
            wait_until(lambda: [s for s, _ in jobs(tmp_path / "data")] == ["done"] * 3, 60,
                       "every job done")
        key = (tmp_path / "data" / keyed.SECRET_FILE).read_bytes()
        held = {str(dcmread(io.BytesIO(orthanc.raw(f"/instances/{ident}/file")),
                            stop_before_pixels=True).SOPInstanceUID)
                for ident in orthanc.rest("/instances")}
    assert held == {keyed.uid(key, str(dcmread(p).SOPInstanceUID)) for p in paths}


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_bigendian.dcm", "rtplan.dcm",
                                  "JPEG2000.dcm", "MR_small_RLE.dcm", "rtdose.dcm"])
def test_the_spliced_copy_reads_as_pydicom_would_write_it(tmp_path: Path, name: str) -> None:
    """Undecoded elements copied as stored, the rest encoded: the same data set as
    pydicom's own writer gives, for implicit, big endian, encapsulated, nested."""
    source = Path(get_testdata_file(name))
    (tmp_path / "data").mkdir()
    outgoing = config_module.parse({
        "agent": {"data_dir": str(tmp_path / "data")},
        "peers": {"P": {"ae_title": "P", "host": "127.0.0.1", "port": 104,
                        "deidentify": "basic", "allow_burned_in": True,
                        "coerce": {"set": {"InstitutionName": "Radiology Room 2",
                                           "RequestAttributesSequence[*].RequestedProcedureID":
                                           "RP1"}}}},
    }).peers["P"].outgoing
    assert outgoing is not None
    sent = prepare(outgoing, source, tmp_path / "data", "lane")
    with source.open("rb") as stored:
        expected, _pixels, _touched = changed(outgoing, stored, tmp_path / "data")
    written = io.BytesIO()
    expected.save_as(written, enforce_file_format=True)
    header = dcmread(sent.path, stop_before_pixels=True)
    assert header == dcmread(io.BytesIO(written.getvalue()), stop_before_pixels=True)
    assert dcmread(sent.path).get("PixelData") == dcmread(source).get("PixelData")


def test_a_forwarding_rule_coerces_what_it_matches_for_its_destinations(tmp_path: Path) -> None:
    config = config_module.parse({
        "agent": {"data_dir": str(tmp_path)},
        "peers": {"PACS": {"ae_title": "P", "host": "127.0.0.1", "port": 104,
                           "coerce": {"set": {"InstitutionName": "Radiology Room 2"}}},
                  "OTHER": {"ae_title": "O", "host": "127.0.0.1", "port": 105}},
        "forward": {"rules": [
            {"to": ["PACS"], "match": {"Modality": "CT"},
             "coerce": {"set": {"StationName": "CT-RULE"}}},
            {"to": ["PACS", "OTHER"], "match": {"Modality": "MR"},
             "coerce": {"set": {"StationName": "MR-RULE"}}}]},
    })
    [source] = study(tmp_path / "in", 1, 1)
    sent = dcmread(prepare(config.peers["PACS"].outgoing, source, tmp_path, "lane").path)
    assert (sent.InstitutionName, sent.StationName) == ("Radiology Room 2", "CT-RULE")
    assert prepare(config.peers["OTHER"].outgoing, source, tmp_path, "lane").path == source
    with pytest.raises(ConfigErrors, match=r"forward\.rules\[0\]\.coerce\.set\.Nope"):
        config_module.parse({"agent": {}, "peers": {"P": {"ae_title": "P", "host": "h",
                                                          "port": 1}},
                             "forward": {"rules": [{"to": ["P"], "coerce": {"set": {
                                 "Nope": "x"}}}]}})


@pytest.mark.slow
def test_a_1_gb_multiframe_goes_out_coerced_in_under_150_mb(tmp_path: Path) -> None:
    """The forwarding process (``edge-agent run``'s child) sends a changed copy of a 1 GB
    instance: the header changed, the pixel bytes copied by the kernel, never loaded."""
    import dicomgen
    from bench.peers import EdgeAgent, StoreSCP, peak_rss_mb, published_serving

    large = dicomgen.large_instance(tmp_path / "large.dcm", 1 << 30)
    with StoreSCP(tmp_path / "storescp") as scp:
        table = (f'\n[peers.DEST]\nae_title = "{scp.ae_title}"\nhost = "127.0.0.1"\n'
                 f'port = {scp.port}\n[peers.DEST.coerce]\nset = {{ InstitutionName ='
                 ' "Radiology Room 2" }\n\n[forward]\nto = ["DEST"]\n')
        with EdgeAgent(tmp_path / "agent", table) as agent:
            status = published_serving(agent.workdir / "data", agent.pid) or {}
            forwarder = int(status["forwarder_pid"])
            assert scu.store(agent.port, [large], called_ae=agent.ae_title) == [0]
            wait_until(lambda: [s for s, _ in jobs(agent.workdir / "data")] == ["done"], 300,
                       "the copy stored by storescp (its C-STORE answered)")
            peak = peak_rss_mb(forwarder)
        [received_file] = (scp.workdir / "out").iterdir()
        assert received_file.stat().st_size > 1 << 30
        assert dcmread(received_file, stop_before_pixels=True).InstitutionName == \
            "Radiology Room 2"
    assert peak < 150, f"the forwarding process peaked at {peak:.0f} MB"


def test_a_deidentified_copy_names_no_sending_ae_in_its_file_meta(tmp_path: Path) -> None:
    """STOW-RS sends the file meta too: the modality's AE title the archive wrote there
    (0002,0016) goes, unless the site retains device identity."""
    [source] = study(tmp_path / "in", 1, 1)
    ds = dcmread(source)
    ds.file_meta.SourceApplicationEntityTitle = "CT_ROOM_2"
    ds.save_as(source, enforce_file_format=True)
    for options, kept in (([], False), (["retain-device-identity"], True)):
        outgoing = config_module.parse({
            "agent": {"data_dir": str(tmp_path)},
            "peers": {"R": {"ae_title": "R", "host": "127.0.0.1", "port": 104,
                            "deidentify": "basic", "deidentify_options": options}},
        }).peers["R"].outgoing
        meta = dcmread(prepare(outgoing, source, tmp_path, "lane").path).file_meta
        assert ("SourceApplicationEntityTitle" in meta) is kept
        assert meta.MediaStorageSOPInstanceUID.startswith("2.25.")
