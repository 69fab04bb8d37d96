"""Prequential next-click evaluation on the serving code path.

Events are taken in timestamp order (file order breaks ties, as
``producer.movielens.load_ratings`` sorts). Events before ``start`` only update
state; from ``start`` on, each event is first predicted for its user and then
applied. State updates go through the consumer's own apply loop
(``consumer.state.StateWriter.apply``: ``fold``, the landmark, the
compare-and-set) into :class:`evaluation.memory.MemoryState`, the in-memory
backend of the state contract; ranking is ``serving.blend.blend`` on the
:class:`serving.reader.UserState` that backend reads, as the API does from Redis.
There is no second scorer: every method compared is a configuration of that
one blend (weights zeroed) over a prior list read from the same state:

- ``popularity``: no personalised terms; the filler is the all-time ``pop`` set;
- ``trending``: the same over the forward-decayed ``trend`` set;
- ``co-occurrence``: co rows of the user's recent items only, trending filler;
- ``embedding``: FAISS neighbours of the recent items only, trending filler;
- ``blend``: everything, with the tuned weights;
- ``blend, no damping``: the same with ``pop_damping`` = 0, listed when the
  blend damps (a server that does not fetch the candidates' popularity ranks so).
- ``blend, no content``: the same with ``w_content`` = 0, listed when the blend
  has a content term (its content neighbours come from the setup's catalogue,
  cold = not in the embedding index in use).

Items the user already interacted with (all of them, not just the history the
server reads) are excluded. Users with no history at prediction time are
"cold" and count like everyone else.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pandas as pd

from consumer.logic import SessionRules
from consumer.settings import ConsumerSettings
from consumer.state import PartitionBatch, StoreConfig
from core.catalogue import Catalogue
from core.events import ClickEvent
from evaluation.bootstrap import per_user_intervals
from evaluation.memory import MemoryState
from evaluation.metrics import KS, ItemStats, MethodResult, SessionSplit
from offline.content import ContentIndex, content_features
from offline.index import ItemIndex
from offline.job import OfflineSettings, item_index
from serving.blend import BlendConfig, Candidates, Scored, blend
from serving.ranker import Moment, Ranker
from serving.reader import ReadSpec
from serving.settings import ServingSettings

Prior = Literal["trend", "pop"]
UNDAMPED = "blend, no damping"
NO_CONTENT = "blend, no content"
# The one partition the in-process stream is applied as (offsets = event indices).
TOPIC = "evaluate"


@dataclass(frozen=True, slots=True)
class Method:
    """One ranking configuration: the blend's weights and which prior list it reads."""

    name: str
    cfg: BlendConfig
    prior: Prior = "trend"
    # A learned ranker re-ordering this blend's pool (serving.ranker); None: the blend's order.
    ranker: Ranker | None = None

    @property
    def uses_emb(self) -> bool:
        return self.cfg.w_emb > 0

    @property
    def uses_content(self) -> bool:
        return self.cfg.w_content > 0

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "prior": self.prior, **self.cfg.model_dump()}
        if self.ranker is not None:
            out["ranker"] = self.ranker.describe()
        return out


IndexBuilder = Callable[[int], ItemIndex]  # before_ts -> index
# Called once per predicted event, before it is applied, with everything the
# blend could use (all signals, the trending prior), the moment, and the items
# the user has interacted with: what evaluation.ranker collects training rows from.
Observer = Callable[[ClickEvent, Candidates, Moment, set[str]], None]


