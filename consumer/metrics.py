"""The consumer's Prometheus metrics, on a port of their own (``METRICS_PORT``, 9108).

One registry per worker, served by prometheus-client's own HTTP server on a
thread; a port already taken is logged and the consumer goes on without it.
Metric names are the contract the Grafana dashboard keeps
(``deploy/grafana/dashboards/streamrec.json``; tests/test_metrics.py).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("streamrec.consumer")

APPLY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class ConsumerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.applied = Counter(
            "streamrec_consumer_events_applied", "Events applied to Redis", registry=r
        )
        self.skipped = Counter(
            "streamrec_consumer_events_skipped",
            "Redelivered events every group already held (skipped, exactly once)",
            registry=r,
        )
        self.dead_letters = Counter(
            "streamrec_consumer_dead_letters",
            "Events sent to the dead-letter topic, by reason",
            ["reason"],
            registry=r,
        )
        self.polls = Counter("streamrec_consumer_polls", "Kafka polls", registry=r)
        self.apply_seconds = Histogram(
            "streamrec_consumer_batch_apply_seconds",
            "Time to apply one poll's batch (histories, kind=poll) or to write the item "
            "state held back (kind=flush)",
            ["kind"],
            buckets=APPLY_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "streamrec_consumer_retries",
            "Retries while a service was unavailable, by service",
            ["service"],
            registry=r,
        )
        self.rebalances = Counter(
            "streamrec_consumer_rebalances",
            "Partition assignments and revocations",
            ["kind"],
            registry=r,
        )
        self.rewinds = Counter(
            "streamrec_consumer_rewinds",
            "Seeks back because the store moved (a gap, another owner, lost state)",
            registry=r,
        )
        self.rebuilds = Counter(
            "streamrec_consumer_state_rebuilds",
            "Rebuilds of state Redis had lost (consumer/continuity.py)",
            registry=r,
        )
        self.lag = Gauge(
            "streamrec_consumer_lag_events",
            "Per partition: events on the topic not yet applied (high watermark minus "
            "the next offset to apply)",
            ["partition"],
            registry=r,
        )
        self.stored_offset = Gauge(
            "streamrec_consumer_stored_offset",
            "Per partition: the offset every group of the keyspace has stored (all "
            "effects before it are in Redis)",
            ["partition"],
            registry=r,
        )
        self.assigned = Gauge(
            "streamrec_consumer_partitions_assigned", "Partitions this consumer owns", registry=r
        )
        self._server: Any = None

    def serve(self, host: str, port: int) -> None:
        if port == 0:
            return
        try:
            self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            log.warning("metrics not served on %s:%d: %s", host, port, exc)
            return
        log.info("metrics on http://%s:%d/metrics", host, port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def positions(
        self,
        lag: dict[int, int],
        stored: dict[int, int | None],
        gone: Iterable[int] = (),
    ) -> None:
        for p, n in lag.items():
            self.lag.labels(str(p)).set(n)
        for p, offset in stored.items():
            if offset is not None:
                self.stored_offset.labels(str(p)).set(offset)
        for p in gone:  # partitions given up: another consumer reports them
            for gauge in (self.lag, self.stored_offset):
                with contextlib.suppress(KeyError):
                    gauge.remove(str(p))
        self.assigned.set(len(lag))
