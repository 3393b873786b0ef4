"""Rate-limited logging of what peers do wrong (agent/net/peerlog.py), on a fake clock."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator

import pytest

from agent.net import peerlog


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


Limited = tuple[logging.Logger, Clock, peerlog.PeerLogLimiter]


@pytest.fixture
def limited(caplog: pytest.LogCaptureFixture) -> Iterator[Limited]:
    """A pynetdicom-named logger behind its own limiter with a fake clock."""
    clock = Clock()
    limiter = peerlog.PeerLogLimiter(window=60, clock=clock)
    logger = logging.getLogger("pynetdicom.test_peerlog")
    logger.addFilter(limiter)
    caplog.set_level(logging.DEBUG, logger=logger.name)  # pynetdicom may sit at WARNING
    try:
        yield logger, clock, limiter
    finally:
        logger.removeFilter(limiter)


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_one_line_per_peer_and_kind_then_a_count(
    limited: Limited, caplog: pytest.LogCaptureFixture
) -> None:
    logger, clock, _limiter = limited
    with peerlog.speaking_of("10.0.0.9"):
        for pdu_type in range(5):
            logger.error("Unknown PDU type received '0x%02X'", 0x80 + pdu_type)
        logger.error("Connection closed")
        clock.now = 61
        logger.error("Unknown PDU type received '0x99'")
    assert _messages(caplog) == [
        "Unknown PDU type received '0x80'",
        "Connection closed",
        "Unknown PDU type received '0x99' (and 4 more like it from 10.0.0.9)",
    ]


def test_a_flush_reports_what_was_not_written(
    limited: Limited, caplog: pytest.LogCaptureFixture
) -> None:
    logger, clock, limiter = limited
    with peerlog.speaking_of("10.0.0.9"):
        for _ in range(3):
            logger.warning("rejected association")
    clock.now = 61
    limiter.flush()
    assert _messages(caplog)[-1].startswith(
        "2 more log lines like 'rejected association' from 10.0.0.9"
    )


def test_other_peers_untagged_threads_and_info_lines_pass(
    limited: Limited, caplog: pytest.LogCaptureFixture
) -> None:
    logger, _clock, _limiter = limited
    for peer in ("10.0.0.1", "10.0.0.2"):
        with peerlog.speaking_of(peer):
            logger.warning("bad input")
            logger.info("said hello")
            logger.info("said hello")
    logger.warning("bad input")
    logger.warning("bad input")
    assert len(caplog.records) == 2 * 3 + 2


def test_tracebacks_of_bad_input_are_dropped_unless_debugging(
    limited: Limited, caplog: pytest.LogCaptureFixture
) -> None:
    logger, _clock, limiter = limited
    try:
        raise ValueError("'context_id' must be an odd integer")
    except ValueError:
        with peerlog.speaking_of("10.0.0.9"):
            logger.exception("State Machine received an exception")
        limiter.enabled = False
        logger.exception("State Machine received an exception")
    assert caplog.records[0].exc_info is None
    assert caplog.records[1].exc_info is not None and caplog.records[1].exc_info[0] is ValueError
    assert sys.exc_info() == (None, None, None)
