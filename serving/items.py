"""Item-level state held in each API worker, within a staleness bound.

A user's history changes with their every click and is read from Redis on
every request. Everything else a recommendation needs (co-occurrence rows,
all-time popularity, the trending head, embedding neighbours) is shared by all
users and moves slowly, so each worker keeps it here, as the arrays
``serving.scoring`` ranks, and refreshes it in bulk:

- every ``item_staleness_s`` seconds (default 1), :meth:`ItemCache.refresh`
  asks Redis which items changed since the last round (the consumer's change
  feeds, one per row group and one for the item group: see
  consumer/apply.lua), re-reads those rows that requests used since the last
  round and the popularities among the changed items, drops the other changed
  rows, and re-reads the trending head: a round costs what the working set
  holds, not what the cache holds;
- a row a request needs and the cache lacks is read in the request, all its
  sources' missing rows in one pipelined read, with the popularity of
  their members;
- at most ``item_cache_rows`` rows are kept (least recently used go first),
  and the whole cache starts afresh if the store's marker id changed (the
  consumer rebuilt a lost state, consumer/continuity.py), if a feed's sequence
  went backwards (a restart or a restore), if it fell further behind than the
  feed remembers,
  or if more than ``item_vocab_max`` item ids were seen (checked at a
  refresh, never while a request holds arrays coded by the old ids).

So an answer reflects the user's own clicks at once, and everyone else's
within the staleness bound plus one round trip. Damping a row by its members'
popularity is a division by each member's damping factor, kept per item code
(``serving.scoring.damping_factor``) and updated with the counts.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from core.keyspace import FEED_KEEP
from offline.index import ItemIndex
from serving.blend import BlendConfig, Candidates
from serving.history import Seen, seen_items
from serving.reader import ReadSpec, StateReader, UserState
from serving.scoring import (
    EMPTY_ROW,
    ArrayCandidates,
    Row,
    TrendPrior,
    Vocab,
    damping_factor,
    trend_prior,
)
from serving.store import Pairs, RedisStateReader

log = logging.getLogger(__name__)

# Reads of a request's missing rows before it gives up (a read is redone only
# when a refresh ran while it was in flight: one more almost always does).
MAX_READS = 4


@dataclass
class CacheStats:
    hits: int = 0  # source rows found in the cache
    misses: int = 0  # ... read in the request
    refreshes: int = 0
    refresh_failures: int = 0
    rows_refreshed: int = 0
    resets: int = 0
    evictions: int = 0


@dataclass(frozen=True, slots=True)
class UserView:
    """What the fast path ranks for one request: the user's part and the item arrays."""

    history: list[tuple[int, str]]
    candidates: ArrayCandidates
    skipped: int = 0  # history entries that did not parse
    negative: frozenset[str] = frozenset()  # negative feedback in the history
    clock: int | None = None  # the stream clock as of the cache's last refresh

    @property
    def sources(self) -> Sequence[str]:
        return self.candidates.sources

    @property
    def history_items(self) -> list[str]:
        return [item for _, item in self.history]

    def seen(self, policy: Seen, gap_ms: int) -> set[str]:
        """What a request excludes under ``policy`` (serving.history.seen_items)."""
        return seen_items(self.history, self.negative, policy, gap_ms)


