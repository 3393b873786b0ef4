"""The bandwidth cap's token bucket, on a clock the test owns: its sleeps move time, so a
minute of throttling passes at once and the bytes let through are checked against the
cap at every moment, not by timing."""

from __future__ import annotations

import threading

import pytest

from agent.forward.bandwidth import BURST_SECONDS, MIN_BURST, Interrupted, TokenBucket


class SteppedClock:
    """Monotonic time that a sleep advances by exactly what was asked; records sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, stop: threading.Event, seconds: float) -> bool:
        if stop.is_set():
            return True
        self.sleeps.append(seconds)
        self.now += seconds
        return False


def test_no_cap_lets_everything_through_at_once() -> None:
    clock = SteppedClock()
    bucket = TokenBucket(lambda: None, clock)
    for _ in range(100):
        assert bucket.take(10_000_000)
    assert clock.sleeps == [] and bucket.taken == 1_000_000_000


@pytest.mark.parametrize("rate, write", [(1_000_000, 262_144), (10_000_000, 262_144),
                                         (100_000, 262_144), (50_000, 1_000), (2_000, 16_384)])
def test_bytes_let_through_never_exceed_burst_plus_cap_times_elapsed(rate: int,
                                                                      write: int) -> None:
    clock = SteppedClock()
    bucket = TokenBucket(lambda: rate, clock)
    burst = max(rate * BURST_SECONDS, MIN_BURST)
    start, through, takes = clock.now, 0, 0
    while clock.now - start < 60:
        assert bucket.take(write)
        through, takes = through + write, takes + 1
        # a byte of float rounding per take at most
        assert through <= burst + rate * (clock.now - start) + takes
    # and it is the cap, not less: over a minute the rate is within 1 % of it
    assert through / (clock.now - start) >= 0.99 * rate


BURST = int(1_000_000 * BURST_SECONDS)  # at 1 MB/s


def test_a_write_bigger_than_the_burst_waits_for_all_of_its_bytes() -> None:
    clock = SteppedClock()
    bucket = TokenBucket(lambda: 1_000_000, clock)
    assert bucket.take(BURST)  # the full bucket: at once
    assert clock.sleeps == []
    assert bucket.take(5_000_000)  # never on credit: 5 s of accrual first
    assert clock.now - 1000.0 == pytest.approx(5.0)


def test_a_stop_interrupts_a_waiting_take() -> None:
    clock = SteppedClock()
    bucket = TokenBucket(lambda: 1_000, clock)
    stop = threading.Event()
    assert bucket.take(1_500)  # the minimum burst
    stop.set()
    assert not bucket.take(10_000, stop)
    with pytest.raises(Interrupted):
        bucket.take_or_raise(10_000, stop)


def test_a_reload_changes_the_cap_at_the_next_take() -> None:
    clock = SteppedClock()
    cap = [1_000_000]
    bucket = TokenBucket(lambda: cap[0], clock)
    bucket.take(BURST)
    bucket.take(1_000_000)
    assert clock.now - 1000.0 == pytest.approx(1.0)
    cap[0] = 100_000
    before = clock.now
    bucket.take(1_000_000)
    assert clock.now - before == pytest.approx(10.0, rel=0.02)
    cap[0] = 0 or None  # type: ignore[assignment]  # the key removed: no cap
    before = clock.now
    bucket.take(10_000_000)
    assert clock.now == before


def test_throttled_says_whether_writers_wait() -> None:
    clock = SteppedClock()
    bucket = TokenBucket(lambda: 1_000_000, clock)
    assert not bucket.throttled()
    bucket.take(BURST)
    assert bucket.throttled()
    clock.now += 1.0
    assert not bucket.throttled()


def test_lanes_share_one_bucket() -> None:
    """Two threads taking from one bucket (a destination's two associations) get the cap
    between them, not each: checked on the bytes and the time the clock was moved."""
    clock = SteppedClock()
    lock = threading.Lock()

    class Shared(SteppedClock):
        def sleep(self, stop: threading.Event, seconds: float) -> bool:
            with lock:  # both threads' waits are one timeline: each moves it
                clock.now += seconds
            return False

        def monotonic(self) -> float:
            return clock.now

    bucket = TokenBucket(lambda: 1_000_000, Shared())

    def lane() -> None:
        for _ in range(40):
            bucket.take(65_536)

    threads = [threading.Thread(target=lane) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert bucket.taken == 2 * 40 * 65_536
    # the time moved is at least what the cap needs for both lanes' bytes, less the burst
    assert clock.now - 1000.0 >= (bucket.taken - BURST) / 1_000_000 - 1e-6


def test_the_engine_counts_the_bytes_each_p_data_puts_on_the_wire() -> None:
    """What the cap is taken for: a whole PDU, header and PDV items included, whichever
    way it is queued (encoded by the engine, or a pynetdicom primitive); nothing else."""
    from pynetdicom.pdu_primitives import A_ABORT, P_DATA

    from agent.net.engine.dul import EncodedPData, pdata_size

    encoded = EncodedPData([b"\x04\x00" + b"\x00" * 4, memoryview(b"x" * 1000)])
    assert pdata_size(encoded) == 1006
    primitive = P_DATA()
    primitive.presentation_data_value_list = [[1, b"\x00" + b"y" * 99], [1, b"\x02" + b"z" * 9]]
    assert pdata_size(primitive) == 6 + (5 + 100) + (5 + 10)  # data: control byte first
    assert pdata_size(A_ABORT()) == 0
