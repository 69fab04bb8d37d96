"""The learned ranker: re-orders the blend's candidates by a model of their features.

The hand-tuned blend (``serving.blend``) stays the first stage and the
fallback. The ranker takes its pool, the blend's best ``pool`` items (trending
filler included when the personal ones run short) plus the trending head's
best ``trend_extra`` items not already in it, so a return visit can be
answered from what is popular now, and scores each pooled item from the
features below with a gradient-boosted tree model (LightGBM, lambdarank
objective) that the offline job trains on a stream (``offline.ranker``).

Features of one candidate ``c`` for one request (``FEATURES``, in order):

- the blend's own view: its score, the item's position in the pool, whether
  it was personal, the kind of its reason;
- co-occurrence: Σ_p decay**p · co(s_p, c) / max co(s_p, ·) over the user's
  sources (damped as the blend damps), the largest of those normalised values,
  the largest raw count (log), the newest source holding it and its best
  rank in any source's row, and how many sources hold it;
- embedding: the decayed sum and the largest cosine, the newest source;
- content: the decayed sum of content cosines (cold candidates);
- trending: its prior (score / top) and its rank in the head;
- popularity: log of its all-time count where the read holds it;
- the user and the moment: history entries read, sources, log seconds since
  the newest entry (a return visit has a long one), whether this request
  starts a new session (that gap over the session gap), and how many entries
  the current session holds.

A missing value (an item in no co row has no co rank) is NaN, which the trees
route on their own. Nothing here does I/O: the evaluation and the API call the
same ``Ranker.rank`` on the same ``Candidates``.
"""

from __future__ import annotations

import json
import math
import threading
import weakref
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from offline.index import ItemIndex
from serving.blend import (
    CO_CLICKED,
    SAME_CATEGORY,
    SIMILAR,
    TRENDING,
    BlendConfig,
    Candidates,
    Scored,
    blend,
    damped_row,
    fill_with_trending,
    trend_norms,
)

if TYPE_CHECKING:
    import lightgbm

FEATURES: Final = (
    "blend_score",
    "blend_position",
    "personalised",
    "reason",
    "co_sum",
    "co_max",
    "co_log_count",
    "co_source",
    "co_rank",
    "co_sources",
    "emb_sum",
    "emb_max",
    "emb_source",
    "content_sum",
    "trend",
    "trend_rank",
    "log_pop",
    "history_len",
    "n_sources",
    "log_gap_s",
    "new_session",
    "session_len",
)
_COL: Final = {name: i for i, name in enumerate(FEATURES)}
_REASON_CODE: Final = {CO_CLICKED: 0.0, SIMILAR: 1.0, SAME_CATEGORY: 2.0, TRENDING: 3.0}
NAN: Final = math.nan


@dataclass(frozen=True, slots=True)
class Moment:
    """When a request is made and what the user's history says about it.

    "Now" is the stream clock (the largest event time the state holds), which
    the evaluation and the server both know, so a replay of old events and a
    live stream look alike to the model; never before the user's newest entry.
    """

    now_ms: int
    history: Sequence[tuple[int, str]]  # (ts_ms, item), newest first
    session_gap_ms: int

    @classmethod
    def of(
        cls, clock: int | None, history: Sequence[tuple[int, str]], session_gap_ms: int
    ) -> Moment:
        stamps = [t for t in (clock, history[0][0] if history else None) if t is not None]
        return cls(max(stamps, default=0), history, session_gap_ms)


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """How many of the blend's items the ranker re-orders: the blend's best 100
    hold the next click about twice as often as its best 10 on ml-latest-small's
    validation part; the 30 trending extras are there for return visits."""

    pool: int = 100
    trend_extra: int = 30


def candidate_pool(
    cands: Candidates,
    exclude: Collection[str],
    cfg: BlendConfig,
    size: PoolConfig,
    allow: Callable[[str], bool] | None = None,
) -> list[Scored]:
    """The blend's best ``size.pool`` items, then up to ``size.trend_extra`` more
    from the trending head (as the blend's filler, best first); ``allow`` as in
    the blend (a request's category rule)."""
    return extend_pool(
        blend(cands, exclude, size.pool, cfg, allow), cands, exclude, cfg, size, allow
    )


