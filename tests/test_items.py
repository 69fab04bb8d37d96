"""The API's item cache (serving/items.py) against a real Redis written by the real writer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import redis
import redis.asyncio as aioredis

from consumer.logic import SessionRules
from consumer.state import PartitionBatch, StoreConfig
from consumer.store import RedisStateWriter
from core.events import ClickEvent
from core.settings import RedisSettings
from serving.blend import BlendConfig
from serving.items import ItemCache
from serving.store import RedisStateReader

T = TypeVar("T")
T0 = 1_600_000_000_000
TOPIC = "clicks"
# Adjacent clicks pair up with weight 1 both ways: rows easy to predict.
FLAT = SessionRules(gap_ms=10**12, pair_window=1, linear_pair_weights=False, forward_weight=1)


class Writer:
    """Polls of one partition through the consumer's own Redis writer."""

    def __init__(self, settings: RedisSettings) -> None:
        self.store = RedisStateWriter(
            redis.Redis.from_url(settings.url),
            settings.keys,
            StoreConfig(rules=FLAT, co_half_life_ms=None),
        )
        self.offset = 0

    def clicks(self, user: str, items: Sequence[str]) -> None:
        events = [ClickEvent(user, item, T0 + self.offset + k) for k, item in enumerate(items)]
        recs = list(enumerate(events, self.offset))
        self.store.apply(TOPIC, [PartitionBatch(0, self.offset, self.offset + len(recs), recs)])
        self.offset += len(recs)


def run(settings: RedisSettings, body: Callable[[ItemCache], Awaitable[T]], **kw: Any) -> T:
    async def go() -> T:
        client = aioredis.Redis.from_url(settings.url, decode_responses=True)
        try:
            cache = ItemCache(
                kw.pop("store", None) or RedisStateReader(client, settings.keys),
                BlendConfig(),
                row_len=50,
                trend_len=kw.pop("trend_len", 100),
                max_rows=kw.pop("max_rows", 1000),
                max_vocab=kw.pop("max_vocab", 10_000),
            )
            await cache.refresh()
            return await body(cache)
        finally:
            await client.aclose()

    return asyncio.run(go())


def row_of(cache: ItemCache, rows: Sequence[Any]) -> list[dict[str, float]]:
    return [dict(r.pairs(cache.vocab)) for r in rows]


def test_rows_follow_the_change_feed_within_one_refresh(redis_settings: RedisSettings) -> None:
    w = Writer(redis_settings)
    w.clicks("u", "axay")  # row a: x 2, y 1

    async def body(cache: ItemCache) -> None:
        assert row_of(cache, await cache.rows(["a"])) == [{"x": 2.0, "y": 1.0}]
        assert (cache.stats.misses, cache.stats.hits) == (1, 0)
        w.clicks("v", "az")  # row a gains z
        # Until the next refresh the cache answers from what it holds (the
        # staleness bound); after it, with the change.
        assert row_of(cache, await cache.rows(["a"])) == [{"x": 2.0, "y": 1.0}]
        await cache.refresh()
        assert row_of(cache, await cache.rows(["a"])) == [{"x": 2.0, "y": 1.0, "z": 1.0}]
        assert cache.stats.rows_refreshed == 1
        assert cache.popularity("a") == 3.0 and cache.popularity("z") == 1.0
        staleness = cache.staleness_s()
        assert staleness is not None and 0 <= staleness < 1

    run(redis_settings, body)


def test_changed_rows_no_request_used_are_dropped_not_re_read(
    redis_settings: RedisSettings,
) -> None:
    w = Writer(redis_settings)
    w.clicks("u", "axbx")

    async def body(cache: ItemCache) -> None:
        await cache.rows(["a", "b"])
        await cache.refresh()  # both were used before this round: kept
        assert cache.rows_held == 2
        await cache.rows(["a"])  # only a is used in this round
        w.clicks("v", "axbx")  # both change
        await cache.refresh()
        assert (cache.rows_held, cache.stats.rows_refreshed) == (1, 1)
        assert row_of(cache, await cache.rows(["b"])) == [{"x": 4.0}]  # read again, fresh
        assert cache.stats.misses == 3

    run(redis_settings, body)


