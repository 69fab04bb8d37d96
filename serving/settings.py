"""Settings of the serving API (env prefix ``STREAMREC_SERVING_``).

Nested values use ``__``: ``STREAMREC_SERVING_BLEND__W_EMB=0.3``. Redis and Kafka
also read their own shared prefixes (``STREAMREC_REDIS_URL``, ...), and the
artifacts directory falls back to ``STREAMREC_ARTIFACTS_DIR`` (core.PathSettings)
so one variable points every service at the same index.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from consumer.logic import SessionRules
from core.settings import KafkaSettings, PathSettings, RedisSettings, ServiceSettings
from serving.blend import BlendConfig
from serving.history import Seen
from serving.reader import ReadSpec

# The largest page any deployment may configure (``max_k``'s bound).
MAX_K_LIMIT = 1000


def _artifacts_dir() -> Path:
    return PathSettings().artifacts_dir


class ServingSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="STREAMREC_SERVING_", env_nested_delimiter="__", extra="ignore"
    )

    redis: RedisSettings = Field(default_factory=RedisSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    artifacts_dir: Path = Field(default_factory=_artifacts_dir)
    default_k: int = Field(default=10, ge=1)
    max_k: int = Field(default=100, ge=1, le=MAX_K_LIMIT)
    blend: BlendConfig = Field(default_factory=BlendConfig)
    # Let the index version's learned ranker (serving.ranker) re-order the
    # blend's pool when the version carries one; off: the blend ranks alone.
    ranker: bool = True
    # History entries read per request: by default the consumer's cap, so
    # everything the user has seen recently is excluded.
    history_len: int = Field(default=SessionRules().history_len, ge=1, le=1000)
    # What of the history read is not recommended again: all of it ("history"),
    # the current session ("session": entries at most session_gap_ms apart, the
    # consumer's rule), or nothing ("none"); a request's ?seen= overrides it.
    # Negative feedback is excluded under all three (serving/history.py).
    seen: Seen = "history"
    session_gap_ms: int = Field(default=SessionRules().gap_ms, ge=1)
    # Trending items read per request, at least k + history_len so the filler
    # still reaches k after every history item is excluded. 100 also gives the
    # prior to personalised candidates that sit in the trending head.
    trend_candidates: int = Field(default=100, ge=0, le=10_000)
    # Item-level state (co rows, popularity, trending) is held in each worker and
    # refreshed from Redis's change feed this often: answers reflect other users'
    # clicks within this bound (plus one round trip), the user's own at once.
    # 0 reads everything from Redis on every request (one Lua script).
    item_staleness_s: float = Field(default=1.0, ge=0.0, le=60.0)
    # Rows held per worker, least recently used dropped first. A row is ~50
    # neighbours: ~2 KB as arrays, so 100,000 rows is ~200 MB at most.
    item_cache_rows: int = Field(default=100_000, ge=100)
    # Item ids a worker codes before it starts its cache afresh (a memory bound
    # for catalogues that only grow; 2,000,000 ids ~ 200 MB of dicts and names).
    item_vocab_max: int = Field(default=2_000_000, ge=10_000)
    # Answer well-formed GET /recommendations beside FastAPI's router
    # (serving.fastpath); off: every request goes through the router.
    fast_path: bool = True
    index_poll_s: float = Field(default=2.0, gt=0.0)
    request_timeout_s: float = Field(default=1.0, gt=0.0)
    # Per POST /events body; 1000 events of ~100 bytes is ~100 KB.
    max_events_per_request: int = Field(default=1000, ge=1)
    # A request body is read whole before the request takes a slot (serving.limits):
    # at most this many bytes (1000 events at the 4 KiB per-event limit, plus
    # JSON's brackets and commas, fit in 5 MiB) and within this many seconds.
    max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    # The consumer group whose lag the page's live panel shows (GET /live).
    consumer_group: str = "streamrec"
    # The request line and headers, at most (431 past it; serving/protocol.py).
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    # API keys for POST /events, comma-separated (several at once, to rotate one
    # in before the old one goes; each at least 16 characters). Empty: writes are
    # open. Reads stay open either way. serving/auth.py.
    write_keys: SecretStr = SecretStr("")
    # POST /events refuses events dated more than this past the wall clock (422
    # ts_in_future): one event dated years ahead would outweigh any number of
    # real ones in the forward-decayed trending set. The consumer checks the same.
    max_future_ms: int = Field(default=3_600_000, ge=0)
    # How long an Idempotency-Key on POST /events is remembered (serving.idempotency).
    idempotency_window_s: int = Field(default=24 * 3600, ge=1)
    body_timeout_s: float = Field(default=5.0, gt=0.0)
    # Neighbour lists of this many trending items are computed when an index is
    # loaded (in the loader thread), so requests find them cached: a cold FAISS
    # search costs ~0.15-0.2 ms per item on a 10k x 64 flat index (measured),
    # and cache misses were ~17 % of the API's CPU in the first seconds after a
    # start (py-spy). The default covers the whole cache (offline.index
    # CACHE_MAX_ENTRIES), so a MovieLens-sized catalogue is warmed whole: ~2 s
    # of loader-thread CPU per index load; a larger one keeps its hot head.
    warm_items: int = Field(default=20_000, ge=0)
    # Overload protection (serving.limits): requests beyond max_in_flight wait up
    # to queue_wait_s for a slot, at most max_waiting of them; the rest get 503 +
    # Retry-After at once. One worker is one event loop: more requests in flight
    # than it takes to overlap Redis with Python only queue CPU work (~3.5 ms a
    # recommendation here), so the bound is small. Measured with the load test at
    # 500 req/s offered (2,000 events/s, 1 worker, 20 s runs; docs/loadtest.md):
    # 32 in flight let the queue grow to the client's 2 s timeout and only 42
    # req/s got answers; 4 in flight + 16 waiting for <= 20 ms answered 165 req/s
    # with 200 and the rest with 503, p99 95 ms (106 req/s, p99 119 ms in the
    # 30 s run kept in docs: the machine's speed varies between runs).
    max_in_flight: int = Field(default=4, ge=1)
    max_waiting: int = Field(default=16, ge=0)
    queue_wait_s: float = Field(default=0.02, ge=0.0)
    # GET /bench/fetch/{user_id}: the same Redis round trip as /recommendations
    # without scoring, the baseline of benchmarks/serving_bench.py. Off in production.
    bench_routes: bool = False

    @field_validator("write_keys")
    @classmethod
    def _keys_long_enough(cls, value: SecretStr) -> SecretStr:
        keys = [k.strip() for k in value.get_secret_value().split(",") if k.strip()]
        if any(len(k) < 16 for k in keys):
            raise ValueError("every write key must be at least 16 characters")
        return value

    @property
    def write_key_list(self) -> list[str]:
        return [k.strip() for k in self.write_keys.get_secret_value().split(",") if k.strip()]

    @model_validator(mode="after")
    def _k_bounds(self) -> ServingSettings:
        if self.default_k > self.max_k:
            raise ValueError(f"default_k={self.default_k} exceeds max_k={self.max_k}")
        return self

    @property
    def trend_head_len(self) -> int:
        """The longest trending list any request reads (k = max_k)."""
        return self.read_spec(self.max_k).n_trend

    def read_spec(self, k: int) -> ReadSpec:
        """What a request for ``k`` items reads."""
        return ReadSpec.for_request(
            k,
            history_len=self.history_len,
            trend_candidates=self.trend_candidates,
            blend=self.blend,
        )
