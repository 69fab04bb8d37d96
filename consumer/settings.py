"""Consumer settings (env prefix STREAMREC_CONSUMER_)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from consumer.state import StoreConfig
from core.settings import KafkaSettings, RedisSettings, ServiceSettings


class ConsumerSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="STREAMREC_CONSUMER_", env_nested_delimiter="__", extra="ignore"
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    group_id: str = "streamrec"
    batch_size: int = Field(default=2000, ge=1, le=100_000)  # max records per poll
    poll_timeout_ms: int = Field(default=500, ge=10)  # also bounds how fast SIGTERM is seen
    # How long the broker may hold a fetch that finds no new records. Tansu answers
    # such a fetch only when this runs out, not when a record arrives, so at a
    # trickle of events it is the freshness floor: kafka-python's 500 ms gave a
    # freshness p50 of 267 ms at 10 events/s (load test). 20 ms costs ~50 empty
    # fetches a second when idle.
    fetch_max_wait_ms: int = Field(default=20, ge=0, le=10_000)
    # Group membership: a join against Tansu took ~3 s with these and ~20 s with
    # kafka-python's defaults (measured on the 2-core development machine).
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1000
    max_poll_interval_ms: int = 30_000
    # The state model (sessions, pairing, bounds, trending half-life), validated
    # here: STREAMREC_CONSUMER_STATE__RULES__PAIR_WINDOW=10,
    # STREAMREC_CONSUMER_STATE__HALF_LIFE_MS=..., STREAMREC_CONSUMER_STATE__CO_TOP_M=...
    # Set the half-life to hours or days for a dense live stream.
    state: StoreConfig = Field(default_factory=StoreConfig)
    # How long item state (co-occurrence, popularity, trending) may be held back,
    # aggregated across polls, before it is written: what the API's item cache
    # can be behind by, on top of its own staleness. A user's own history is
    # written every poll. 0 writes item state every poll too.
    item_delay_ms: int = Field(default=1000, ge=0, le=60_000)
    # ... or until this many distinct pairs are held (a memory bound).
    item_max_pairs: int = Field(default=1_000_000, ge=1000)
    # Events dated more than this past the wall clock go to the dead-letter topic
    # (reason ts_in_future): one event dated years ahead would outweigh any
    # number of real ones in the forward-decayed trending set. A replay of
    # history is far behind the wall clock and unaffected.
    max_future_ms: int = Field(default=3_600_000, ge=0)
    # What to do when Redis holds less than the consumer group committed (it was
    # restarted without persistence, flushed, replaced, or restored to an earlier
    # point; consumer/continuity.py): "rebuild" replays those partitions from the
    # earliest offset the topic retains, "refuse" stops with exit code 6 before
    # writing anything. Both log what they found.
    on_state_loss: Literal["rebuild", "refuse"] = "rebuild"
    # Prometheus metrics (consumer/metrics.py) on http://HOST:PORT/metrics; 0: off.
    # A port already taken is logged and the consumer runs without them.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9108, ge=0, le=65535)
    # Touched after every poll; a container healthcheck checks that it is fresh.
    heartbeat_file: Path | None = None
    # Bounded backoff while Redis or the broker is away: 0.1 s doubling to 5 s.
    retry_initial_s: float = 0.1
    retry_max_s: float = 5.0
