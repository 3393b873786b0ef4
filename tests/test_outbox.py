"""The archive's forward queue on its own: the API the forwarder, retention and the CLI
call, against a real index filled through the ingest path."""

from __future__ import annotations

from pathlib import Path

import dicomgen
import pytest

from agent.archive import Archive, Layout
from agent.archive.outbox import DONE, PENDING, QUARANTINED, RETRYING, Lane
from agent.archive.retrieval import Reader
from agent.errors import IndexUnavailable
from tests.support import FixedRouting


def filled(root: Path, count: int, destinations: tuple[str, ...] = ("PACS",)) -> Archive:
    """An archive holding ``count`` instances, each queued for ``destinations``."""
    archive = Archive(root, routing=FixedRouting(*destinations))
    for ds in dicomgen.series(count, size=8):
        path = archive.layout.tmp_dir / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        archive.ingest(path, sop_class_uid=ds.SOPClassUID,
                       sop_instance_uid=ds.SOPInstanceUID, calling_ae="TEST")
    return archive


def test_lanes_split_the_due_jobs_between_them(tmp_path: Path) -> None:
    with filled(tmp_path / "data", 6) as archive:
        lanes = [archive.outbox.due("PACS", 1e12, 100, Lane(n, 2)) for n in range(2)]
        assert sorted(len(jobs) for jobs in lanes) == [3, 3]
        assert {j.pk for j in lanes[0]}.isdisjoint({j.pk for j in lanes[1]})
        with archive.outbox.reader() as reader:  # the sender's own connection sees the same
            assert reader.due("PACS", 1e12, 100, Lane(0, 2)) == lanes[0]
            assert reader.next_due("PACS", Lane(1, 2)) is not None
            assert reader.next_due("ELSEWHERE") is None


def test_a_job_goes_from_pending_to_quarantine_and_back(tmp_path: Path) -> None:
    with filled(tmp_path / "data", 3) as archive:
        outbox = archive.outbox
        first, second, third = outbox.due("PACS", 1e12, 10)
        outbox.mark_failed(first, "refused", next_attempt=2e12, quarantine=False)
        outbox.mark_failed(second, "refused for good", next_attempt=0, quarantine=True)
        outbox.mark_done(third, 1.0)
        assert outbox.depth() == {"PACS": {RETRYING: 1, QUARANTINED: 1}}  # done not counted
        assert outbox.due("PACS", 1e12, 10) == []  # one waits till later, one gave up
        assert outbox.next_due("PACS") == 2e12
        listed = {row.pk: row for row in outbox.listing()}
        assert set(listed) == {first.pk, second.pk}
        assert listed[second.pk].last_error == "refused for good"
        assert outbox.rearm(5.0, [second.pk]) == 1
        assert [j.pk for j in outbox.due("PACS", 5.0, 10)] == [second.pk]
        outbox.mark_failed(outbox.due("PACS", 5.0, 10)[0], "again", 0, quarantine=True)
        assert outbox.purge_quarantined() == 1
        assert {row.state for row in outbox.listing()} == {RETRYING}


def test_only_what_every_destination_has_is_delivered_and_removed(tmp_path: Path) -> None:
    with filled(tmp_path / "data", 2, ("PACS", "BACKUP")) as archive:
        outbox = archive.outbox
        for job in outbox.due("PACS", 1e12, 10):
            outbox.mark_done(job, 10.0)
        assert outbox.delivered(before=100.0, limit=10) == []  # BACKUP has nothing yet
        backup = outbox.due("BACKUP", 1e12, 10)
        outbox.mark_done(backup[0], 20.0)
        delivered = outbox.delivered(before=100.0, limit=10)
        assert len(delivered) == 1 and outbox.delivered(before=15.0, limit=10) == []
        archive.remove(delivered)
        assert not archive.layout.absolute(delivered[0]).exists()
        assert archive.counts().instances == 1
        assert outbox.depth() == {"BACKUP": {PENDING: 1}}
        kept = backup[1].sop_instance_uid  # PACS has it; an explicit push sends it again
        assert outbox.send_again([kept], "PACS", 30.0) == 1
        assert outbox.depth() == {"BACKUP": {PENDING: 1}, "PACS": {PENDING: 1}}
        assert DONE not in {row.state for row in outbox.listing()}


def test_an_index_that_does_not_answer_is_reported_not_raised(tmp_path: Path) -> None:
    archive = filled(tmp_path / "data", 1)
    assert archive.index.trouble() is None
    archive.close()
    trouble = archive.index.trouble()
    assert trouble is not None and trouble.startswith("the index does not answer")
    missing = Reader(Layout(tmp_path / "nowhere"), "EDGE")  # no index to open
    with pytest.raises(IndexUnavailable):
        missing.stored_syntaxes({"1.2.840.10008.5.1.4.1.1.7"})
