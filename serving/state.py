"""The typed state the lifespan yields: everything a request needs, no module globals."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis.asyncio as aioredis

from offline.index import ItemIndex
from serving.ingest import EventSink
from serving.items import CachedStateReader
from serving.live import ConsumerLag, Throughput
from serving.metrics import Metrics
from serving.search import TitleSearch
from serving.settings import ServingSettings
from serving.store import RedisStateReader

# Key under which the lifespan state reaches each request (``request.state``).
STATE_KEY = "serving"


@dataclass
class AppState:
    settings: ServingSettings
    redis: aioredis.Redis
    store: RedisStateReader
    # The item cache and the fast path (None: item_staleness_s = 0, read everything per request).
    cached: CachedStateReader | None
    events: EventSink
    metrics: Metrics = field(default_factory=Metrics)
    # Replaced wholesale by the index watcher; read it once per request.
    index: ItemIndex | None = None
    # A published version that failed to load, so the watcher does not retry it every poll.
    failed_version: str | None = None
    # GET /items?q=: the title search of one index version, built at its first query.
    search: tuple[str, TitleSearch] | None = None
    # GET /live: the consumer group's lag, and this worker's last throughput sample.
    lag: ConsumerLag | None = None
    throughput: Throughput = field(default_factory=Throughput)