class ItemCache:
    """Rows, popularity and the trending head for one API worker (one event loop)."""

    def __init__(
        self,
        store: RedisStateReader,
        cfg: BlendConfig,
        *,
        row_len: int,
        trend_len: int,
        max_rows: int,
        max_vocab: int,
    ) -> None:
        self.store = store
        self.cfg = cfg
        self.row_len = row_len  # neighbours kept per row (>= every request's per_item)
        self.trend_len = trend_len  # trending head kept (>= every request's n_trend)
        self.max_rows = max_rows
        self.max_vocab = max_vocab
        self.stats = CacheStats()
        self.refreshed_at: float | None = None  # time.monotonic() of the last good round
        self.clock: int | None = None  # the stream clock, as of the last good round
        self._generation = 0  # refreshes that consumed the change feed
        self.vocab = Vocab()
        self._trending: Row = EMPTY_ROW
        self._clear()

    def _clear(self) -> None:
        # The trending head is kept through a reset (re-coded): until the next
        # good refresh, cold users still get it.
        kept = self._trending.pairs(self.vocab)
        self.vocab = Vocab()
        self._rows: OrderedDict[str, Row] = OrderedDict()  # least recently used first
        self._used: set[str] = set()  # rows read by a request since the last refresh
        self._pop: dict[str, float] = {}
        # Each code's damping factor (serving.scoring.damping_factor), 1 = none.
        self._damping = np.ones(1024, dtype=np.float64)
        self._trending = Row.of(self.vocab, kept)
        self._priors: dict[int, TrendPrior] = {}
        # Per index version: each source's embedding ("emb") and content neighbours.
        self._near: dict[str, dict[str, Row]] = {"emb": {}, "content": {}}
        self._near_version: str | None = None
        self.seq: dict[str, int] | None = None  # each change feed's sequence, as last read
        self.store_id: str | None = None  # the store's marker id, as last read

    # -- refresh -------------------------------------------------------------------------
    async def refresh(self) -> None:
        """One round: what changed since the last one, re-read; the trending head."""
        if len(self.vocab) > self.max_vocab:
            # Here, between requests' reads, never inside one: a request holds
            # arrays coded by the vocabulary it started with.
            log.info("item cache starts afresh: more than %d item ids seen", self.max_vocab)
            self.stats.resets += 1
            self._clear()
        store_id, seqs, changed = await self.store.changes(self.seq)
        # A request whose row read was in flight across this point may hold a row
        # older than a change this round now consumes: it reads again (rows()).
        self._generation += 1
        used, self._used = self._used, set()
        replaced = self.seq is not None and store_id != self.store_id
        back = self.seq is not None and any(seqs[f] < s for f, s in self.seq.items())
        behind = self.seq is not None and any(
            seqs[f] - self.seq.get(f, 0) > FEED_KEEP for f in seqs
        )
        if replaced or back or behind:
            log.warning(
                "item cache starts afresh: %s",
                "the store's marker changed: its state was rebuilt"
                if replaced
                else "a change feed went back: Redis restarted or restored"
                if back
                else "a change feed fell behind",
            )
            self.stats.resets += 1
            self._clear()
        # Changed rows that requests used since the last round are re-read; the
        # others are dropped (a request that needs one again reads it then), so
        # a round costs what the working set holds, not what the cache does.
        rows = [i for i in changed if i in used and i in self._rows]
        for item in changed:
            if item not in used:
                self._rows.pop(item, None)
        pops = [i for i in changed if i in self._pop and i not in self._rows]
        fresh_rows, row_pop = await self.store.rows(rows, self.row_len)
        fresh_pop = await self.store.popularity_of(pops)
        trending = await self.store.trending(self.trend_len)
        clock = await self.store.clock()
        for item, (members, counts) in zip(rows, fresh_rows, strict=True):
            self.put(item, members, counts)
        updates = {**row_pop, **fresh_pop}
        # An asked item missing from the answer has left the popularity set.
        # (Members dropped when the consumer prunes the popularity set to pop_max
        # are not in the feed: their last count stays until their row is re-read.)
        gone = [i for i in (*rows, *pops) if i not in updates and i in self._pop]
        self._update_pop(updates, gone)
        self._trending = Row.of(self.vocab, trending)
        self._priors = {}
        self.clock = clock
        self.seq = seqs
        self.store_id = store_id
        self.refreshed_at = time.monotonic()
        self.stats.refreshes += 1
        self.stats.rows_refreshed += len(rows)
        self._bound()

    def _update_pop(self, counts: dict[str, float], gone: Sequence[str] = ()) -> None:
        """New popularity counts, and their damping factors."""
        pop = self._pop
        pop.update(counts)
        for item in gone:
            del pop[item]
        beta = self.cfg.pop_damping
        if beta <= 0:
            return
        vocab = self.vocab
        codes = vocab.codes([*counts, *gone])
        factors = [damping_factor(c, beta) for c in counts.values()] + [1.0] * len(gone)
        damping = self._damping
        if len(codes) and int(codes.max()) >= len(damping):
            damping = np.ones(2 * (int(codes.max()) + 1), dtype=np.float64)
            damping[: len(self._damping)] = self._damping
            self._damping = damping
        damping[codes] = factors

    @property
    def rows_held(self) -> int:
        return len(self._rows)

    def staleness_s(self) -> float | None:
        """Seconds since the last good refresh (None: never refreshed)."""
        return None if self.refreshed_at is None else time.monotonic() - self.refreshed_at

    # -- what requests read ----------------------------------------------------------------
    async def rows(self, items: Sequence[str]) -> list[Row]:
        """The co-occurrence rows of ``items``; those the cache lacks are read in one
        round trip. A refresh may drop rows while that read is in flight, so the
        rows are collected after the last read, with no await in between."""
        missing = [i for i in items if i not in self._rows]
        self.stats.hits += len(items) - len(missing)
        self.stats.misses += len(missing)
        for _ in range(MAX_READS):
            if not missing:
                break
            generation = self._generation
            fetched, pop = await self.store.rows(missing, self.row_len)
            if self._generation != generation:
                # A refresh consumed the change feed while this read was in
                # flight: what it read may predate a change that round skipped
                # (the row was not cached yet). Read it again, after that round.
                missing = [
                    *missing,
                    *(i for i in items if i not in self._rows and i not in missing),
                ]
                continue
            for item, (members, counts) in zip(missing, fetched, strict=True):
                self.put(item, members, counts)
            self._update_pop(pop)
            missing = [i for i in items if i not in self._rows]
        if missing:
            raise RuntimeError(f"rows of {missing} not read after {MAX_READS} tries")
        out = []
        for item in items:
            self._rows.move_to_end(item)
            self._used.add(item)
            out.append(self._rows[item])
        self._bound(keep=len(items))
        return out

    def put(self, item: str, members: Sequence[str], counts: np.ndarray) -> None:
        """Hold the item's row (its neighbours best first, and their counts)."""
        self._rows[item] = Row(self.vocab.codes(members), counts)

    def put_popularity(self, counts: dict[str, float]) -> None:
        self._update_pop(counts)

    def damping(self) -> np.ndarray | None:
        """Each code's damping factor, covering every code assigned (None: β = 0)."""
        if self.cfg.pop_damping <= 0:
            return None
        if len(self._damping) < len(self.vocab):
            grown = np.ones(2 * len(self.vocab), dtype=np.float64)
            grown[: len(self._damping)] = self._damping
            self._damping = grown
        return self._damping

    def popularity(self, item: str) -> float | None:
        return self._pop.get(item)

    def trending(self, n: int) -> TrendPrior:
        """The first ``n`` of the trending head, with each listed item's prior."""
        prior = self._priors.get(n)
        if prior is None:
            head = self._trending
            row = Row(head.codes[:n], head.values[:n])
            prior = self._priors[n] = trend_prior(row, self.cfg.w_trend, self.vocab)
        return prior

    def trending_pairs(self, n: int) -> Pairs:
        return self._trending.pairs(self.vocab)[:n]

    def lists(self, view: UserView, per_item: int) -> Candidates:
        """A view's arrays as the reference blend's lists (:func:`as_lists`)."""
        return as_lists(view.candidates, self.vocab, self.popularity, per_item)

    def emb(self, index: ItemIndex | None, sources: Sequence[str]) -> list[Row]:
        """Embedding neighbours of each source as arrays (per index version)."""
        if index is None:
            return [EMPTY_ROW] * len(sources)
        return self._neighbours("emb", index, sources, index.similar_many)

    def content(self, index: ItemIndex | None, sources: Sequence[str]) -> list[Row]:
        """Content neighbours among cold items of each source (offline.content), as
        arrays; none while the blend gives content no weight."""
        if index is None or self.cfg.w_content <= 0:
            return []
        near = index.content.similar_many
        return self._neighbours("content", index, sources, lambda s, n: near(s, n, cold_only=True))

    def _neighbours(
        self,
        kind: str,
        index: ItemIndex,
        sources: Sequence[str],
        fetch: Callable[[list[str], int], Mapping[str, Pairs]],
    ) -> list[Row]:
        if index.version != self._near_version:
            self._near = {"emb": {}, "content": {}}
            self._near_version = index.version
        held = self._near[kind]
        missing = [s for s in sources if s not in held]
        if missing:
            found = fetch(missing, self.cfg.candidates_per_item)
            for src in missing:
                held[src] = Row.of(self.vocab, found.get(src, []))
        out = [held[s] for s in sources]
        self._bound()
        return out

    def _bound(self, keep: int = 0) -> None:
        """Evict least recently used rows beyond max_rows, never the ``keep`` newest."""
        while len(self._rows) > max(self.max_rows, keep):
            self._rows.popitem(last=False)
            self.stats.evictions += 1
        for held in self._near.values():
            if len(held) > self.max_rows:
                held.clear()


