"""The in-memory backend of the state contract (consumer.state, serving.reader).

It keeps the consumer's keyspace for one namespace in dicts and numpy arrays
and answers reads as Redis would, so the evaluation runs the consumer's ``fold``
and the server's ``blend`` on the state they would see live, without a Redis
round trip per event (the prequential loop reads and writes once per event:
~100k each). tests/test_state_contract.py holds it and the Redis backend to
one suite; the notes below say how each Redis behaviour is mirrored:

- histories: new entries pushed in front, trimmed to the cap; the idle TTL is a
  wall-clock deadline checked on read (``clock``, time.monotonic by default);
- co rows: ZINCRBY per pair, then pruned to the top-M after each write,
  dropping the lowest (score, member) first as ZREMRANGEBYRANK 0..card-M-1 does;
- popularity and trending: ZINCRBY, the trending rescale a multiply of every
  score (ZUNIONSTORE WEIGHTS), both bounded by pop_max;
- reads: rows and heads best first with ties broken by member descending,
  which is ZREVRANGE's order for equal scores (Python compares str by code
  point, Redis compares their UTF-8 bytes: the same order).
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from consumer.logic import Entry
from consumer.state import PartitionWrite, Snapshot, StateWriter, StoreConfig
from core.keyspace import Keyspace
from serving.blend import recent_sources
from serving.reader import ReadSpec, StateReader, UserState


class _ScoredSet:
    """A ZSET over a numpy vector: item codes assigned on first sight, O(n) top-n."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.names: list[str] = []
        self.scores = np.zeros(1024, dtype=np.float64)
        self.present = np.zeros(1024, dtype=bool)

    def incr(self, item: str, by: float) -> None:
        code = self.codes.get(item)
        if code is None:
            code = len(self.names)
            self.codes[item] = code
            self.names.append(item)
            if code >= len(self.scores):
                grow = len(self.scores)
                self.scores = np.concatenate([self.scores, np.zeros(grow)])
                self.present = np.concatenate([self.present, np.zeros(grow, dtype=bool)])
        self.scores[code] += by
        self.present[code] = True

    def __len__(self) -> int:
        return int(self.present.sum())

    def scale(self, factor: float) -> None:
        self.scores *= factor

    def prune(self, keep: int) -> None:
        """Drop all but the ``keep`` best, lowest (score, member) first, like apply.lua."""
        n = len(self)
        if n <= keep:
            return
        live = np.flatnonzero(self.present)
        order = sorted(live.tolist(), key=lambda c: (self.scores[c], self.names[c]))
        for c in order[: n - keep]:
            self.present[c] = False
            self.scores[c] = 0.0

    def top(self, n: int) -> list[tuple[str, float]]:
        """ZREVRANGE 0 n-1 WITHSCORES: best first, equal scores by member descending."""
        if n <= 0:
            return []
        live = np.flatnonzero(self.present[: len(self.names)])
        if len(live) == 0:
            return []
        vals = self.scores[live]
        if len(live) > n:
            # Everything tied with the n-th best must be in the pool, so that
            # the member tie-break below sees the whole tie.
            cut = np.partition(vals, len(vals) - n)[len(vals) - n]
            live = live[vals >= cut]
        names = self.names
        pool = [(float(self.scores[c]), names[c]) for c in live.tolist()]
        pool.sort(reverse=True)
        return [(name, score) for score, name in pool[:n]]


class ScoreView(Mapping[str, float]):
    """Read-only item -> score view of a :class:`_ScoredSet` (ZSCORE / ZMSCORE)."""

    def __init__(self, scored: _ScoredSet) -> None:
        self._set = scored

    def __getitem__(self, item: str) -> float:
        code = self._set.codes.get(item)
        if code is None or not self._set.present[code]:
            raise KeyError(item)
        return float(self._set.scores[code])

    def get(self, item: str, default: float | None = None) -> float | None:  # type: ignore[override]
        code = self._set.codes.get(item)
        if code is None or not self._set.present[code]:
            return default
        return float(self._set.scores[code])

    def __iter__(self) -> Iterator[str]:
        present = self._set.present
        return (name for code, name in enumerate(self._set.names) if present[code])

    def __len__(self) -> int:
        return len(self._set)