def test_a_row_dropped_while_it_is_being_read_is_read_again(
    redis_settings: RedisSettings,
) -> None:
    """A refresh can run while a request awaits its missing rows and drop rows the
    request found cached a moment before; the request must still get them all."""
    w = Writer(redis_settings)
    w.clicks("u", "axbycz")

    class DropsDuringRead(RedisStateReader):
        cache: ItemCache | None = None
        reads: int = 0

        async def rows(
            self, items: Sequence[str], per_item: int
        ) -> tuple[list[tuple[list[str], np.ndarray]], dict[str, float]]:
            self.reads += 1
            out = await super().rows(items, per_item)
            if self.reads == 2 and self.cache is not None:
                self.cache._rows.pop("a", None)  # what a concurrent refresh would do
            return out

    async def go() -> None:
        client = aioredis.Redis.from_url(redis_settings.url, decode_responses=True)
        store = DropsDuringRead(client, redis_settings.keys)
        cache = ItemCache(
            store, BlendConfig(), row_len=50, trend_len=10, max_rows=100, max_vocab=1000
        )
        store.cache = cache
        try:
            await cache.rows(["a"])
            rows = await cache.rows(["a", "b", "c"])  # a cached; b, c read; a dropped meanwhile
            assert row_of(cache, rows) == [{"x": 1.0}, {"x": 1.0, "y": 1.0}, {"y": 1.0, "z": 1.0}]
            assert store.reads == 3  # a read again
        finally:
            await client.aclose()

    asyncio.run(go())


def test_the_cache_starts_afresh_when_redis_goes_back(
    redis_settings: RedisSettings, redis_client: redis.Redis
) -> None:
    """A Redis restart without persistence, or a restore: the sequence goes back."""
    w = Writer(redis_settings)
    w.clicks("u", "axay")
    w.clicks("u", "az")  # a also pairs with y, the user's previous click

    async def body(cache: ItemCache) -> None:
        assert row_of(cache, await cache.rows(["a"])) == [{"x": 2.0, "y": 2.0, "z": 1.0}]
        for key in redis_client.scan_iter(match=redis_settings.keys.pattern()):
            redis_client.delete(key)
        fresh = Writer(redis_settings)
        fresh.clicks("u", "aq")
        await cache.refresh()
        assert cache.stats.resets == 1 and cache.rows_held == 0
        assert row_of(cache, await cache.rows(["a"])) == [{"q": 1.0}]

    run(redis_settings, body)


def test_the_cache_starts_afresh_when_the_store_was_rebuilt_past_its_sequence(
    redis_settings: RedisSettings, redis_client: redis.Redis
) -> None:
    """A rebuild (consumer/continuity.py) writes a new marker id: the cache starts
    afresh even when the rebuilt feeds have already gone past what it last read."""
    w = Writer(redis_settings)
    w.store.mark({"id": "first"})
    w.clicks("u", "axay")

    async def body(cache: ItemCache) -> None:
        assert row_of(cache, await cache.rows(["a"])) == [{"x": 2.0, "y": 1.0}]
        for key in redis_client.scan_iter(match=redis_settings.keys.pattern()):
            redis_client.delete(key)
        fresh = Writer(redis_settings)
        fresh.store.mark({"id": "rebuilt"})
        for _ in range(3):  # more writes than before: no feed went back
            fresh.clicks("v", "aq")
        await cache.refresh()
        assert cache.stats.resets == 1 and cache.store_id == "rebuilt"
        assert row_of(cache, await cache.rows(["a"])) == [{"q": 5.0}]  # a q a q a q
        await cache.refresh()  # the same store again: nothing is dropped
        assert cache.stats.resets == 1

    run(redis_settings, body)


def test_rows_are_bounded_least_recently_used_first(redis_settings: RedisSettings) -> None:
    w = Writer(redis_settings)
    w.clicks("u", "abcdefgh")

    async def body(cache: ItemCache) -> None:
        for item in "abcde":
            await cache.rows([item])
        assert cache.rows_held == 3 and cache.stats.evictions == 2
        await cache.rows(["c"])  # c is now the most recent
        await cache.rows(["f"])
        assert cache.rows_held == 3
        assert cache.stats.misses == 6
        await cache.rows(["c", "e", "f"])
        assert cache.stats.misses == 6  # all three held
        # A request with more sources than the bound still gets every row.
        rows = await cache.rows(list("abcdefg"))
        assert len(rows) == 7 and row_of(cache, rows)[0] == {"b": 1.0}

    run(redis_settings, body, max_rows=3)


