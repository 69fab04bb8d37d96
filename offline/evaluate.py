"""Prequential next-click evaluation on the serving code path.

Events are taken in timestamp order (file order breaks ties, as
``producer.movielens.load_ratings`` sorts). Events before ``start`` only update
state; from ``start`` on, each event is first predicted for its user and then
applied. State updates are ``consumer.logic.fold`` applied to a
:class:`offline.evalstate.MemoryState` (apply.lua's semantics); ranking is
``serving.blend.blend`` on the :class:`serving.store.UserState` fetch.lua would
return. There is no second scorer: every method compared is a configuration of
that one blend (weights zeroed) over a prior list read from the same state:

- ``popularity``: no personalised terms; the filler is the all-time ``pop`` set;
- ``trending``: the same over the forward-decayed ``trend`` set;
- ``co-occurrence``: co rows of the user's recent items only, trending filler;
- ``embedding``: FAISS neighbours of the recent items only, trending filler;
- ``blend``: everything, with the tuned weights;
- ``blend, no damping``: the same with ``pop_damping`` = 0, listed when the
  blend damps (a server that does not fetch the candidates' popularity ranks so).

Items the user already interacted with (all of them, not just the history the
server reads) are excluded. Users with no history at prediction time are
"cold" and count like everyone else.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from consumer.logic import Entry, SessionRules, fold, session_window
from consumer.store import StoreConfig
from core.events import ClickEvent
from offline.embeddings import build_embeddings
from offline.evalstate import MemoryState
from offline.index import ItemIndex
from serving.blend import BlendConfig, Scored, blend

KS: tuple[int, ...] = (5, 10, 20)
Prior = Literal["trend", "pop"]
UNDAMPED = "blend, no damping"
# Warm-up events are folded in batches of the consumer's default poll size
# (ConsumerSettings.batch_size = 2000), so co rows are pruned to the top-M at
# the same granularity as on the live path; the test part goes one by one.
WARMUP_BATCH = 2000


@dataclass(frozen=True, slots=True)
class Method:
    """One ranking configuration: the blend's weights and which prior list it reads."""

    name: str
    cfg: BlendConfig
    prior: Prior = "trend"

    @property
    def uses_emb(self) -> bool:
        return self.cfg.w_emb > 0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "prior": self.prior, **asdict(self.cfg)}


@dataclass(frozen=True, slots=True)
class ReadSpec:
    """What one request reads, as the server would (ServingSettings mirrors these).

    ``request_k`` and ``history_len`` decide the trending head read
    (``ServingSettings.trend_fetch``: max(trend_candidates, k + history_len)).
    """

    history_len: int = 50
    trend_candidates: int = 100
    request_k: int = 20

    @property
    def n_trend(self) -> int:
        return max(self.trend_candidates, self.request_k + self.history_len)


@dataclass
class Tally:
    """Running sums for one method over one group of predictions."""

    n: int = 0
    hits: dict[int, int] = field(default_factory=lambda: dict.fromkeys(KS, 0))
    rr: dict[int, float] = field(default_factory=lambda: dict.fromkeys(KS, 0.0))
    ndcg: dict[int, float] = field(default_factory=lambda: dict.fromkeys(KS, 0.0))
    fallbacks: int = 0

    def add(self, ranked: Sequence[str], target: str, fallback: bool) -> None:
        self.n += 1
        self.fallbacks += fallback
        try:
            rank = ranked.index(target) + 1
        except ValueError:
            return
        for k in KS:
            if rank <= k:
                self.hits[k] += 1
                self.rr[k] += 1.0 / rank
                # One relevant item: IDCG = 1, DCG = 1 / log2(rank + 1).
                self.ndcg[k] += 1.0 / math.log2(rank + 1)

    def summary(self) -> dict[str, float]:
        n = max(self.n, 1)
        out: dict[str, float] = {"n": self.n}
        for k in KS:
            out[f"hr@{k}"] = self.hits[k] / n
            out[f"mrr@{k}"] = self.rr[k] / n
            out[f"ndcg@{k}"] = self.ndcg[k] / n
        out["fallback"] = self.fallbacks / n
        return out


