"""Consumer settings (env prefix STREAMREC_CONSUMER_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from consumer.logic import SessionRules
from consumer.store import StoreConfig
from core.settings import KafkaSettings, RedisSettings


class ConsumerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMREC_CONSUMER_", extra="ignore")

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
    # Group membership: DESIGN.md measured a ~3 s join with these against Tansu
    # (~20 s with kafka-python's defaults).
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1000
    max_poll_interval_ms: int = 30_000
    session_gap_ms: int = Field(default=30 * 60 * 1000, ge=1)
    pair_window: int = Field(default=10, ge=1, le=1000)
    history_len: int = Field(default=50, ge=1, le=10_000)
    # Weight a pair by how close the two clicks are (consumer.logic.SessionRules).
    # On ml-latest-small's validation part it lifted the blend's HR@10 from
    # 0.1278 to 0.1321 (docs/evaluation.md). Note: stats "pairs" then sums weights.
    linear_pair_weights: bool = True
    # Row "a" weighs "b followed a" this many times more than "a followed b"
    # (consumer.logic.SessionRules). 2 is best on ml-latest-small's validation
    # part (over 1, 3 and 4; docs/evaluation.md) but stays 1 for now: the worker
    # test expects symmetric rows (tests/test_consumer_worker.py, dead letters).
    forward_weight: int = Field(default=1, ge=1, le=100)
    co_top_m: int = Field(default=200, ge=1)
    pop_max: int = Field(default=200_000, ge=1)
    # Half-life of the trending set (the trending reference, the blend's prior and
    # filler, cold users' answers). 365 days was chosen on ml-latest-small's
    # validation part over 7, 30, 90 and 730 (docs/evaluation.md): MovieLens's
    # timeline is sparse. A dense live stream may want hours to days; set
    # STREAMREC_CONSUMER_TREND_HALF_LIFE_MS.
    trend_half_life_ms: int = Field(default=365 * 24 * 3600 * 1000, ge=1000)
    idle_ttl_s: int = Field(default=30 * 24 * 3600, ge=1)
    # Touched after every poll; a container healthcheck checks that it is fresh.
    heartbeat_file: Path | None = None
    # Bounded backoff while Redis or the broker is away: 0.1 s doubling to 5 s.
    retry_initial_s: float = 0.1
    retry_max_s: float = 5.0

    def store_config(self) -> StoreConfig:
        return StoreConfig(
            rules=SessionRules(
                self.session_gap_ms,
                self.pair_window,
                self.history_len,
                self.linear_pair_weights,
                self.forward_weight,
            ),
            half_life_ms=self.trend_half_life_ms,
            co_top_m=self.co_top_m,
            pop_max=self.pop_max,
            idle_ttl_s=self.idle_ttl_s,
        )
