"""The reference reader (serving/store.py: history, then rows and heads) against a real Redis.

What every reader backend must do is in test_state_contract.py; this file keeps
what only Redis can meet: entries written by something other than the consumer.
"""

from __future__ import annotations

import asyncio
import json
import random

import redis
import redis.asyncio as aioredis

from core.settings import RedisSettings
from serving.blend import recent_sources
from serving.history import parse_history
from serving.reader import ReadSpec, UserState, best
from serving.store import RedisStateReader, top_of_row


def entry(ts: int, item: str, session: str | None = "s1") -> str:
    return json.dumps([ts, item, session])


def fetch(
    settings: RedisSettings, user: str, *, n_sources: int = 3, per_item: int = 2, n_trend: int = 3
) -> UserState:
    async def run() -> UserState:
        client = aioredis.Redis.from_url(settings.url, decode_responses=True)
        try:
            store = RedisStateReader(client, settings.keys)
            return await store.user_state(user, ReadSpec(50, n_sources, per_item, n_trend))
        finally:
            await client.aclose()

    return asyncio.run(run())


def seed(client: redis.Redis, settings: RedisSettings) -> None:
    keys = settings.keys
    # LPUSH in event order leaves the list newest first, as the consumer keeps it.
    client.lpush(
        keys.hist("u1"),
        entry(1_000, "old"),
        entry(2_000, "c"),
        "not json",  # a corrupt entry is skipped, never fatal
        entry(3_000, "b", None),
        entry(4_000, "a"),
        json.dumps({"item": "x"}),  # wrong shape, skipped too
        entry(5_000, "b"),
    )
    client.hset(keys.co("b"), mapping={"a": 5, "x": 9, "y": 1})
    client.hset(keys.co("a"), mapping={"b": 5, "z": 2})
    client.hset(keys.co("old"), mapping={"never": 100})  # fourth distinct item: beyond n_sources=3
    client.zadd(keys.trend, {"t1": 8.0, "t2": 4.0, "t3": 2.0, "t4": 1.0})


def test_fetch_returns_exactly_what_was_written(
    redis_client: redis.Redis, redis_settings: RedisSettings
) -> None:
    seed(redis_client, redis_settings)
    state = fetch(redis_settings, "u1")
    assert state.history == [(5_000, "b"), (4_000, "a"), (3_000, "b"), (2_000, "c"), (1_000, "old")]
    assert state.skipped == 2
    assert state.sources == ["b", "a", "c"]
    assert state.sources == recent_sources(state.history_items, 3)  # Lua and Python agree
    # Top per_item=2 of each row, best first, with their counts; "c" has no row.
    assert state.co == {"b": [("x", 9.0), ("a", 5.0)], "a": [("b", 5.0), ("z", 2.0)], "c": []}
    assert state.trending == [("t1", 8.0), ("t2", 4.0), ("t3", 2.0)]
    assert state.pop == {}  # no pop set written


def test_fetch_returns_popularity_of_exactly_the_co_row_members(
    redis_client: redis.Redis, redis_settings: RedisSettings
) -> None:
    seed(redis_client, redis_settings)
    # x and a are read from co:b, b and z from co:a (per_item=2); y is beyond the
    # page, t1 is only trending, z has no pop entry: none of those three come back.
    redis_client.zadd(redis_settings.keys.pop, {"x": 40, "a": 7, "b": 3, "y": 11, "t1": 99})
    state = fetch(redis_settings, "u1")
    assert state.pop == {"x": 40.0, "a": 7.0, "b": 3.0}


def test_fetch_bounds_follow_the_arguments(
    redis_client: redis.Redis, redis_settings: RedisSettings
) -> None:
    seed(redis_client, redis_settings)
    state = fetch(redis_settings, "u1", n_sources=1, per_item=1, n_trend=0)
    assert state.sources == ["b"]
    assert state.co == {"b": [("x", 9.0)]}
    assert state.trending == []
    # The whole history is still returned: the blend excludes all of it.
    assert len(state.history) == 5


def test_unknown_user_and_empty_namespace(redis_settings: RedisSettings) -> None:
    state = fetch(redis_settings, "nobody")
    assert state == UserState(history=[], sources=[], co={}, trending=[])


def test_history_parser_skips_what_is_not_an_entry() -> None:
    raw = [
        entry(1, "a"),
        "[]",
        "[1]",
        '[null, "b", null]',
        '[2, "", null]',
        "[3, 4, null]",
        '[true, "c"]',
        "{",
    ]
    history = parse_history(raw)
    assert history.entries == [(1, "a")]
    assert history.skipped == 7


def test_the_row_cut_in_numpy_equals_the_reference_order() -> None:
    """top_of_row (what the API reads rows with) against serving.reader.best, on
    random rows full of ties, as HGETALL hands them over (text)."""
    for seed in range(2000):
        rnd = random.Random(seed)
        n = rnd.randint(0, 30)
        row = {
            f"i{rnd.randint(0, 60)}": float(rnd.choice([1, 2, 3, rnd.randint(1, 9) * 1024]))
            for _ in range(rnd.randint(0, 80))
        }
        want = best(row, n)
        names, counts = top_of_row({k: repr(v) for k, v in row.items()}, n)
        assert names == [m for m, _ in want], seed
        assert counts.tolist() == [c for _, c in want], seed