@dataclass
class MethodResult:
    all: Tally = field(default_factory=Tally)
    cold: Tally = field(default_factory=Tally)
    warm: Tally = field(default_factory=Tally)
    # Warm targets split: continuing the user's session, or the first click of a
    # new one (a return visit). Cold targets (no history) are in neither.
    within_session: Tally = field(default_factory=Tally)
    new_session: Tally = field(default_factory=Tally)
    shown: set[str] = field(default_factory=set)  # distinct items in any top-10

    def add(
        self, ranked: Sequence[str], target: str, fallback: bool, *, cold: bool, new_session: bool
    ) -> None:
        self.all.add(ranked, target, fallback)
        if cold:
            self.cold.add(ranked, target, fallback)
        else:
            self.warm.add(ranked, target, fallback)
            (self.new_session if new_session else self.within_session).add(ranked, target, fallback)
        self.shown.update(ranked[:10])

    def summary(self, catalog: int) -> dict[str, Any]:
        out: dict[str, Any] = self.all.summary()
        out["coverage@10"] = len(self.shown) / max(catalog, 1)
        out["cold"] = self.cold.summary()
        out["warm"] = self.warm.summary()
        out["within_session"] = self.within_session.summary()
        out["new_session"] = self.new_session.summary()
        return out


@dataclass
class SessionSplit:
    """Whether an event starts a new session for its user, by the consumer's own
    rule (``consumer.logic.session_window``; ``rules.pair_window`` ≥ 1, as the
    settings enforce); feed it every event in stream order with :meth:`see`."""

    rules: SessionRules
    last: dict[str, Entry] = field(default_factory=dict)

    def starts_session(self, event: ClickEvent) -> bool:
        prev = self.last.get(event.user_id)
        return prev is None or not session_window((prev,), event.ts, event.session_id, self.rules)

    def see(self, event: ClickEvent) -> None:
        self.last[event.user_id] = Entry(event.ts, event.item_id, event.session_id)


def default_methods(blend_cfg: BlendConfig) -> list[Method]:
    """The references and the blend, all as configurations of one blend."""
    solo = {"w_co": 0.0, "w_emb": 0.0, "w_trend": 0.0, "pop_damping": 0.0}
    base = asdict(blend_cfg)
    methods = [
        Method("popularity", BlendConfig(**{**base, **solo}), prior="pop"),
        Method("trending", BlendConfig(**{**base, **solo}), prior="trend"),
        Method("co-occurrence", BlendConfig(**{**base, **solo, "w_co": 1.0})),
        Method("embedding", BlendConfig(**{**base, **solo, "w_emb": 1.0})),
        Method("blend", blend_cfg),
    ]
    if blend_cfg.pop_damping > 0:
        # What a server that does not pass the candidates' popularity to blend()
        # ranks: the same weights, no damping.
        methods.append(Method(UNDAMPED, BlendConfig(**{**base, "pop_damping": 0.0})))
    return methods


def build_item_index(df: pd.DataFrame, before_ts: int, dim: int = 64, seed: int = 0) -> ItemIndex:
    """The offline job's embeddings from events strictly before ``before_ts`` (no peeking)."""
    part = df[df["ts"] < before_ts]
    item_ids, vectors = build_embeddings(part, dim=dim, seed=seed)
    return ItemIndex.from_vectors(
        item_ids,
        vectors,
        params={"dim": dim, "seed": seed, "interactions": len(part)},
        before_ts=before_ts,
    )


IndexBuilder = Callable[[int], ItemIndex]  # before_ts -> index


@dataclass
class RunResult:
    methods: dict[str, dict[str, Any]]
    predictions: int
    seconds: float
    index_builds: list[int]  # before_ts of every index used