def extend_pool(
    first: list[Scored],
    cands: Candidates,
    exclude: Collection[str],
    cfg: BlendConfig,
    size: PoolConfig,
    allow: Callable[[str], bool] | None = None,
) -> list[Scored]:
    """``first`` (the blend's best ``size.pool``, from either scorer) and the
    trending extras after it."""
    if size.trend_extra <= 0:
        return first
    banned = set(exclude)
    banned.update(cands.sources)
    norm = trend_norms(cands.trending)
    want = len(first) + size.trend_extra
    return fill_with_trending(list(first), cands.trending, norm, banned, want, cfg.w_trend, allow)


def features(
    cands: Candidates, pool: Sequence[Scored], moment: Moment, cfg: BlendConfig
) -> np.ndarray:
    """The ``len(pool)`` x ``len(FEATURES)`` matrix of the pooled items' features."""
    n = len(pool)
    x = np.full((n, len(FEATURES)), NAN, dtype=np.float64)
    if n == 0:
        return x
    at: dict[str, int] = {s.item_id: row for row, s in enumerate(pool)}
    for row, s in enumerate(pool):
        x[row, 0] = s.score
        x[row, 1] = row
        x[row, 2] = float(s.personalised)
        x[row, 3] = _REASON_CODE[s.reason.kind]
    zero_cols = [_COL[c] for c in ("co_sum", "co_max", "co_sources", "emb_sum", "emb_max")]
    x[:, zero_cols] = 0.0
    x[:, _COL["content_sum"]] = 0.0
    x[:, _COL["trend"]] = 0.0

    per_item = cfg.candidates_per_item
    pop = cands.popularity
    damping = cfg.pop_damping > 0 and pop is not None
    for p, src in enumerate(cands.sources):
        recency = cfg.recency_decay**p
        co_row = list(cands.co.get(src, ()))[:per_item]
        if co_row:
            raw = dict(co_row)
            if damping:
                assert pop is not None
                co_row = damped_row(co_row, pop.get, cfg.pop_damping)
            scale = max(v for _, v in co_row)
            if scale > 0:
                for rank, (item, value) in enumerate(co_row):
                    i = at.get(item)
                    if i is None or value <= 0:
                        continue
                    norm = value / scale
                    x[i, 4] += recency * norm
                    x[i, 5] = max(x[i, 5], norm)
                    count = math.log1p(raw[item])
                    if math.isnan(x[i, 6]) or count > x[i, 6]:
                        x[i, 6] = count
                    if math.isnan(x[i, 7]):
                        x[i, 7] = p
                    if math.isnan(x[i, 8]) or rank < x[i, 8]:
                        x[i, 8] = rank
                    x[i, 9] += 1
        for item, cos in list(cands.emb.get(src, ()))[:per_item]:
            i = at.get(item)
            if i is None or cos <= 0:
                continue
            x[i, 10] += recency * cos
            x[i, 11] = max(x[i, 11], cos)
            if math.isnan(x[i, 12]):
                x[i, 12] = p
        for item, cos in list(cands.content.get(src, ()))[:per_item]:
            i = at.get(item)
            if i is not None and cos > 0:
                x[i, 13] += recency * cos
    norm_trend = trend_norms(cands.trending)
    for rank, (item, _) in enumerate(cands.trending):
        i = at.get(item)
        if i is not None:
            x[i, 14] = norm_trend.get(item, 0.0)
            x[i, 15] = rank
    if pop is not None:
        for item, i in at.items():
            known = pop.get(item)
            if known is not None:
                x[i, 16] = math.log1p(max(known, 0.0))
    x[:, 17:] = _user_features(moment, len(cands.sources))
    return x


