"""The status model as Prometheus metrics: one collector that reads ONE snapshot per
scrape, and the duration histograms, and never the index.

Names follow Prometheus's conventions (base units in the name, ``_total`` counters) and
are the ones the shipped alert rules use (``monitoring/edge-agent.rules.yml``). A value
the agent does not know yet (the disk before its first measurement, a certificate without
TLS) is left out rather than served as a made-up number.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable, Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.status import Snapshot, State, StatusModel
from agent.status_destinations import Destination

DESTINATION = ["destination"]


class StatusCollector(Collector):
    """Every agent metric, from one snapshot of the status model per scrape."""

    def __init__(self, status: StatusModel, clock: Callable[[], float] = time.time) -> None:
        self.status = status
        self.clock = clock  # epoch seconds: ages and times to expiry are measured on it

    def describe(self) -> list[Metric]:
        """Nothing: the registry then neither collects at registration nor checks names."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The metrics of one snapshot, then the histograms."""
        snapshot, now = self.status.snapshot(), self.clock()
        yield from receiving(snapshot)
        yield from destinations(snapshot.destinations, now, _epoch(snapshot.started_at))
        yield from disk(snapshot)
        yield from agent(snapshot, now)
        for metric in self.status.timings.collect():
            metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric


def receiving(s: Snapshot) -> Iterator[Metric]:
    """What came in: instances stored, duplicates, refusals by status, associations."""
    yield _counter("edge_agent_instances_received", "Instances stored (new to the archive)",
                   s.received)
    yield _counter("edge_agent_instances_duplicates", "Instances received again (already held)",
                   s.duplicates)
    refused = CounterMetricFamily(
        "edge_agent_instances_refused", "C-STORE requests answered with a failure, by status "
        "(none: the data set never arrived whole)", labels=["status"])
    for code, count in sorted(s.refused_by_status.items()):
        refused.add_metric([code], count)
    yield refused
    yield _counter("edge_agent_received_bytes", "Bytes of the instances stored",
                   s.received_bytes)
    yield GaugeMetricFamily("edge_agent_associations_open", "Associations open now",
                            value=s.associations)
    rejected = CounterMetricFamily("edge_agent_associations_rejected",
                                   "Association requests rejected, by reason", labels=["reason"])
    for reason, count in sorted(s.associations_rejected.items()):
        rejected.add_metric([reason], count)
    yield rejected


def destinations(found: tuple[Destination, ...], now: float, started: float) -> Iterator[Metric]:
    """Per destination: deliveries, failures, the queue and how old its oldest is."""
    families: list[tuple[CounterMetricFamily | GaugeMetricFamily, Callable[[Destination], float]]]
    families = [
        (CounterMetricFamily("edge_agent_delivered", "Instances delivered since the agent "
                             "started", labels=DESTINATION), lambda d: d.delivered),
        (CounterMetricFamily("edge_agent_delivery_failures", "Delivery attempts that failed "
                             "since the agent started", labels=DESTINATION), lambda d: d.failed),
        (_gauge("edge_agent_quarantined_instances", "Instances given up on (quarantined)"),
         lambda d: d.quarantined),
        (_gauge("edge_agent_queue_instances", "Instances waiting to be delivered (pending, "
                "retrying, held for their study)"), lambda d: d.waiting),
        (_gauge("edge_agent_queue_bytes", "Bytes of the instances waiting to be delivered"),
         lambda d: d.waiting_bytes),
        (_gauge("edge_agent_oldest_undelivered_age_seconds", "Age of the oldest instance "
                "waiting to be delivered (0: none waits)"),
         lambda d: 0.0 if d.oldest_waiting is None else max(0.0, now - d.oldest_waiting)),
        (_gauge("edge_agent_last_delivery_timestamp_seconds", "When an instance was last "
                "delivered (the agent's start if none since)"),
         lambda d: started if d.last_delivery is None else d.last_delivery),
        (_gauge("edge_agent_destination_up", "1 while associations to the destination can be "
                "set up, 0 while it is down"), lambda d: 1 if d.state == "up" else 0),
        (_gauge("edge_agent_commitment_outstanding", "Instances delivered whose storage "
                "commitment is not yet reported"), lambda d: d.commit_outstanding),
        (_gauge("edge_agent_destination_sending", "1 while its queue may be sent (inside a "
                "send window, none configured, or the clock untrusted), 0 while it waits for "
                "a window"), lambda d: 1 if d.window_open else 0),
        (_gauge("edge_agent_destination_max_bytes_per_second", "Its bandwidth cap "
                "(max_bytes_per_second; 0: none)"), lambda d: d.max_bytes_per_second or 0),
        (_gauge("edge_agent_destination_throttled", "1 while its bandwidth cap holds its "
                "writes back"), lambda d: 1 if d.throttled else 0),
    ]
    for family, value in families:
        for each in found:
            family.add_metric([each.name], value(each))
        yield family


def disk(s: Snapshot) -> Iterator[Metric]:
    """Free space, the floor below which nothing new is taken, and the time to it."""
    if s.disk_free is not None:
        yield GaugeMetricFamily("edge_agent_disk_free_bytes",
                                "Free bytes on the archive's file system", value=s.disk_free)
        yield GaugeMetricFamily(
            "edge_agent_disk_floor_eta_seconds", "Seconds until free space reaches the floor "
            "at the recent ingest rate (+Inf: nothing coming in)",
            value=math.inf if s.disk_full_in is None else s.disk_full_in)
    if s.disk_floor is not None:
        yield GaugeMetricFamily("edge_agent_disk_floor_bytes", "Free bytes below which new "
                                "instances are refused", value=s.disk_floor)


def agent(s: Snapshot, now: float) -> Iterator[Metric]:
    """The agent itself: health, start time, the clock, the TLS certificate."""
    yield GaugeMetricFamily("edge_agent_healthy", "1 while the health check passes (serving; "
                            "/healthz answers 200)", value=1 if s.state is State.SERVING else 0)
    yield GaugeMetricFamily("edge_agent_start_time_seconds", "When the agent started",
                            value=_epoch(s.started_at))
    yield GaugeMetricFamily("edge_agent_clock_synchronised", "1 if the system clock is known "
                            "to be synchronised (NTP or an RTC), 0 if not or unknown",
                            value=1 if s.clock.synchronised else 0)
    yield GaugeMetricFamily("edge_agent_clock_plausible", "1 if the system clock is plausible "
                            "(not before the release or the newest arrival, no jump)",
                            value=1 if s.clock.plausible else 0)
    if s.certificate_expires is not None:
        yield GaugeMetricFamily("edge_agent_certificate_expiry_seconds", "Seconds until the "
                                "TLS certificate expires", value=_epoch(s.certificate_expires)
                                - now)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=DESTINATION)


def _epoch(iso: str) -> float:
    """Epoch seconds of an ISO 8601 time the status model wrote (UTC if it has no zone)."""
    when = dt.datetime.fromisoformat(iso)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()
