"""The in-memory backend of the state contract (consumer.state, serving.reader).

It keeps the consumer's keyspace for one namespace in dicts and numpy arrays
and answers reads as Redis would, so the evaluation runs the consumer's ``fold``
and the server's ``blend`` on the state they would see live, without a Redis
round trip per event (the prequential loop reads and writes once per event:
~100k each). tests/test_state_contract.py holds it and the Redis backend to
one suite; the notes below say how each Redis behaviour is mirrored:

- histories: new entries pushed in front, trimmed to the cap; the idle TTL is a
  wall-clock deadline checked on read (``clock``, time.monotonic by default);
- co rows: rebased to the write's landmark, incremented per pair, and, past
  top-M plus the slack, pruned to the top-M, dropping the lowest (count,
  member) first as apply.lua does;
- popularity and trending: ZINCRBY, the trending rescale a multiply of every
  score (ZUNIONSTORE WEIGHTS), both bounded by pop_max;
- offsets: per group, compared and set as apply.lua does;
- reads: rows and heads best first with ties broken by member descending,
  which is ZREVRANGE's order for equal scores (Python compares str by code
  point, Redis compares their UTF-8 bytes: the same order).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from consumer.logic import Entry, rebase
from consumer.state import (
    GroupWrite,
    Offsets,
    StateWriter,
    StoreConfig,
    dump_offsets,
    keep_for_replay,
    rows_at,
)
from core.keyspace import Keyspace
from serving.history import history_of
from serving.reader import ReadSpec, StateReader, UserState, best


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
    """The consumer's keyspace for one namespace, held in dicts and numpy arrays.

    Its groups (``keys``) hold offsets as Redis's do; by default there is one user
    group and one row group, which changes nothing a reader sees and keeps the
    evaluation's one-event polls cheap.
    """

    def __init__(
        self,
        config: StoreConfig,
        *,
        keys: Keyspace | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.keys = keys or Keyspace("memory", user_groups=1, row_groups=1)
        self._clock = clock
        self.hist: dict[str, list[Entry]] = {}
        self._expires: dict[str, float] = {}  # user -> clock() deadline of the history
        self.co: dict[str, dict[str, float]] = {}
        self.co_ref: dict[str, float] = {}  # item -> its row's decay landmark
        self._row_expires: dict[str, float] = {}  # item -> clock() deadline of its row
        # Sorted co rows as last read, dropped when a write touches the row:
        # a source is read far more often than its row changes.
        self._co_sorted: dict[str, list[tuple[str, float]]] = {}
        self.pop = _ScoredSet()
        self.trend = _ScoredSet()
        self.meta: dict[str, int] = {}
        self.offsets: dict[str, dict[str, int]] = {}  # tag -> "topic:partition" -> next
        self.stats: Counter[str] = Counter()

    # -- the writer contract (apply.lua) -------------------------------------------------
    def positions(self, topic: str, partitions: Sequence[int]) -> dict[str, Offsets]:
        out = {}
        for tag in self.keys.tags():
            group = self.offsets.get(tag, {})
            out[tag] = {p: group.get(Keyspace.offset_field(topic, p)) for p in partitions}
        return out

    def histories(self, users: Sequence[str], n: int | None) -> dict[str, list[Entry]]:
        out = {}
        for user in users:
            h = self._history(user)
            if h:
                out[user] = h if n is None else h[:n]
        return out

    def write(self, writes: Sequence[GroupWrite]) -> list[bool]:
        return [self._write(w) for w in writes]

    def _write(self, w: GroupWrite) -> bool:
        cfg = self.config
        group = self.offsets.setdefault(w.tag, {})
        fields = w.offset_fields()
        if any(group.get(name) != expected for name, expected, _ in fields):
            return False
        cap, window = cfg.rules.history_len, cfg.rules.pair_window
        deadline = self._clock() + cfg.idle_ttl_s
        for user, new in w.histories:
            h = new[::-1] + self._history(user)
            self.hist[user] = h[: keep_for_replay(h, w.keep_from, cap, window)]
            self._expires[user] = deadline
        if w.rows:
            self._write_rows(w)
        if w.trend_ref is not None and (w.trend or w.pop):
            self._write_items(w)
        self.stats.update(w.stats)
        if w.clock is not None and w.clock > self.meta.get("clock", 0):
            self.meta["clock"] = w.clock
        for name, _, nxt in fields:
            group[name] = nxt
        return True

    def _write_rows(self, w: GroupWrite) -> None:
        cfg = self.config
        half_life = cfg.co_half_life_ms
        cref = w.co_ref if half_life is not None else None
        top_m, limit = cfg.co_top_m, cfg.co_top_m + cfg.co_slack
        deadline = self._clock() + cfg.row_idle_ttl_s
        for a, incs in w.rows.items():
            self._co_sorted.pop(a, None)
            row = self._row(a)
            self._row_expires[a] = deadline
            if row is None:
                row = self.co[a] = {}
            scale = 1.0
            if cref is not None and half_life is not None:
                rref = self.co_ref.get(a)
                if rref is None:
                    self.co_ref[a] = cref
                elif rref < cref:
                    factor = 2.0 ** ((rref - cref) / half_life)
                    for b in row:
                        row[b] = rebase(row[b], factor)
                    self.co_ref[a] = cref
                elif rref > cref:
                    scale = 2.0 ** ((cref - rref) / half_life)
            for b, n in incs.items():
                row[b] = row.get(b, 0) + (rebase(n, scale) if scale != 1.0 else n)
            if len(row) <= limit:
                continue
            drop = sorted(row.items(), key=lambda kv: (kv[1], kv[0]))[: len(row) - top_m]
            for b, _ in drop:
                del row[b]

    def _write_items(self, w: GroupWrite) -> None:
        cfg = self.config
        assert w.trend_ref is not None
        ref = self.meta.get("trend_ref")
        scale = 1.0
        if ref is not None and ref < w.trend_ref:
            self.trend.scale(2.0 ** ((ref - w.trend_ref) / cfg.half_life_ms))
            ref = None
        if ref is None:
            self.meta["trend_ref"] = w.trend_ref
            self.meta["half_life_ms"] = cfg.half_life_ms
        elif ref > w.trend_ref:
            scale = 2.0 ** ((w.trend_ref - ref) / cfg.half_life_ms)
        for item, n in w.pop.items():
            self.pop.incr(item, float(n))
        for item, v in w.trend.items():
            self.trend.incr(item, v * scale)
        if w.pop:
            self.pop.prune(cfg.pop_max)
            self.trend.prune(cfg.pop_max)

    def dump(self) -> dict[str, Any]:
        cap = self.config.rules.history_len
        rows = {
            item: (self.co_ref.get(item), row) for item in list(self.co) if (row := self._row(item))
        }
        return {
            "hist": {u: list(h[:cap]) for u in list(self.hist) if (h := self._history(u))},
            "co": rows_at(rows, self.meta.get("clock"), self.config.co_half_life_ms),
            "pop": dict(self.pop.top(len(self.pop))),
            "trend": dict(self.trend.top(len(self.trend))),
            "meta": dict(self.meta),
            "offsets": dump_offsets(self.offsets, self.keys),
            "stats": dict(self.stats),
        }

    def history_ttl(self, user: str) -> int | None:
        """Seconds until the user's history expires (None: no history)."""
        if not self._history(user):
            return None
        return int(self._expires[user] - self._clock())

    def _row(self, item: str) -> dict[str, float] | None:
        """The item's co row, unless its idle TTL ran out (then it is gone, as in Redis)."""
        row = self.co.get(item)
        if row is not None and self._clock() >= self._row_expires.get(item, float("inf")):
            del self.co[item]
            self._row_expires.pop(item, None)
            self.co_ref.pop(item, None)
            return None
        return row

    def _history(self, user: str) -> list[Entry]:
        h = self.hist.get(user)
        if h is None:
            return []
        if self._clock() >= self._expires.get(user, float("inf")):
            del self.hist[user]
            del self._expires[user]
            return []
        return h

    # -- the reader contract (serving.store.RedisStateReader) ---------------------------------
    def co_row(self, item: str, n: int) -> list[tuple[str, float]]:
        if n <= 0:
            return []
        cached = self._co_sorted.get(item)
        row = self._row(item)
        if row is None:
            self._co_sorted.pop(item, None)
            return []
        if cached is None or (len(cached) < n and len(cached) < len(row)):
            if not row:
                return []
            cached = self._co_sorted[item] = [(b, float(v)) for b, v in best(row, n)]
        return cached[:n]

    def read_user(self, user: str, spec: ReadSpec) -> UserState:
        """``user_state`` without the coroutine: the evaluation loop's hot path."""
        history = history_of((e.ts, e.item, e.neg) for e in self._history(user)[: spec.history_len])
        sources = history.sources(spec.n_sources)
        co = {s: self.co_row(s, spec.per_item) for s in sources}
        pop_get = self.popularity().get
        pop = {}
        for row in co.values():
            for item, _ in row:
                if item not in pop and (count := pop_get(item)) is not None:
                    pop[item] = count
        return UserState(
            history=history.entries,
            sources=sources,
            co=co,
            trending=self.trend.top(spec.n_trend),
            pop=pop,
            negative=history.negative,
            clock=self.meta.get("clock"),
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