def prequential(
    events: Sequence[ClickEvent],
    start: int,
    stop: int,
    methods: Sequence[Method],
    *,
    rules: SessionRules,
    store: StoreConfig,
    read: ReadSpec,
    index_builder: IndexBuilder | None = None,
    reindex_every: int = 0,
    catalog: int | None = None,
) -> RunResult:
    """Warm up on ``events[:start]``, then predict-then-apply ``events[start:stop]``.

    ``reindex_every`` > 0 rebuilds the embedding index that often (in events)
    during the predicted part, each time from the events before that point.
    """
    began = time.perf_counter()
    state = MemoryState(store)
    seen: dict[str, set[str]] = {}
    sessions = SessionSplit(rules)
    for lo in range(0, start, WARMUP_BATCH):
        batch = events[lo : min(lo + WARMUP_BATCH, start)]
        users = sorted({e.user_id for e in batch})
        state.apply(fold(batch, state.histories(users), rules))
        for e in batch:
            seen.setdefault(e.user_id, set()).add(e.item_id)
            sessions.see(e)

    need_emb = any(m.uses_emb for m in methods) and index_builder is not None
    builds: list[int] = []
    index: ItemIndex | None = None
    n_sources = max(m.cfg.history_items for m in methods)
    per_item = max(m.cfg.candidates_per_item for m in methods)
    kmax = max(KS)
    results = {m.name: MethodResult() for m in methods}
    want_pop = any(m.prior == "pop" for m in methods)
    popularity = state.popularity() if any(m.cfg.pop_damping > 0 for m in methods) else None

    for i in range(start, stop):
        event = events[i]
        if need_emb and (index is None or (reindex_every and (i - start) % reindex_every == 0)):
            assert index_builder is not None
            index = index_builder(event.ts)
            builds.append(event.ts)
        user = event.user_id
        us = state.user_state(
            user,
            history_len=read.history_len,
            n_sources=n_sources,
            per_item=per_item,
            n_trend=read.n_trend,
        )
        cold = not us.history
        emb = (
            index.similar_many(us.sources, per_item)
            if index is not None and need_emb and us.sources
            else {}
        )
        pop = state.popular(read.n_trend) if want_pop else []
        user_seen = seen.get(user, set())
        new_session = sessions.starts_session(event)
        for m in methods:
            ranked: list[Scored] = blend(
                us.sources[: m.cfg.history_items],
                us.co,
                emb if m.uses_emb else {},
                pop if m.prior == "pop" else us.trending,
                user_seen,
                kmax,
                m.cfg,
                popularity,
            )
            ids = [s.item_id for s in ranked]
            fallback = not any(s.personalised for s in ranked)
            results[m.name].add(ids, event.item_id, fallback, cold=cold, new_session=new_session)
        state.apply(fold([event], state.histories([user]), rules))
        seen.setdefault(user, set()).add(event.item_id)
        sessions.see(event)

    n_items = catalog if catalog is not None else len({e.item_id for e in events[:stop]})
    return RunResult(
        methods={name: r.summary(n_items) for name, r in results.items()},
        predictions=stop - start,
        seconds=time.perf_counter() - began,
        index_builds=builds,
    )


def split_points(n: int, valid: float, test: float) -> tuple[int, int]:
    """(validation start, test start) for fractions of ``n`` events: 70/10/20 by default."""
    if not (0 < test < 1 and 0 <= valid < 1 and valid + test < 1):
        raise ValueError(f"bad split: valid={valid}, test={test}")
    test_start = round(n * (1 - test))
    valid_start = round(n * (1 - test - valid))
    return valid_start, test_start


def index_builder_for(df: pd.DataFrame, dim: int = 64) -> IndexBuilder:
    """Builds from ``df`` rows before a time; memoised per cut-off time."""
    cache: dict[int, ItemIndex] = {}

    def build(before_ts: int) -> ItemIndex:
        if before_ts not in cache:
            cache[before_ts] = build_item_index(df, before_ts, dim=dim)
        return cache[before_ts]

    return build


def catalog_size(df: pd.DataFrame) -> int:
    return int(np.unique(df["item_id"].to_numpy()).size)
