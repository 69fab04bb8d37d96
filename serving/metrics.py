"""The API's metrics: Prometheus (``GET /metrics``) and a per-worker snapshot (``GET /stats``).

Counted once, at the place it happens, through :class:`Metrics`'s methods; each
updates a Prometheus metric and this worker's own plain counters (the JSON of
``/stats``, which names the worker that answered).

Several uvicorn workers report one truth: ``streamrec serve`` points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before the workers start
(prometheus-client's multiprocess mode), every worker writes its values there,
and whichever worker answers ``/metrics`` reads them all. Without that variable
(tests, an app built in-process) each app has a registry of its own.

Metric names are the contract the Grafana dashboard keeps
(``deploy/grafana/dashboards/streamrec.json``; tests/test_metrics.py checks
that every name it queries is exported).
"""

from __future__ import annotations

import os
import time
from collections import Counter as Tally
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

# Request latency buckets, seconds: a page render's budget is tens of milliseconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
EXPOSITION_TYPE = CONTENT_TYPE_LATEST
RECOMMENDATIONS_ROUTE = "/recommendations/{user_id}"
RECENT = 2000


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    # This worker's own counts (GET /stats).
    requests: Tally[str] = field(default_factory=Tally)  # by "METHOD route"
    errors: Tally[str] = field(default_factory=Tally)  # by error code
    recommendations: int = 0  # responses served by /recommendations
    fallbacks: int = 0  # ...of which had no personalised item (cold user)
    items_served: int = 0
    events_accepted: int = 0
    index_swaps: int = 0
    index_load_failures: int = 0

    def __post_init__(self) -> None:
        r = self.registry
        self.http_requests = Counter(
            "streamrec_http_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "streamrec_http_request_duration_seconds",
            "Time from a request's arrival to its last byte, by route template, method and status",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.error_count = Counter(
            "streamrec_errors", "Error answers, by error code", ["code"], registry=r
        )
        self.shed = Counter(
            "streamrec_requests_shed",
            "Requests answered 503 overloaded by the concurrency limit",
            registry=r,
        )
        self.redis_errors = Counter(
            "streamrec_backend_errors",
            "Requests answered 503 because a backing service failed, by service",
            ["service"],
            registry=r,
        )
        self.recs = Counter("streamrec_recommendations", "Recommendation answers", registry=r)
        self.recs_fallback = Counter(
            "streamrec_recommendation_fallbacks",
            "Recommendation answers with no personalised item (trending only)",
            registry=r,
        )
        self.served = Counter(
            "streamrec_items_served", "Items in recommendation answers", registry=r
        )
        self.accepted = Counter(
            "streamrec_events_accepted", "Events accepted by POST /events", registry=r
        )
        self.swaps = Counter("streamrec_index_swaps", "Embedding index versions loaded", registry=r)
        self.load_failures = Counter(
            "streamrec_index_load_failures", "Embedding index loads that failed", registry=r
        )
        self.index_built = Gauge(
            "streamrec_index_built_timestamp_seconds",
            "When the serving embedding index was built (age = time() - this)",
            registry=r,
            multiprocess_mode="max",
        )
        self.index_info = Gauge(
            "streamrec_index_info",
            "1 for the embedding index version serving now (0 for versions swapped out)",
            ["version"],
            registry=r,
            multiprocess_mode="max",
        )
        self._index_version: str | None = None
        self.index_items = Gauge(
            "streamrec_index_items",
            "Items in the serving embedding index",
            registry=r,
            multiprocess_mode="max",
        )
        self.cache_hits = Counter(
            "streamrec_item_cache_hits", "Source rows found in the item cache", registry=r
        )
        self.cache_misses = Counter(
            "streamrec_item_cache_misses", "Source rows read from Redis in a request", registry=r
        )
        self.cache_refreshed = Gauge(
            "streamrec_item_cache_refreshed_timestamp_seconds",
            "When the item cache last refreshed from Redis (staleness = time() - this; "
            "the oldest worker's)",
            registry=r,
            multiprocess_mode="min",
        )
        self.cache_rows = Gauge(
            "streamrec_item_cache_rows",
            "Co-occurrence rows held by the item cache (the largest worker's)",
            registry=r,
            multiprocess_mode="max",
        )
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        # This worker's last recommendation latencies, seconds (the page's live panel).
        self.recent: deque[float] = deque(maxlen=RECENT)
        self._cache_seen = (0, 0)

    # -- what happens ------------------------------------------------------------
    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.http_requests.labels(route, method, str(status)),
                self.http_latency.labels(route, method, str(status)),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)
        self.requests[f"{method} {route}"] += 1
        if route == RECOMMENDATIONS_ROUTE and status == 200:
            self.recent.append(seconds)

    def error(self, code: str) -> None:
        self.errors[code] += 1
        self.error_count.labels(code).inc()
        if code == "overloaded":
            self.shed.inc()

    def backend_error(self, service: str) -> None:
        self.redis_errors.labels(service).inc()

    def recommended(self, items: int, personalised: bool) -> None:
        self.recommendations += 1
        self.recs.inc()
        self.items_served += items
        self.served.inc(items)
        if not personalised:
            self.fallbacks += 1
            self.recs_fallback.inc()

    def events(self, n: int) -> None:
        self.events_accepted += n
        self.accepted.inc(n)

    def index_loaded(self, version: str, built_at: float | None, items: int, *, swap: bool) -> None:
        """An index is serving now: at start (``swap`` False) or swapped in."""
        if self._index_version is not None and self._index_version != version:
            self.index_info.labels(self._index_version).set(0)
        self.index_info.labels(version).set(1)
        self._index_version = version
        if swap:
            self.index_swaps += 1
            self.swaps.inc()
        if built_at is not None:
            self.index_built.set(built_at)
        self.index_items.set(items)

    def index_failed(self) -> None:
        self.index_load_failures += 1
        self.load_failures.inc()

    def item_cache(self, hits: int, misses: int, rows: int, refreshed_at: float | None) -> None:
        """The item cache's totals, after a refresh (it counts on its own; the
        difference since the last call goes to the counters)."""
        seen_hits, seen_misses = self._cache_seen
        self.cache_hits.inc(max(0, hits - seen_hits))
        self.cache_misses.inc(max(0, misses - seen_misses))
        self._cache_seen = (hits, misses)
        self.cache_rows.set(rows)
        if refreshed_at is not None:
            # refreshed_at is monotonic; the gauge is wall-clock seconds.
            self.cache_refreshed.set(time.time() - (time.monotonic() - refreshed_at))

    # -- views ----------------------------------------------------------------------
    def exposition(self) -> bytes:
        """The Prometheus text format: every worker's values in multiprocess mode."""
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=path)
        return generate_latest(registry)

    def snapshot(self) -> dict[str, Any]:
        return {
            # Each uvicorn worker process keeps its own counters; the pid says whose.
            "pid": os.getpid(),
            "requests": dict(self.requests),
            "errors": dict(self.errors),
            "recommendations": self.recommendations,
            "fallbacks": self.fallbacks,
            "items_served": self.items_served,
            "events_accepted": self.events_accepted,
            "index_swaps": self.index_swaps,
            "index_load_failures": self.index_load_failures,
        }
