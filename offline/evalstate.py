"""An in-memory twin of the consumer's Redis state, for the offline evaluation.

It applies :class:`consumer.logic.StateDelta` values with the semantics of
``consumer/apply.lua`` and answers reads with the semantics of
``serving/fetch.lua``, so the evaluation runs the consumer's ``fold`` and the
server's ``blend`` on the state they would see live, without a Redis round trip
per event (the prequential loop reads and writes once per event: ~100k each).

What is mirrored, and how:

- histories: the delta's history per touched user (apply.lua pushes the new
  entries and trims to the cap, which leaves the same list);
- co rows: ZINCRBY per pair, then pruned to the top-M after each applied delta,
  dropping the lowest (score, member) first as ZREMRANGEBYRANK 0..card-M-1 does;
- popularity and trending: ZINCRBY, forward decay against a landmark moved by
  ``consumer.logic.trend_landmark`` (the same rescale rule), bounded by pop_max;
- reads: co rows and heads best first with ties broken by member descending,
  which is ZREVRANGE's order for equal scores.

The idle TTL of histories is wall-clock (a memory bound, not state semantics,
see core/keyspace.py), so it has no counterpart here.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from consumer.logic import Entry, StateDelta, trend_landmark, trend_weights
from consumer.store import StoreConfig
from serving.blend import recent_sources
from serving.store import UserState


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


class MemoryState:
    """The consumer's keyspace for one namespace, held in dicts and numpy arrays."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.hist: dict[str, list[Entry]] = {}
        self.co: dict[str, dict[str, float]] = {}
        # Sorted co rows as last read, dropped when a delta touches the row:
        # a source is read far more often than its row changes.
        self._co_sorted: dict[str, list[tuple[str, float]]] = {}
        self.pop = _ScoredSet()
        self.trend = _ScoredSet()
        self.trend_ref: int | None = None
        self.clock: int | None = None
        self.events = 0

    # -- writes (apply.lua) -------------------------------------------------------
    def apply(self, delta: StateDelta) -> None:
        cfg = self.config
        for user, entries in delta.histories.items():
            self.hist[user] = list(entries)
        touched: set[str] = set()
        for (a, b), n in delta.co.items():
            row = self.co.get(a)
            if row is None:
                row = self.co[a] = {}
            row[b] = row.get(b, 0.0) + n
            touched.add(a)
        for a in touched:
            self._co_sorted.pop(a, None)
        top_m = cfg.co_top_m
        for a in touched:
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
        if delta.max_ts is not None and delta.events:
            new_ref, factor = trend_landmark(self.trend_ref, delta.max_ts, cfg.half_life_ms)
            if factor is not None:
                self.trend.scale(factor)
            self.trend_ref = new_ref
            for item, w in trend_weights(delta.trend_ts, new_ref, cfg.half_life_ms).items():
                self.trend.incr(item, w)
        for item, n in delta.pop.items():
            self.pop.incr(item, float(n))
        if delta.pop:
            self.pop.prune(cfg.pop_max)
            self.trend.prune(cfg.pop_max)
        if delta.max_ts is not None and (self.clock is None or delta.max_ts > self.clock):
            self.clock = delta.max_ts
        self.events += delta.events

    # -- reads (fetch.lua, serving.store.parse_state) ------------------------------
    def histories(self, users: Sequence[str]) -> Mapping[str, list[Entry]]:
        """What the worker's snapshot would read for these users."""
        return {u: self.hist[u] for u in users if u in self.hist}

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

    def user_state(
        self, user: str, *, history_len: int, n_sources: int, per_item: int, n_trend: int
    ) -> UserState:
        """The UserState serving.store.StateStore.fetch would build from Redis."""
        history = [(e.ts, e.item) for e in self.hist.get(user, [])[:history_len]]
        sources = recent_sources([item for _, item in history], n_sources)
        return UserState(
            history=history,
            sources=sources,
            co={s: self.co_row(s, per_item) for s in sources},
            trending=self.trend.top(n_trend),
            trend_ref=None if self.trend_ref is None else float(self.trend_ref),
            clock=self.clock,
            half_life_ms=float(self.config.half_life_ms),
        )

    def popularity(self) -> ScoreView:
        """Every item's all-time click count ({ns}:pop), as ZMSCORE would read it."""
        return ScoreView(self.pop)

    def popular(self, n: int) -> list[tuple[str, float]]:
        """The all-time popularity head ({ns}:pop), best first."""
        return self.pop.top(n)
