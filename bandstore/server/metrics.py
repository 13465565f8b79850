"""Prometheus metrics of ``bandstore serve``, in a registry of the app (not the global one).

Store counters (``bandstore_lookups_total{table}``, hits, misses, blocks read, bytes read,
useful bytes) and the version switches (``bandstore_version_swaps_total``, the served
``bandstore_version``, the last switch's seconds) are read from the backend's ``stats()`` at
scrape time by a custom collector, so they are exact and cost nothing on the serving path.
The server's own: request latency and batch size histograms, queue depth, requests answered
by status, rejected requests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from bandstore.errors import BandstoreError

STORE_COUNTERS = {
    "lookups": "ids looked up",
    "hits": "ids served from DRAM",
    "misses": "ids served from a block read from the slow tier",
    "blocks_read": "distinct blocks read from the slow tier",
    "bytes_read": "bytes read from the slow tier",
    "useful_bytes": "bytes of requested rows in the blocks read",
}

#: Latency buckets from 100 us to 10 s.
LATENCY_BUCKETS = (
    1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
)  # fmt: skip
BATCH_BUCKETS = tuple(float(1 << k) for k in range(0, 17))
#: The store's version switches (``stats()["total"]``; ``bandstore.serve.follow``).
SWAP_COUNTERS = {
    "version_swaps": "switches to a newly committed version, made between calls",
    "version_swap_errors": "failed preparations of a new version (the old one kept serving)",
    "warm_rows": "rows read into new caches at a switch (not counted as lookups)",
    "warm_blocks_read": "blocks read to warm new caches at a switch (not in blocks_read)",
}
SWAP_GAUGES = {
    "last_swap_seconds": "the last switch's time, preparing the version included",
    "last_swap_blocked_seconds": "how long the last switch held new calls back",
}


class StoreCollector(Collector):
    """Counters per table from ``stats()`` (a store's: ``{table: {counter: value}}``)."""

    def __init__(self, stats: Callable[[], dict[str, dict[str, float]]],
                 version: Callable[[], int] | None = None):  # fmt: skip
        self._stats = stats
        self._version = version

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        try:
            stats = self._stats()
        except BandstoreError:  # closed while shutting down: nothing to report
            return
        tables = [t for t in stats if t != "total"]
        for name, doc in STORE_COUNTERS.items():
            fam = CounterMetricFamily(
                f"bandstore_{name}", f"Store counter: {doc}", labels=["table"]
            )
            for t in tables:
                if name in stats[t]:
                    fam.add_metric([t], float(stats[t][name]))
            yield fam
        total = stats.get("total", {})
        for name, doc in SWAP_COUNTERS.items():
            if name in total:
                yield CounterMetricFamily(f"bandstore_{name}", doc, value=float(total[name]))
        for name, doc in SWAP_GAUGES.items():
            if name in total:
                yield GaugeMetricFamily(f"bandstore_{name}", doc, value=float(total[name]))
        if self._version is not None:
            yield GaugeMetricFamily(
                "bandstore_version", "the store version being served", value=float(self._version())
            )


class ServerMetrics:
    """The app's registry and the metrics the server updates."""

    def __init__(self, stats: Callable[[], dict[str, dict[str, float]]], depth: Callable[[], int],
                 version: Callable[[], int] | None = None):  # fmt: skip
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(StoreCollector(stats, version))
        self.latency = Histogram(
            "bandstore_request_seconds",
            "Request latency, from the request's arrival to its answer",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_bags = Histogram(
            "bandstore_batch_bags",
            "Bags (samples) per batch served by one merged backend call",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "bandstore_queue_depth",
            "Requests waiting for a batch (unbatched: being served)",
            registry=self.registry,
        )
        self.queue_depth.set_function(lambda: float(depth()))
        self.requests = Counter(
            "bandstore_requests",
            "Requests answered, by endpoint and HTTP status",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "bandstore_rejected_requests",
            "Requests refused with a 4xx, by reason (the error type)",
            ["reason"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe(self, endpoint: str, status: int, seconds: float, reason: Any = None) -> None:
        self.latency.labels(endpoint).observe(seconds)
        self.requests.labels(endpoint, str(status)).inc()
        if reason is not None:
            self.rejected.labels(str(reason)).inc()
