"""Requests prepared as the API's item cache holds them, on ml-latest-small state.

Shared by the scoring micro-benchmarks (filter_cost, ranker_cost): the first
80 % of the ratings applied to the in-memory state, an index (embedding and
linear model) from
the events before the rest, and for users of the rest their read and their
candidates as arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from consumer.state import PartitionBatch, StoreConfig
from core.catalogue import Catalogue
from evaluation.memory import MemoryState
from evaluation.prequential import build_item_index
from offline.index import ItemIndex
from offline.job import OfflineSettings
from producer.dataset import resolve_dataset
from producer.frame import to_events
from producer.movielens import load_movielens_catalogue, load_ratings
from serving.blend import BlendConfig
from serving.reader import ReadSpec, UserState
from serving.scoring import ArrayCandidates, Row, Vocab, damping_array, trend_prior


@dataclass
class Prepared:
    df: pd.DataFrame
    cut: int  # events before this index are applied
    catalogue: Catalogue
    vocab: Vocab
    requests: list[tuple[UserState, ArrayCandidates]]
    index: ItemIndex


def prepare(
    users: int,
    cfg: BlendConfig,
    spec: ReadSpec,
    offline: OfflineSettings,
    returning: bool = False,
) -> Prepared:
    """``returning``: only users of the rest who also clicked before the cut (a
    full read: sources, their rows); otherwise the rest's users in order, most of
    them new (nothing to read but the trending head)."""
    data = resolve_dataset("ml-latest-small", download=False)
    df = load_ratings(data)
    events = list(to_events(df))
    cut = int(len(events) * 0.8)
    state = MemoryState(StoreConfig())
    state.apply("t", [PartitionBatch(0, 0, cut, list(enumerate(events[:cut])))])
    index = build_item_index(df, events[cut].ts, offline)
    vocab = Vocab()
    out = []
    before = {e.user_id for e in events[:cut]} if returning else None
    chosen = [
        u for u in dict.fromkeys(e.user_id for e in events[cut:]) if not before or u in before
    ]
    for user in chosen[:users]:
        us = state.read_user(user, spec)
        emb = index.similar_many(us.sources, spec.per_item) if us.sources else {}
        cands = ArrayCandidates(
            us.sources,
            [Row.of(vocab, us.co.get(s, [])) for s in us.sources],
            [Row.of(vocab, emb.get(s, [])) for s in us.sources],
            trend_prior(Row.of(vocab, us.trending), cfg.w_trend, vocab),
            damping_array(us.pop, cfg.pop_damping, vocab),
        )
        out.append((us, cands))
    return Prepared(df, cut, load_movielens_catalogue(data), vocab, out, index)
