"""Prefetch without a PACS: the filter on a calendar the test holds, the queue in a real
index (triggers, once per study, restart), and the rule that yields to forwarding."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import dicomgen
import pytest
from pydicom.dataset import Dataset

from agent import config as config_module
from agent.archive import Archive
from agent.archive.outbox import add_jobs
from agent.archive.prefetch_jobs import (
    HAND,
    QUEUED,
    RETRYING,
    RUNNING,
    STUDY,
    Job,
    PrefetchQueue,
    Trigger,
)
from agent.prefetch.choose import Candidate, candidates, choose, reference_day
from agent.prefetch.settings import ANY, SAME, PrefetchRule
from agent.prefetch.triggers import ConfiguredPrefetching, rule_for
from agent.prefetch.worker import PrefetchWorker
from agent.pull import Landing
from agent.status import StatusModel
from tests.support import FixedRouting, peer, write_config

DAY = dt.date(2030, 6, 15)  # "today", whatever the machine's clock says


def study(uid: str, date: str, *modalities: str) -> Dataset:
    answer = Dataset()
    answer.StudyInstanceUID = uid
    answer.StudyDate = date
    answer.ModalitiesInStudy = list(modalities)
    return answer


ANSWERS = candidates([
    study("1.1", "20300101", "CT"),  # this year
    study("1.2", "20280101", "CT", "SR"),
    study("1.3", "20260101", "MR"),
    study("1.4", "20250616", "CT"),  # 5 years less a day: inside
    study("1.5", "20250614", "CT"),  # 5 years and a day: outside
    study("1.6", "", "CT"),  # no date: nobody can say it is recent
    study("1.1", "20300101", "CT"),  # answered twice: once
])


def chosen(rule: PrefetchRule, *, trigger: Sequence[str] = ("CT",), held: Sequence[str] = (),
           trigger_study: str | None = None) -> list[str]:
    return [c.study_uid for c in choose(ANSWERS, rule, trigger_study=trigger_study,
                                        trigger_modalities=trigger, held=held, today=DAY)]


def rule(modality: str | tuple[str, ...] = SAME, within: float = 5.0, studies: int = 10
         ) -> PrefetchRule:
    return PrefetchRule(("CT1",), "PACS", modality, within, studies, 2000)


def test_the_same_modality_within_the_window_newest_first() -> None:
    assert len(ANSWERS) == 6
    assert chosen(rule()) == ["1.1", "1.2", "1.4"]


def test_any_modality_a_list_and_same_as_a_trigger_of_several() -> None:
    assert chosen(rule(ANY)) == ["1.1", "1.2", "1.3", "1.4"]
    assert chosen(rule(("MR", "SR"))) == ["1.2", "1.3"]
    assert chosen(rule(), trigger=("MR", "SR")) == ["1.2", "1.3"]
    assert chosen(rule(), trigger=()) == ["1.1", "1.2", "1.3", "1.4"]  # unknown: any


def test_the_window_and_the_study_limit() -> None:
    assert chosen(rule(within=1)) == ["1.1"]
    assert chosen(rule(within=2.5)) == ["1.1", "1.2"]
    assert chosen(rule(studies=2)) == ["1.1", "1.2"]


def test_the_trigger_study_and_what_the_archive_holds_are_left_out() -> None:
    assert chosen(rule(), trigger_study="1.1", held=("1.2",)) == ["1.4"]


def test_an_untrusted_clock_measures_the_window_from_the_data() -> None:
    wrong_today = dt.date(1970, 1, 1)
    assert reference_day(True, DAY, "20200101", ANSWERS) == DAY
    assert reference_day(False, wrong_today, "20280101", ANSWERS) == dt.date(2028, 1, 1)
    assert reference_day(False, wrong_today, "", ANSWERS) == dt.date(2030, 1, 1)
    assert reference_day(False, wrong_today, "", [Candidate("1", None)]) == wrong_today


def config_with_rules(tmp_path: Path, rules: str) -> config_module.Config:
    path = write_config(tmp_path / "agent.toml",
                        {"port": 11112, "data_dir": str(tmp_path / "data"), "min_free_mb": 0},
                        {"CT1": peer("CT1"), "MR1": peer("MR1"), "PACS": peer("PACS", 11113)})
    path.write_text(path.read_text() + rules)
    return config_module.load_file(path)


RULES = """
[[prefetch]]
from = ["CT1"]
priors_from = "PACS"
modality = "same"
max_studies = 2
"""


def test_the_rules_name_the_sources_and_the_rule_a_job_runs_by(tmp_path: Path) -> None:
    config = config_with_rules(tmp_path, RULES)
    triggers = ConfiguredPrefetching(lambda: config)
    assert triggers.priors_from("CT1") == ("PACS",)
    assert triggers.priors_from("MR1") == () and triggers.priors_from("NOBODY") == ()
    assert rule_for(config, _job(STUDY, "CT1")) == config.prefetch[0]
    assert rule_for(config, _job(STUDY, "MR1")) is None  # its rule was removed by a reload
    by_hand = rule_for(config, _job(HAND, ""))
    assert by_hand is not None and by_hand.modality == ANY and by_hand.max_studies == 2


def _job(trigger: str, source: str) -> Job:
    return Job(1, "P", "1.2", trigger, source, "PACS", (), "", QUEUED, 0, 0.0, None, 0, 0,
               0.0, None, None)


class Sources:
    """The archive's Prefetching: instances from CT1 pull priors from PACS."""

    def __init__(self) -> None:
        self.told = 0

    def priors_from(self, calling_ae: str) -> tuple[str, ...]:
        return ("PACS",) if calling_ae == "CT1" else ()

    def queued(self) -> None:
        self.told += 1