@dataclass(frozen=True)
class EvalSetup:
    """What a run is configured by. The consumer's and the server's settings are
    the one source: the in-process run derives its state model and reads from
    them, the live run (streamrec.local.live_eval) the child processes' environment.
    """

    consumer: ConsumerSettings = field(default_factory=ConsumerSettings)
    serving: ServingSettings = field(default_factory=ServingSettings)
    offline: OfflineSettings = field(default_factory=OfflineSettings)
    # Items asked for per prediction: the largest k measured. It also sets the
    # trending head read (ServingSettings.read_spec), as it would on the server.
    request_k: int = max(KS)
    index_builder: IndexBuilder | None = None
    # > 0: rebuild the embedding index this often (in events) during the predicted part.
    reindex_every: int = 0
    catalog: int | None = None  # item count for coverage (default: items seen)
    # Each other method's HR@10 and NDCG@10 get a paired per-user bootstrap 95 %
    # interval of their difference to this one (evaluation/bootstrap.py).
    baseline: str = "co-occurrence"
    # What is known about the items: categories for intra-list diversity, the
    # content term's categories and tags (offline.content), and the live run's
    # index catalogue. Empty: neither diversity nor content is measured.
    catalogue: Catalogue = field(default_factory=Catalogue)

    @property
    def store(self) -> StoreConfig:
        return self.consumer.state

    @property
    def rules(self) -> SessionRules:
        return self.consumer.state.rules

    def read(self, methods: Sequence[Method]) -> ReadSpec:
        """What each prediction reads: the server's read for ``request_k`` items,
        with as many sources and neighbours as the most demanding method uses."""
        spec = self.serving.read_spec(self.request_k)
        return replace(
            spec,
            n_sources=max(m.cfg.history_items for m in methods),
            per_item=max(m.cfg.candidates_per_item for m in methods),
        )

    def with_rules(self, rules: SessionRules) -> EvalSetup:
        state = self.store.model_copy(update={"rules": rules})
        return replace(self, consumer=self.consumer.model_copy(update={"state": state}))

    def with_blend(self, cfg: BlendConfig) -> EvalSetup:
        return replace(self, serving=self.serving.model_copy(update={"blend": cfg}))

    def describe(self) -> dict[str, Any]:
        """The settings block of a report."""
        store = self.store.model_dump()
        return {
            "rules": store.pop("rules"),
            "store": store,
            "blend": self.serving.blend.model_dump(),
            "read": {
                "history_len": self.serving.history_len,
                "trend_candidates": self.serving.trend_candidates,
                "request_k": self.request_k,
            },
            "reindex_every": self.reindex_every,
            "dim": self.offline.dim,
        }


def default_methods(blend_cfg: BlendConfig) -> list[Method]:
    """The references and the blend, all as configurations of one blend."""
    solo = {"w_co": 0.0, "w_emb": 0.0, "w_content": 0.0, "w_trend": 0.0, "pop_damping": 0.0}
    base = blend_cfg.model_dump()
    methods = [
        Method("popularity", BlendConfig(**{**base, **solo}), prior="pop"),
        Method("trending", BlendConfig(**{**base, **solo}), prior="trend"),
        Method("co-occurrence", BlendConfig(**{**base, **solo, "w_co": 1.0})),
        Method("embedding", BlendConfig(**{**base, **solo, "w_emb": 1.0})),
        Method("blend", blend_cfg),
    ]
    if blend_cfg.w_content > 0:
        # The content term's own contribution, measured against the same blend without it.
        methods.append(Method(NO_CONTENT, BlendConfig(**{**base, "w_content": 0.0})))
    if blend_cfg.pop_damping > 0:
        # What a server that does not pass the candidates' popularity to blend()
        # ranks: the same weights, no damping.
        methods.append(Method(UNDAMPED, BlendConfig(**{**base, "pop_damping": 0.0})))
    return methods