def as_lists(
    cands: ArrayCandidates,
    vocab: Vocab,
    popularity: Callable[[str], float | None],
    per_item: int,
) -> Candidates:
    """Prepared arrays as the reference blend's lists (``serving.blend.Candidates``):
    every row's first ``per_item`` neighbours, the popularity of the co rows'
    members where known, the trending head."""
    co = {s: row.pairs(vocab)[:per_item] for s, row in zip(cands.sources, cands.co, strict=True)}
    pop = {}
    for pairs in co.values():
        for member, _ in pairs:
            if (count := popularity(member)) is not None:
                pop[member] = count

    def near(rows: Sequence[Row]) -> dict[str, list[tuple[str, float]]]:
        pairs = zip(cands.sources, rows, strict=False)
        return {s: row.pairs(vocab)[:per_item] for s, row in pairs if len(row)}

    trending = cands.trending.row.pairs(vocab)
    return Candidates(cands.sources, co, near(cands.emb), trending, pop, near(cands.content))


class CachedStateReader(StateReader):
    """The reader contract over Redis (the user) and an :class:`ItemCache` (items)."""

    def __init__(self, store: RedisStateReader, items: ItemCache) -> None:
        self.store = store
        self.items = items

    async def view(self, user_id: str, spec: ReadSpec, index: ItemIndex | None) -> UserView:
        """The fast path's input: the user's history from Redis, item arrays from the cache."""
        history = await self.store.history(user_id, spec.history_len)
        sources = history.sources(spec.n_sources)
        items = self.items
        cands = ArrayCandidates(
            sources=sources,
            co=await items.rows(sources),
            emb=items.emb(index, sources),
            content=items.content(index, sources),
            trending=items.trending(spec.n_trend),
            damping=items.damping(),
        )
        return UserView(history.entries, cands, history.skipped, history.negative, self.items.clock)

    async def user_state(self, user_id: str, spec: ReadSpec) -> UserState:
        """The same reads as :meth:`view`, as the contract's lists."""
        view = await self.view(user_id, spec, None)
        lists = self.items.lists(view, spec.per_item)
        return UserState(
            view.history,
            list(lists.sources),
            {s: list(row) for s, row in lists.co.items()},
            list(lists.trending),
            dict(lists.popularity or {}),
            view.skipped,
            view.negative,
            view.clock,
        )

    async def hot_items(self, n: int) -> list[str]:
        return await self.store.hot_items(n)

    async def popular(self, n: int) -> list[tuple[str, float]]:
        return await self.store.popular(n)

    async def ping(self) -> bool:
        return await self.store.ping()