def ingest(archive: Archive, datasets: list[Dataset], calling_ae: str) -> None:
    for ds in datasets:
        path = archive.layout.tmp_dir / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        archive.ingest(path, sop_class_uid=ds.SOPClassUID,
                       sop_instance_uid=ds.SOPInstanceUID, calling_ae=calling_ae)


def test_a_new_study_from_a_source_queues_one_job_with_its_index_row(tmp_path: Path) -> None:
    sources = Sources()
    with Archive(tmp_path, prefetching=sources) as archive:
        queue = PrefetchQueue(archive.index)
        new = dicomgen.Study("A^B", "P7", study_date="20300610")
        ingest(archive, list(dicomgen.series(3, size=8, study=new)), "CT1")
        other = dicomgen.Study("C^D", "P8")
        ingest(archive, list(dicomgen.series(2, size=8, study=other)), "MR1")
        [job] = queue.listing()
        assert (job.patient_id, job.trigger_study, job.trigger, job.source) == (
            "P7", new.study_uid, STUDY, "CT1")
        assert (job.modalities, job.study_date, job.state) == (("CT",), "20300610", QUEUED)
        assert sources.told == 1  # once, after the commit of the study's first instance
        # more of the same study later, from the same source: no second job
        ingest(archive, list(dicomgen.series(1, size=8, study=new)), "CT1")
        assert len(queue.listing()) == 1 and sources.told == 1


def test_a_job_is_queued_once_and_never_for_an_id_that_matches_others(tmp_path: Path) -> None:
    with Archive(tmp_path) as archive:
        queue = PrefetchQueue(archive.index)
        mpps = Trigger("P1", "1.2.3", "mpps", "CT1", "PACS", ("CT",))
        assert queue.add(mpps) is not None
        assert queue.add(Trigger("P1", "1.2.3", STUDY, "CT1", "PACS")) is None  # same study
        for unsafe in ("", "  ", "P*", "P?", "P1\\P2"):
            assert queue.add(Trigger(unsafe, None, HAND, "", "PACS")) is None
        assert queue.add(Trigger("P1", None, HAND, "", "PACS")) is not None
        assert queue.add(Trigger("P1", None, HAND, "", "PACS")) is not None  # each asked for


