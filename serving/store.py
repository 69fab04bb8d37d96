"""The Redis backend of the reader contract (serving.reader).

Reads go to the groups of core/keyspace.py: a user's history in their user
group, co rows (hashes) in row groups, popularity and trending in the item
group. Every read is a pipeline (per node on a Redis Cluster), never a script
that derives keys, so the same code reads one node or a cluster. The API's fast
path (serving.items) reads only the user's history per request and item state
in bulk; ``user_state`` is the reference path that reads everything per request.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib import resources
from typing import Any

import numpy as np
import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from core.keyspace import ROW_REF, Keyspace
from serving.history import History, parse_history
from serving.reader import ReadSpec, StateReader, UserState

log = logging.getLogger(__name__)


Pairs = list[tuple[str, float]]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _list(value: Any) -> list[Any]:
    """A JSON array from the script; cjson writes an empty Lua table as ``{}``."""
    return value if isinstance(value, list) else []


ROW_TOP_LUA = resources.files("serving").joinpath("row_top.lua").read_text(encoding="utf-8")


def _pairs_dict(flat: Any) -> dict[str, str]:
    """[member, count, ...] -> {member: count}."""
    flat = _list(flat)
    return dict(zip(flat[::2], flat[1::2], strict=True))


def top_of_row(raw: dict[Any, Any], n: int) -> tuple[list[str], np.ndarray]:
    """A co row as HGETALL gives it -> its ``n`` best (ids, counts), best first,
    equal counts by member descending: ``serving.reader.best``'s order, with the
    counts parsed and cut in numpy (a row holds up to ~250 members, and the item
    cache re-reads every changed row it uses, each second)."""
    if n <= 0 or not raw:
        return [], np.empty(0, dtype=np.float64)
    names = [_text(k) for k in raw]
    values = np.array([_text(v) for v in raw.values()], dtype=np.float64)
    keep: Sequence[int] = range(len(values))
    if len(values) > n:
        cut = np.partition(values, len(values) - n)[len(values) - n]
        keep = np.flatnonzero(values >= cut).tolist()  # every tie at the cut, for the order below
    top = sorted(((float(values[i]), names[i]) for i in keep), reverse=True)[:n]
    return [m for _, m in top], np.array([c for c, _ in top], dtype=np.float64)


class RedisStateReader(StateReader):
    """The serving side's only Redis reader."""

    def __init__(self, client: aioredis.Redis, keys: Keyspace) -> None:
        self._client = client
        self._keys = keys
        self._cluster = isinstance(client, AsyncRedisCluster)
        self._row_top = client.register_script(ROW_TOP_LUA)

    async def user_state(self, user_id: str, spec: ReadSpec) -> UserState:
        """Everything one recommendation needs, read per request (the reference path)."""
        history = await self.history(user_id, spec.history_len)
        if history.skipped:
            log.warning("user %r: %d history entries did not parse", user_id, history.skipped)
        sources = history.sources(spec.n_sources)
        rows, pop = await self.rows(sources, spec.per_item, with_items=False)
        co = {
            src: list(zip(members, counts.tolist(), strict=True))
            for src, (members, counts) in zip(sources, rows, strict=True)
        }
        return UserState(
            history=history.entries,
            sources=sources,
            co=co,
            trending=await self.trending(spec.n_trend),
            pop=pop,
            skipped=history.skipped,
            negative=history.negative,
            clock=await self.clock(),
        )

    # -- what serving.items reads: the user alone, and item state in bulk ----------
    async def history(self, user_id: str, n: int) -> History:
        """The user's newest ``n`` entries (serving.history)."""
        if n <= 0:
            return History([])
        return parse_history(await self._client.lrange(self._keys.hist(user_id), 0, n - 1))

    async def rows(
        self, items: Sequence[str], per_item: int, *, with_items: bool = True
    ) -> tuple[list[tuple[list[str], np.ndarray]], dict[str, float]]:
        """Each item's ``per_item`` best neighbours (their ids, and their counts as
        an array; equal counts by member descending), and the all-time popularity
        of every neighbour (and, ``with_items``, every item) the popularity set
        holds: two pipelined round trips."""
        if not items:
            return [], {}
        pipe = self._client.pipeline(transaction=False)
        rows = []
        members: dict[str, None] = dict.fromkeys(items) if with_items else {}
        if self._cluster or per_item <= 0:
            # redis-py's cluster pipeline refuses scripts: whole rows, cut here.
            for item in items:
                pipe.hgetall(self._keys.co(item))
            replies = await pipe.execute()
        else:
            # The cut in Redis (row_top.lua): ~50 members travel, not ~250.
            for item in items:
                await self._row_top(keys=[self._keys.co(item)], args=[per_item], client=pipe)
            replies = [_pairs_dict(orjson.loads(r)) for r in await pipe.execute()]
        for raw in replies:
            raw.pop(ROW_REF, None)
            raw.pop(ROW_REF.encode(), None)
            names, counts = top_of_row(raw, per_item)
            members.update(dict.fromkeys(names))
            rows.append((names, counts))
        return rows, await self.popularity_of(list(members))

    async def popularity_of(self, items: Sequence[str]) -> dict[str, float]:
        """The all-time popularity of those ``items`` the popularity set holds."""
        if not items:
            return {}
        scores = await self._client.zmscore(self._keys.pop, list(items))
        return {i: float(sc) for i, sc in zip(items, scores, strict=True) if sc is not None}

    async def clock(self) -> int | None:
        """The stream clock: the largest event time the state holds (None: none yet)."""
        raw = await self._client.hget(self._keys.meta, "clock")
        return None if raw is None else int(float(_text(raw)))

    async def trending(self, n: int) -> Pairs:
        if n <= 0:
            return []
        rows: list[tuple[Any, float]] = await self._client.zrevrange(  # type: ignore[assignment]
            self._keys.trend, 0, n - 1, withscores=True
        )
        return [(_text(m), float(sc)) for m, sc in rows]

    async def changes(
        self, since: dict[str, int] | None
    ) -> tuple[str | None, dict[str, int], list[str]]:
        """The store's marker id (``consumer/continuity.py``; None: no marker), each
        change feed's sequence now (row groups and the item group), and the items
        whose row or popularity changed after ``since`` (None: only the id and the
        sequences)."""
        feeds = self._keys.feeds()
        pipe = self._client.pipeline(transaction=False)
        pipe.hget(self._keys.marker, "id")
        for feed in feeds:
            pipe.get(Keyspace.seq(feed))
        store_id, *seqs_raw = await pipe.execute()
        seqs = {f: int(v) if v is not None else 0 for f, v in zip(feeds, seqs_raw, strict=True)}
        marker = None if store_id is None else _text(store_id)
        if since is None:
            return marker, seqs, []
        pipe = self._client.pipeline(transaction=False)
        asked = [f for f in feeds if seqs[f] != since.get(f, 0)]
        for feed in asked:
            # Up to the sequence read above: what a later write adds is the next round's.
            pipe.zrangebyscore(Keyspace.changed(feed), f"({since.get(feed, 0)}", seqs[feed])
        changed: dict[str, None] = {}
        for found in await pipe.execute() if asked else []:
            changed.update(dict.fromkeys(_text(m) for m in found))
        return marker, seqs, list(changed)

    async def hot_items(self, n: int) -> list[str]:
        if n <= 0:
            return []
        return [_text(m) for m in await self._client.zrevrange(self._keys.trend, 0, n - 1)]

    async def popular(self, n: int) -> list[tuple[str, float]]:
        if n <= 0:
            return []
        rows: list[tuple[Any, float]] = await self._client.zrevrange(  # type: ignore[assignment]
            self._keys.pop, 0, n - 1, withscores=True
        )
        return [(_text(m), float(sc)) for m, sc in rows]

    async def ping(self) -> bool:
        return bool(await self._client.ping())

    async def applied_events(self) -> int:
        """Events the consumer has applied (its stats counter)."""
        raw = await self._client.hget(self._keys.stats, "events")
        return 0 if raw is None else int(raw)
