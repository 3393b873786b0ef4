"""The one thread scaffolding (``agent.threads.Worker``): start, wake, a bounded stop that
names the thread which overstays it, and a stop from inside the thread itself."""

from __future__ import annotations

import logging
import threading

import pytest

from agent import threads

BOUND = 10.0  # generous: each wait below ends on an event long before


class Looper(threads.Worker):
    """Counts its rounds; rests a minute between them unless woken or stopped."""

    def __init__(self, name: str = "looper-for-the-test") -> None:
        super().__init__(name, BOUND)
        self.rounds = 0
        self.went_round = threading.Event()
        self.interrupted = threading.Event()

    def run(self) -> None:
        while not self.stopping:
            self.rounds += 1
            self.went_round.set()
            self.wait(60.0)

    def _interrupt(self) -> None:
        self.interrupted.set()


class Stuck(threads.Worker):
    """Ignores a stop until released: the overstayer."""

    def __init__(self, name: str) -> None:
        super().__init__(name, 0.05)
        self.release = threading.Event()

    def run(self) -> None:
        self.release.wait()


def test_start_runs_the_loop_in_a_named_daemon_thread() -> None:
    with Looper() as worker:
        worker.start()
        assert worker.went_round.wait(BOUND)
        names = {t.name: t.daemon for t in threading.enumerate()}
        assert names.get("looper-for-the-test") is True
        assert not worker.stopping


def test_wake_cuts_the_rest_short() -> None:
    with Looper() as worker:
        worker.start()
        assert worker.went_round.wait(BOUND)
        worker.went_round.clear()
        worker.wake()  # without it, the next round is a minute away
        assert worker.went_round.wait(BOUND)
        assert worker.rounds == 2


def test_close_stops_the_thread_within_its_bound(caplog: pytest.LogCaptureFixture) -> None:
    worker = Looper()
    worker.start()
    assert worker.went_round.wait(BOUND)
    worker.close()  # it rests a minute: only the stop's wake-up ends that
    assert worker.stopping and worker.interrupted.is_set()
    assert not any(t.name == "looper-for-the-test" for t in threading.enumerate())
    assert worker.join(0) is True
    assert "did not stop" not in caplog.text


def test_a_thread_that_overstays_its_stop_is_named(caplog: pytest.LogCaptureFixture) -> None:
    worker = Stuck("stuck-worker-for-the-test")
    worker.start()
    try:
        with caplog.at_level(logging.ERROR, logger="agent.threads"):
            worker.close()
        assert "thread 'stuck-worker-for-the-test' did not stop" in caplog.text
        assert worker.join(0) is False
    finally:
        worker.release.set()
    assert worker.join(BOUND) is True


def test_a_stop_from_inside_the_thread_does_not_wait_for_itself(
        caplog: pytest.LogCaptureFixture) -> None:
    done = threading.Event()

    class SelfStopping(threads.Worker):
        def run(self) -> None:
            self.close()  # e.g. the console's 'quit' handled in the reader thread
            done.set()

    worker = SelfStopping("self-stopping-for-the-test", BOUND)
    worker.start()
    assert done.wait(BOUND), "close() from inside the thread blocked or raised"
    assert worker.stopping
    assert worker.join(BOUND) is True
    assert "did not stop" not in caplog.text


def test_a_worker_never_started_closes_at_once() -> None:
    worker = Looper()
    worker.close()
    assert worker.stopping and worker.join(0) is True


def test_stop_all_asks_everyone_first_and_names_only_the_overstayer(
        caplog: pytest.LogCaptureFixture) -> None:
    quick, stuck = Looper("quick-worker-for-the-test"), Stuck("slow-worker-for-the-test")
    stuck.start()
    quick.start()
    assert quick.went_round.wait(BOUND)
    try:
        with caplog.at_level(logging.ERROR, logger="agent.threads"):
            # the quick one is waited for first: a second is ample for it to wake and end
            assert threads.stop_all([quick, stuck], 1.0) is False
        assert quick.stopping and stuck.stopping
        assert "thread 'slow-worker-for-the-test' did not stop" in caplog.text
        assert "quick-worker-for-the-test" not in caplog.text
    finally:
        stuck.release.set()
    assert threads.stop_all([stuck, quick], BOUND) is True