BOOTSTRAP_METRICS = ("hr@10", "ndcg@10")


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
    setup: EvalSetup,
    observe: Observer | None = None,
) -> RunResult:
    """Warm up on ``events[:start]``, then predict-then-apply ``events[start:stop]``."""
    began = time.perf_counter()
    state = MemoryState(setup.store)
    seen: dict[str, set[str]] = {}
    sessions = SessionSplit(setup.rules)
    # Warm-up events are applied in polls of the consumer's batch size, so co rows
    # are pruned to the top-M at the same granularity as on the live path; the
    # predicted part goes one event at a time.
    step = setup.consumer.batch_size
    for lo in range(0, start, step):
        hi = min(lo + step, start)
        state.apply(TOPIC, [PartitionBatch(0, lo, hi, list(enumerate(events[lo:hi], lo)))])
        for e in events[lo:hi]:
            seen.setdefault(e.user_id, set()).add(e.item_id)
            sessions.see(e)

    builder = setup.index_builder
    need_emb = any(m.uses_emb for m in methods) and builder is not None
    need_content = any(m.uses_content for m in methods) and len(setup.catalogue) > 0
    features = content_features(setup.catalogue) if need_content else {}
    builds: list[int] = []
    index: ItemIndex | None = None
    # Cold = not in the embedding index in use (everything, without one).
    content = ContentIndex(features) if need_content else None
    spec = setup.read(methods)
    kmax = max(KS)
    counts: Counter[str] = Counter(e.item_id for e in events[:start])
    catalog = (
        setup.catalog if setup.catalog is not None else len({e.item_id for e in events[:stop]})
    )
    categories = {i: e.categories for i, e in setup.catalogue.items() if e.categories}
    stats = ItemStats.from_counts(counts, catalog, categories)
    clicked = set(counts)  # items clicked so far
    results = {m.name: MethodResult(stats=stats) for m in methods}
    want_pop = any(m.prior == "pop" for m in methods)
    # The linear model's rows and the items' first clicks are read by the learned ranker only.
    want_linear = observe is not None or any(m.ranker is not None for m in methods)

    for i in range(start, stop):
        event = events[i]
        every = setup.reindex_every
        if need_emb and (index is None or (every and (i - start) % every == 0)):
            assert builder is not None
            index = builder(event.ts)
            builds.append(event.ts)
            if need_content:
                content = ContentIndex(features, cold=_not_in(index))
        user = event.user_id
        us = state.read_user(user, spec)
        cold = not us.history
        emb = (
            index.similar_many(us.sources, spec.per_item)
            if index is not None and need_emb and us.sources
            else {}
        )
        near = (
            content.similar_many(us.sources, spec.per_item, cold_only=True)
            if content is not None and us.sources
            else {}
        )
        linear = (
            index.linear_rows(us.sources, spec.per_item)
            if want_linear and index is not None
            else {}
        )
        pop = state.popular_head(spec.n_trend) if want_pop else []
        first_seen = index.first_seen if want_linear and index is not None else {}
        # Read by the blend only where it damps, by the ranker always (as served).
        popularity = us.pop
        user_seen = seen.get(user, set())
        new_session = sessions.starts_session(event)
        moment = Moment.of(us.clock, us.history, setup.serving.session_gap_ms)
        if observe is not None:
            observe(
                event,
                Candidates(
                    us.sources, us.co, emb, us.trending, popularity, near, linear, first_seen
                ),
                moment,
                user_seen,
            )
        for m in methods:
            cands = Candidates(
                us.sources[: m.cfg.history_items],
                us.co,
                emb if m.uses_emb else {},
                pop if m.prior == "pop" else us.trending,
                popularity,
                near if m.uses_content else {},
                linear if m.ranker is not None else {},
                first_seen if m.ranker is not None else {},
            )
            ranked: list[Scored] = (
                blend(cands, user_seen, kmax, m.cfg)
                if m.ranker is None
                else m.ranker.rank(cands, user_seen, kmax, m.cfg, moment)
            )
            ids = [s.item_id for s in ranked]
            fallback = not any(s.personalised for s in ranked)
            results[m.name].add(
                ids,
                event.item_id,
                fallback,
                cold=cold,
                new_session=new_session,
                user=user,
                new_item=event.item_id not in counts,
                first_click=event.item_id not in clicked,
            )
        state.apply(TOPIC, [PartitionBatch(0, i, i + 1, [(i, event)])])
        clicked.add(event.item_id)
        seen.setdefault(user, set()).add(event.item_id)
        sessions.see(event)

    summaries = {name: r.summary(catalog) for name, r in results.items()}
    if setup.baseline in results:
        per_user = {
            name: {u: tuple(row) for u, row in r.by_user.items()} for name, r in results.items()
        }
        intervals = per_user_intervals(per_user, setup.baseline, BOOTSTRAP_METRICS)
        for name, by_metric in intervals.items():
            summaries[name]["vs_baseline"] = {"baseline": setup.baseline, **by_metric}
    return RunResult(
        methods=summaries,
        predictions=stop - start,
        seconds=time.perf_counter() - began,
        index_builds=builds,
    )


def _not_in(index: ItemIndex) -> Callable[[str], bool]:
    return lambda item: item not in index


def build_item_index(df: pd.DataFrame, before_ts: int, settings: OfflineSettings) -> ItemIndex:
    """The offline job's embeddings from events strictly before ``before_ts`` (no peeking)."""
    part = df[df["ts"] < before_ts]
    params = {"dim": settings.dim, "seed": settings.seed, "interactions": len(part)}
    return item_index(part, settings, params=params, before_ts=before_ts)


def split_points(n: int, valid: float, test: float) -> tuple[int, int]:
    """(validation start, test start) for fractions of ``n`` events: 70/10/20 by default."""
    if not (0 < test < 1 and 0 <= valid < 1 and valid + test < 1):
        raise ValueError(f"bad split: valid={valid}, test={test}")
    test_start = round(n * (1 - test))
    valid_start = round(n * (1 - test - valid))
    return valid_start, test_start


def index_builder_for(df: pd.DataFrame, settings: OfflineSettings) -> IndexBuilder:
    """Builds from ``df`` rows before a time; memoised per cut-off time."""
    cache: dict[int, ItemIndex] = {}

    def build(before_ts: int) -> ItemIndex:
        if before_ts not in cache:
            cache[before_ts] = build_item_index(df, before_ts, settings)
        return cache[before_ts]

    return build


def catalog_size(df: pd.DataFrame) -> int:
    return int(np.unique(df["item_id"].to_numpy()).size)
