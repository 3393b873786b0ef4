"""How long the agent's work takes, as histograms the metrics endpoint serves: handling a
C-STORE (from its request to its answer), delivering one instance to a destination, and
answering a C-FIND. Part of the one status model (``StatusModel.timings``); kept apart
because they are distributions, not a state to snapshot.

``prometheus_client``'s histograms, made outside any registry: observing is a lock and
an addition, and the endpoint (``agent.metrics``) collects them on a scrape.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import Histogram
from prometheus_client.metrics_core import Metric

# seconds: from a small C-STORE on a quiet box to a large one on a busy SD card
STORE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# seconds: one instance to a PACS across a hospital link, or a thin one
DELIVERY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
FIND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Timings:
    """The agent's duration histograms, fed by the parts that do the work."""

    def __init__(self) -> None:
        self.cstore = Histogram(
            "edge_agent_cstore_duration_seconds",
            "Time from a C-STORE request to its answer (stored, refused or failed)",
            registry=None, buckets=STORE_BUCKETS,
        )
        self.delivery = Histogram(
            "edge_agent_delivery_duration_seconds",
            "Time to deliver one instance to a destination (the C-STORE and its answer)",
            ["destination"], registry=None, buckets=DELIVERY_BUCKETS,
        )
        self.cfind = Histogram(
            "edge_agent_cfind_duration_seconds",
            "Time to answer one C-FIND, from its request to its final response",
            registry=None, buckets=FIND_BUCKETS,
        )

    def collect(self) -> Iterator[Metric]:
        """Every histogram's current samples."""
        for histogram in (self.cstore, self.delivery, self.cfind):
            yield from histogram.collect()