def _user_features(moment: Moment, n_sources: int) -> list[float]:
    history = moment.history
    if not history:
        return [0.0, float(n_sources), NAN, 1.0, 0.0]
    gap_s = max(moment.now_ms - history[0][0], 0) / 1000.0
    session = 0
    prev = moment.now_ms
    for ts, _ in history:
        if abs(prev - ts) > moment.session_gap_ms:
            break
        session += 1
        prev = ts
    new = float(gap_s * 1000.0 > moment.session_gap_ms)
    return [float(len(history)), float(n_sources), math.log1p(gap_s), new, float(session)]


_BY_INDEX: weakref.WeakKeyDictionary[ItemIndex, Ranker | None] = weakref.WeakKeyDictionary()
_BY_INDEX_LOCK = threading.Lock()


def ranker_of(index: ItemIndex) -> Ranker | None:
    """The learned ranker an index version carries (None: the blend ranks
    alone), parsed once per index (the API's loader thread does it first)."""
    with _BY_INDEX_LOCK:
        if index in _BY_INDEX:
            return _BY_INDEX[index]
    ranker = None if index.ranker_model is None else Ranker.from_text(index.ranker_model)
    with _BY_INDEX_LOCK:
        _BY_INDEX[index] = ranker
    return ranker


class Ranker:
    """A trained model and the pool it re-orders. Thread-safe for ``rank``."""

    def __init__(self, booster: lightgbm.Booster, size: PoolConfig | None = None) -> None:
        names = list(booster.feature_name())
        if names != list(FEATURES):
            raise ValueError(f"the model's features {names} are not this code's {list(FEATURES)}")
        self.booster = booster
        self.size = size or PoolConfig()

    @classmethod
    def from_text(cls, text: str) -> Ranker:
        """A ranker from :meth:`to_text`; ValueError if it is not one."""
        import lightgbm

        try:
            doc = json.loads(text)
            size = PoolConfig(int(doc["pool"]), int(doc["trend_extra"]))
            booster = lightgbm.Booster(model_str=doc["model"])
        except (KeyError, TypeError, json.JSONDecodeError, lightgbm.basic.LightGBMError) as exc:
            raise ValueError(f"not a ranker model: {exc}") from None
        return cls(booster, size)

    def to_text(self) -> str:
        doc = {
            "pool": self.size.pool,
            "trend_extra": self.size.trend_extra,
            "features": list(FEATURES),
            "model": self.booster.model_to_string(),
        }
        return json.dumps(doc)

    def describe(self) -> dict[str, Any]:
        return {
            "pool": self.size.pool,
            "trend_extra": self.size.trend_extra,
            "trees": self.booster.num_trees(),
        }

    def scores(self, x: np.ndarray) -> np.ndarray:
        if not len(x):
            return np.zeros(0)
        out: Any = self.booster.predict(x, num_threads=1)
        return np.asarray(out, dtype=np.float64)

    def rank(
        self,
        cands: Candidates,
        exclude: Collection[str],
        k: int,
        cfg: BlendConfig,
        moment: Moment,
        allow: Callable[[str], bool] | None = None,
    ) -> list[Scored]:
        """The pool re-ordered by the model, best first, ties on item id; each
        item keeps the blend's reason and personal flag, its score is the model's."""
        if k <= 0:
            return []
        pool = candidate_pool(cands, exclude, cfg, self.size, allow)
        return self.rerank(pool, cands, k, cfg, moment)

    def rerank(
        self, pool: list[Scored], cands: Candidates, k: int, cfg: BlendConfig, moment: Moment
    ) -> list[Scored]:
        """:meth:`rank` from a pool already drawn (``candidate_pool``)."""
        if k <= 0 or not pool:
            return []
        model = self.scores(features(cands, pool, moment, cfg)).tolist()
        order = sorted(range(len(pool)), key=lambda i: (-model[i], pool[i].item_id))[:k]
        return [
            Scored(pool[i].item_id, model[i], pool[i].reason, pool[i].personalised) for i in order
        ]