class MemoryState(StateWriter, StateReader):
    """The consumer's keyspace for one namespace, held in dicts and numpy arrays."""

    def __init__(self, config: StoreConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self.hist: dict[str, list[Entry]] = {}
        self._expires: dict[str, float] = {}  # user -> clock() deadline of the history
        self.co: dict[str, dict[str, float]] = {}
        # Sorted co rows as last read, dropped when a write touches the row:
        # a source is read far more often than its row changes.
        self._co_sorted: dict[str, list[tuple[str, float]]] = {}
        self.pop = _ScoredSet()
        self.trend = _ScoredSet()
        self.meta: dict[str, int] = {}
        self.offsets: dict[str, int] = {}
        self.stats: Counter[str] = Counter()

    # -- the writer contract (apply.lua) -------------------------------------------------
    def stored_offsets(self, topic: str, partitions: Iterable[int]) -> dict[int, int | None]:
        return {p: self.offsets.get(Keyspace.offset_field(topic, p)) for p in partitions}

    def snapshot(self, topic: str, partitions: Sequence[int], users: Sequence[str]) -> Snapshot:
        window = self.config.rules.pair_window
        histories = {}
        for user in users:
            h = self._history(user)
            if h:
                histories[user] = h[:window]
        return Snapshot(
            histories=histories,
            offsets=self.stored_offsets(topic, partitions),
            trend_ref=self.meta.get("trend_ref"),
        )

    def write(self, writes: Sequence[PartitionWrite]) -> list[bool]:
        return [self._write(w) for w in writes]

    def _write(self, w: PartitionWrite) -> bool:
        cfg = self.config
        field = Keyspace.offset_field(w.topic, w.partition)
        if self.offsets.get(field) != w.expected_offset:
            return False
        mark = w.landmark
        if mark.new is not None:
            ref = self.meta.get("trend_ref")
            if ref == mark.expected:
                if mark.factor is not None:
                    self.trend.scale(mark.factor)
                self.meta["trend_ref"] = mark.new
                self.meta["half_life_ms"] = cfg.half_life_ms
            elif ref != mark.new:
                return False
        delta = w.delta
        cap = cfg.rules.history_len
        deadline = self._clock() + cfg.idle_ttl_s
        for user, new in w.new_entries():
            self.hist[user] = (new[::-1] + self._history(user))[:cap]
            self._expires[user] = deadline
        touched: set[str] = set()
        for (a, b), n in delta.co.items():
            row = self.co.get(a)
            if row is None:
                row = self.co[a] = {}
            row[b] = row.get(b, 0.0) + n
            touched.add(a)
        top_m = cfg.co_top_m
        for a in touched:
            self._co_sorted.pop(a, None)
            row = self.co[a]
            excess = len(row) - top_m
            if excess <= 0:
                continue
            if excess <= 4:
                # The common case once a row is full: one or two new neighbours.
                # A few min() passes cost far less than sorting 200+ entries.
                for _ in range(excess):
                    del row[min(row.items(), key=lambda kv: (kv[1], kv[0]))[0]]
            else:
                drop = sorted(row.items(), key=lambda kv: (kv[1], kv[0]))[:excess]
                for b, _ in drop:
                    del row[b]
        for item, n in delta.pop.items():
            self.pop.incr(item, float(n))
        for item, v in w.trend_increments(cfg.half_life_ms).items():
            self.trend.incr(item, v)
        self.stats.update(w.stats())
        if delta.pop:
            self.pop.prune(cfg.pop_max)
            self.trend.prune(cfg.pop_max)
        if delta.max_ts is not None and delta.max_ts > self.meta.get("clock", 0):
            self.meta["clock"] = delta.max_ts
        self.offsets[field] = w.next_offset
        return True

    def dump(self) -> dict[str, Any]:
        return {
            "hist": {u: list(h) for u in list(self.hist) if (h := self._history(u))},
            "co": {item: dict(row) for item, row in self.co.items() if row},
            "pop": dict(self.pop.top(len(self.pop))),
            "trend": dict(self.trend.top(len(self.trend))),
            "meta": dict(self.meta),
            "offsets": dict(self.offsets),
            "stats": dict(self.stats),
        }

    def history_ttl(self, user: str) -> int | None:
        """Seconds until the user's history expires (None: no history)."""
        if not self._history(user):
            return None
        return int(self._expires[user] - self._clock())

    def _history(self, user: str) -> list[Entry]:
        h = self.hist.get(user)
        if h is None:
            return []
        if self._clock() >= self._expires.get(user, float("inf")):
            del self.hist[user]
            del self._expires[user]
            return []
        return h

    # -- the reader contract (fetch.lua, serving.store.parse_state) ------------------------
    def co_row(self, item: str, n: int) -> list[tuple[str, float]]:
        if n <= 0:
            return []
        cached = self._co_sorted.get(item)
        if cached is None or (len(cached) < n and len(cached) < len(self.co.get(item, ()))):
            row = self.co.get(item)
            if not row:
                return []
            best = heapq.nlargest(n, row.items(), key=lambda kv: (kv[1], kv[0]))
            cached = self._co_sorted[item] = [(b, float(v)) for b, v in best]
        return cached[:n]

    def read_user(self, user: str, spec: ReadSpec) -> UserState:
        """``user_state`` without the coroutine: the evaluation loop's hot path."""
        history = [(e.ts, e.item) for e in self._history(user)[: spec.history_len]]
        sources = recent_sources([item for _, item in history], spec.n_sources)
        co = {s: self.co_row(s, spec.per_item) for s in sources}
        pop_get = self.popularity().get
        pop = {}
        for row in co.values():
            for item, _ in row:
                if item not in pop and (count := pop_get(item)) is not None:
                    pop[item] = count
        return UserState(
            history=history,
            sources=sources,
            co=co,
            trending=self.trend.top(spec.n_trend),
            pop=pop,
        )

    async def user_state(self, user_id: str, spec: ReadSpec) -> UserState:
        return self.read_user(user_id, spec)

    async def hot_items(self, n: int) -> list[str]:
        return [item for item, _ in self.trend.top(n)]

    async def popular(self, n: int) -> list[tuple[str, float]]:
        return self.popular_head(n)

    async def ping(self) -> bool:
        return True

    def popularity(self) -> ScoreView:
        """Every item's all-time click count ({ns}:pop), as ZMSCORE would read it."""
        return ScoreView(self.pop)

    def popular_head(self, n: int) -> list[tuple[str, float]]:
        """The all-time popularity head ({ns}:pop), best first."""
        return self.pop.top(n)