def test_a_running_job_is_queued_again_after_a_restart_and_retries_wait(tmp_path: Path) -> None:
    with Archive(tmp_path) as archive:
        queue = PrefetchQueue(archive.index)
        first = queue.add(Trigger("P1", "1.1", STUDY, "CT1", "PACS"), now=100.0)
        second = queue.add(Trigger("P2", "1.2", STUDY, "CT1", "PACS"), now=101.0)
        assert first is not None and second is not None
        claimed = queue.claim(200.0)
        assert claimed is not None and claimed.pk == first and claimed.state == RUNNING
    with Archive(tmp_path) as archive:  # the agent stopped with the job in hand
        queue = PrefetchQueue(archive.index)
        assert queue.requeue_running() == 1
        again = queue.claim(200.0)
        assert again is not None and again.pk == first and again.attempts == 2
        queue.retry(first, "connection refused", 300.0)
        nxt = queue.claim(200.0)
        assert nxt is not None and nxt.pk == second
        assert queue.claim(299.0) is None  # the retry waits for its time
        later = queue.claim(300.0)
        assert later is not None and later.pk == first and later.state == RUNNING
        assert queue.counts()[RUNNING] == 2 and queue.counts()[RETRYING] == 0
        queue.fail(first, "refused for good", 400.0)  # `queue retry --all` re-arms it
        assert queue.retry_now(None, 500.0) == 1
        rearmed = queue.claim(500.0)
        assert rearmed is not None and rearmed.pk == first


def test_jobs_done_a_month_ago_are_forgotten_failed_and_recent_ones_stay(tmp_path: Path) -> None:
    day = 86400.0
    with Archive(tmp_path) as archive:
        queue = PrefetchQueue(archive.index)
        old, recent, failed = (
            queue.add(Trigger(f"P{n}", f"1.{n}", STUDY, "CT1", "PACS"), now=0.0)
            for n in range(3)
        )
        assert old is not None and recent is not None and failed is not None
        queue.finish(old, 1 * day)
        queue.finish(recent, 40 * day)
        queue.fail(failed, "refused", 1 * day)
        status = StatusModel()
        land = Landing(archive, status, lambda names: None, "test")
        worker = PrefetchWorker(
            lambda: config_module.builtin_default(), archive, land, status,
            clock=lambda: 45 * day,
        )
        worker.refresh_status()  # the housekeeping tick's: forgets, then counts
        assert {job.pk for job in queue.listing()} == {recent, failed}
        assert (status.snapshot().prefetch.done, status.snapshot().prefetch.failed) == (1, 1)
        queue.finish(failed, 45 * day)
        worker.refresh_status()  # within RECOUNT of the last: the tick does not count again
        assert status.snapshot().prefetch.done == 1
        worker.refresh_status(now=True)  # the worker's own change: counted at once
        assert status.snapshot().prefetch.done == 2


@pytest.mark.parametrize(("next_attempt", "down", "destination", "busy"), [
    (0.0, False, "PACS", True),  # due now for a destination that is up: yield
    (0.0, True, "PACS", False),  # its destination is down: nothing could send it
    (10_000.0, False, "PACS", False),  # in back-off: not due
    (0.0, False, "GONE", False),  # no such peer any more: no sender for it
    (0.0, False, "MR1", False),  # a peer, but not forwarded to: no sender for it
])
def test_prefetch_yields_only_to_forwards_that_could_go_now(
    tmp_path: Path, next_attempt: float, down: bool, destination: str, busy: bool
) -> None:
    config = config_with_rules(tmp_path, RULES + '\n[forward]\nto = ["PACS"]\n')
    status = StatusModel()
    if down:
        status.destination_state("PACS", 1.0, "connection refused", 2.0)
    with Archive(tmp_path / "data", routing=FixedRouting()) as archive:
        with archive.index.transaction() as conn:
            add_jobs(conn, "1.2.3.4", [destination], next_attempt)
        land = Landing(archive, status, lambda names: None, "test")
        worker = PrefetchWorker(lambda: config, archive, land, status, clock=lambda: 100.0)
        assert worker._forwarding_busy() is busy