def test_too_many_ids_start_the_cache_afresh(redis_settings: RedisSettings) -> None:
    w = Writer(redis_settings)
    w.clicks("u", [f"i{n}" for n in range(30)])

    async def body(cache: ItemCache) -> None:
        for n in range(1, 29):
            await cache.rows([f"i{n}"])
        assert len(cache.vocab) == 30 and cache.stats.resets == 0  # never inside a read
        await cache.refresh()
        assert cache.stats.resets == 1 and cache.rows_held == 0
        assert row_of(cache, await cache.rows(["i5"])) == [{"i4": 1.0, "i6": 1.0}]

    run(redis_settings, body, max_vocab=20, trend_len=5)


def test_a_row_read_across_a_refresh_is_read_again(redis_settings: RedisSettings) -> None:
    """A request reads row x (not cached yet), x changes, a refresh consumes that
    change while the read is in flight (x is not cached, so it neither re-reads
    nor drops it): the request must not keep the old row past that round."""
    w = Writer(redis_settings)
    w.clicks("u", "xa")

    class RefreshDuringRead(RedisStateReader):
        cache: ItemCache | None = None
        reads: int = 0

        async def rows(
            self, items: Sequence[str], per_item: int
        ) -> tuple[list[tuple[list[str], np.ndarray]], dict[str, float]]:
            self.reads += bool(items)  # (a refresh asks for no rows here)
            out = await super().rows(items, per_item)
            if self.reads == 1 and items and self.cache is not None:
                w.clicks("v", "xb")  # x changes after it was read ...
                await self.cache.refresh()  # ... and a round consumes the change
            return out

    async def go() -> None:
        client = aioredis.Redis.from_url(redis_settings.url, decode_responses=True)
        store = RefreshDuringRead(client, redis_settings.keys)
        cache = ItemCache(
            store, BlendConfig(), row_len=50, trend_len=10, max_rows=100, max_vocab=1000
        )
        store.cache = cache
        try:
            await cache.refresh()
            assert row_of(cache, await cache.rows(["x"])) == [{"a": 1.0, "b": 1.0}]
            assert store.reads == 2
            assert cache.popularity("x") == 2.0  # not the count the stale read saw
        finally:
            await client.aclose()

    asyncio.run(go())


def test_embedding_rows_past_the_bound_are_still_returned(redis_settings: RedisSettings) -> None:
    """Caching the 4th source's neighbours past max_rows emptied the map before the
    request collected them from it (KeyError, a 500)."""
    from offline.index import ItemIndex

    ids = [f"e{n}" for n in range(8)]
    index = ItemIndex.from_vectors(ids, np.eye(8, dtype=np.float32))

    async def body(cache: ItemCache) -> None:
        for lo in range(0, 8, 2):
            rows = cache.emb(index, ids[lo : lo + 2])
            assert len(rows) == 2

    run(redis_settings, body, max_rows=3)


def test_the_trending_head_survives_a_reset_until_the_next_good_refresh(
    redis_settings: RedisSettings,
) -> None:
    w = Writer(redis_settings)
    w.clicks("u", "abc")

    class FailsAfterReset(RedisStateReader):
        failing = False

        async def trending(self, n: int) -> list[tuple[str, float]]:
            if self.failing:
                raise ConnectionError("redis went away mid-refresh")
            return await super().trending(n)

    async def go() -> None:
        client = aioredis.Redis.from_url(redis_settings.url, decode_responses=True)
        store = FailsAfterReset(client, redis_settings.keys)
        cache = ItemCache(
            store, BlendConfig(), row_len=50, trend_len=10, max_rows=100, max_vocab=1000
        )
        try:
            await cache.refresh()
            head = cache.trending_pairs(10)
            assert {i for i, _ in head} == {"a", "b", "c"}
            cache.max_vocab = 1  # the next round starts afresh ...
            store.failing = True  # ... and fails after the reset
            with contextlib.suppress(ConnectionError):
                await cache.refresh()
            assert cache.stats.resets == 1
            assert cache.trending_pairs(10) == head  # cold users still get it
        finally:
            await client.aclose()

    asyncio.run(go())
