"""Consumer settings (env prefix STREAMREC_CONSUMER_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from consumer.logic import SessionRules
from consumer.store import StoreConfig
from core.settings import KafkaSettings, RedisSettings

# The state model's defaults live with the dataclasses that use them (one
# source: tests that build SessionRules/StoreConfig directly get what ships).
_RULES = SessionRules()
_STORE = StoreConfig()


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
    session_gap_ms: int = Field(default=_RULES.gap_ms, ge=1)
    pair_window: int = Field(default=_RULES.pair_window, ge=1, le=1000)
    history_len: int = Field(default=_RULES.history_len, ge=1, le=10_000)
    # Pair weighting and asymmetry: see consumer.logic.SessionRules.
    linear_pair_weights: bool = _RULES.linear_pair_weights
    forward_weight: int = Field(default=_RULES.forward_weight, ge=1, le=100)
    co_top_m: int = Field(default=_STORE.co_top_m, ge=1)
    pop_max: int = Field(default=_STORE.pop_max, ge=1)
    # See consumer.store.StoreConfig; set STREAMREC_CONSUMER_TREND_HALF_LIFE_MS
    # to hours or days for a dense live stream.
    trend_half_life_ms: int = Field(default=_STORE.half_life_ms, ge=1000)
    idle_ttl_s: int = Field(default=_STORE.idle_ttl_s, ge=1)
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
