"""What the parts tell the status model for the metrics endpoint: refusals per status,
rejected associations, deliveries with their time, the bytes and age of what waits, the
disk's time to the floor. Each against the real part (archive, outbox) or the model."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.status import StatusModel
from agent.status_disk import MIN_SPAN, IngestRate
from tests.test_outbox import filled


def _histogram_count(model: StatusModel, name: str, **labels: str) -> float:
    for metric in model.timings.collect():
        for sample in metric.samples:
            if sample.name == f"{name}_count" and sample.labels == labels:
                return sample.value
    return 0.0


def test_refusals_are_counted_per_status_and_none_when_no_answer_was_sent() -> None:
    model = StatusModel()
    model.refused("disk full", 0xA700)
    model.refused("disk full", 0xA700)
    model.refused("not allowed", 0x0124)
    model.refused("cut off mid-transfer")
    snapshot = model.snapshot()
    assert snapshot.refused == 4
    assert snapshot.refused_by_status == {"0xA700": 2, "0x0124": 1, "none": 1}


def test_rejected_associations_are_counted_per_reason() -> None:
    model = StatusModel()
    for reason in ("unknown-ae", "unknown-ae", "limit"):
        model.association_rejected(reason)
    assert model.snapshot().associations_rejected == {"unknown-ae": 2, "limit": 1}


def test_a_delivery_counts_times_and_dates_itself_a_failure_counts() -> None:
    model = StatusModel()
    model.forwarded("PACS", 0.2)
    model.forwarded("PACS", 0.4)
    model.forward_failed("PACS", "refused")
    model.forwarded("BACKUP")  # a delivery whose time is not known: counted, not timed
    pacs, backup = (
        next(d for d in model.snapshot().destinations if d.name == name)
        for name in ("PACS", "BACKUP")
    )
    assert (pacs.delivered, pacs.failed, backup.delivered) == (2, 1, 1)
    assert pacs.last_delivery is not None and pacs.last_error is not None
    histogram = "edge_agent_delivery_duration_seconds"
    assert _histogram_count(model, histogram, destination="PACS") == 2
    assert _histogram_count(model, histogram, destination="BACKUP") == 0


def test_the_queue_tells_the_bytes_and_the_oldest_arrival_of_what_waits(
    tmp_path: Path,
) -> None:
    with filled(tmp_path / "data", 3, ("PACS", "BACKUP")) as archive:
        outbox = archive.outbox
        first, second, third = outbox.due("PACS", 1e12, 10)
        outbox.mark_done(first, 5.0)  # delivered: no longer waiting
        outbox.mark_failed(second, "gave up", next_attempt=0, quarantine=True)
        waiting = outbox.waiting()
        assert set(waiting) == {"PACS", "BACKUP"}
        pacs_bytes, pacs_oldest = waiting["PACS"]
        backup_bytes, backup_oldest = waiting["BACKUP"]
        assert 0 < pacs_bytes < backup_bytes  # PACS waits for one, BACKUP for three
        assert pacs_oldest >= backup_oldest  # the oldest of one is no older than of three
        assert pacs_bytes == archive.layout.absolute(third.path).stat().st_size
        model = StatusModel()
        model.queue_depth(outbox.depth(), ("PACS", "BACKUP"), waiting)
        pacs = next(d for d in model.snapshot().destinations if d.name == "PACS")
        assert (pacs.waiting, pacs.quarantined, pacs.waiting_bytes) == (1, 1, pacs_bytes)
        outbox.mark_done(third, 6.0)
        assert "PACS" not in outbox.waiting()  # nothing waits: no bytes, no age


def test_commitments_outstanding_are_kept_per_destination() -> None:
    model = StatusModel()
    model.destination_commitments(
        {"PACS": {"awaiting": 2, "requested": 1, "done": 9}, "BACKUP": {"failed": 1}}
    )
    snapshot = model.snapshot()
    outstanding = {d.name: d.commit_outstanding for d in snapshot.destinations}
    assert outstanding == {"PACS": 3, "BACKUP": 0}
    assert (snapshot.commit_awaiting, snapshot.commit_failed) == (3, 1)


def test_the_time_to_the_floor_follows_the_recent_ingest_rate() -> None:
    rate = IngestRate(window=60.0)
    rate.sample(0.0, 0)
    assert rate.seconds_to(1000) is None  # one sample: no rate yet
    rate.sample(MIN_SPAN, 10_000)  # 1000 bytes a second
    assert rate.seconds_to(50_000) == pytest.approx(50.0)
    assert rate.seconds_to(0) == 0.0  # at the floor already
    rate.sample(200.0, 10_000)  # nothing for a while: the old samples leave the window
    rate.sample(200.0 + MIN_SPAN, 10_000)
    assert rate.seconds_to(50_000) is None


def test_the_disk_state_carries_the_floor_and_the_time_to_it() -> None:
    model = StatusModel()
    model.disk(5 << 30, False, 1 << 30, 3600.0)
    snapshot = model.snapshot()
    assert (snapshot.disk_floor, snapshot.disk_full_in) == (1 << 30, 3600.0)
    version = snapshot.version
    model.disk(5 << 30, False, 1 << 30, 3601.0)  # a second more is not news
    assert model.snapshot().version == version
    model.disk(5 << 30, False, 1 << 30, None)  # nothing coming in any more is
    assert model.snapshot().disk_full_in is None
