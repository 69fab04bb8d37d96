"""The ranker's features over arrays: the same matrix as ``serving.ranker.features``.

``serving.ranker.features`` is the specification: one candidate entry at a
time over the reference's lists, what the evaluation runs. The API holds its
item rows as arrays (``serving.items``); turning a request's ~1,000 row
entries back into lists and walking them cost most of a ranked request
(``benchmarks/ranker_cost.py``). This module computes the same matrix from the
arrays, with the same floating-point operations in the same order, so every
value is equal, not merely close (a tree splits on exact thresholds):

- each signal's rows (co-occurrence, embedding, content; each source's first
  ``candidates_per_item``) are concatenated in the reference's visiting order
  (source p = 0, 1, ..., each row best first), and each entry is mapped to its
  pooled item's row of the matrix (or none) through a code-indexed slot array;
- sums are ``np.add.at`` in array order (the reference adds in that order),
  largest and smallest values ``np.maximum.at``/``np.minimum.at``;
- what is per pooled item (the blend's columns, popularity, age, the
  logarithms) is computed in Python, as the reference computes it;
- the linear model's rows (empty unless the offline job fits one) are walked
  by the reference's own ``linear_terms``.

As the reference, it reads the popularity of the pooled items that some
source's co row holds (``serving.items.as_lists`` collects exactly those).
tests/test_ranker_fast.py holds the two equal on thousands of random cases and
on MovieLens state. Inputs must be what Redis and FAISS give: every row and
the trending head have distinct members (as for ``serving.scoring``), and a
pool lists each item once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from serving.blend import BlendConfig, Candidates, Scored
from serving.ranker import FEATURES, NAN, REASON_CODE, Moment, linear_terms, user_features
from serving.scoring import ArrayCandidates, Row, Vocab

_N = len(FEATURES)
_C = {name: i for i, name in enumerate(FEATURES)}
_NONE: int = np.iinfo(np.int64).max


def fast_features(
    cands: ArrayCandidates,
    pool: Sequence[Scored],
    moment: Moment,
    cfg: BlendConfig,
    vocab: Vocab,
    popularity: Callable[[str], float | None],
    linear: Mapping[str, Sequence[tuple[str, float]]] | None = None,
    first_seen: Mapping[str, int] | None = None,
) -> np.ndarray:
    """``serving.ranker.features`` of ``pool`` over the arrays ``cands`` (the
    reference's lists being ``serving.items.as_lists`` of them, with ``linear``
    and ``first_seen``); ``popularity`` is the item cache's lookup."""
    n = len(pool)
    if not n:
        return np.zeros((0, _N), dtype=np.float64)
    head = [item for item, _ in cands.trending.pairs]
    user = user_features(moment, len(cands.sources), head)
    x = np.empty((n, _N), dtype=np.float64)
    # Column by column: numpy fills a column from a flat list many times faster
    # than the matrix from a list of rows.
    x[:, 0] = [s.score for s in pool]
    x[:, 1] = np.arange(n, dtype=np.float64)
    x[:, 2] = [s.personalised for s in pool]
    x[:, 3] = [REASON_CODE[s.reason.kind] for s in pool]
    x[:, 22:] = user
    codes = vocab.codes([s.item_id for s in pool])
    slot = vocab.scratch().slot
    slot[codes] = np.arange(n)
    try:
        per_item = cfg.candidates_per_item
        recency = [cfg.recency_decay**p for p in range(len(cands.sources))]
        members = _co_columns(x, cands, slot, recency, per_item, cfg)
        total, best, newest = _near(cands.emb, slot, recency, per_item, n)
        x[:, _C["emb_sum"]], x[:, _C["emb_max"]], x[:, _C["emb_source"]] = total, best, newest
        x[:, _C["content_sum"]] = _near(cands.content, slot, recency, per_item, n)[0]
        _trend_columns(x, cands.trending.row, slot)
    finally:
        slot[codes] = -1
    _linear_columns(x, cands.sources, linear or {}, pool, cfg)
    log1p = math.log1p
    x[:, _C["log_pop"]] = NAN
    held = members.tolist()
    x[held, _C["log_pop"]] = [
        NAN if (c := popularity(pool[i].item_id)) is None else log1p(max(c, 0.0)) for i in held
    ]
    x[:, _C["log_age_s"]] = NAN
    if first_seen:
        now, get = moment.now_ms, first_seen.get
        x[:, _C["log_age_s"]] = [
            NAN if (f := get(s.item_id)) is None else log1p(max(now - f, 0) / 1000.0) for s in pool
        ]
    return x


def _segments(
    rows: Sequence[Row], per_item: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[int]] | None:
    """Every row's first ``per_item`` entries concatenated: codes, values, the
    source position and the rank in its row of each entry, and where each
    non-empty row's entries start and how many there are."""
    kept = [(p, row) for p, row in enumerate(rows) if len(row)]
    if not kept:
        return None
    codes = np.concatenate([row.codes[:per_item] for _, row in kept])
    values = np.concatenate([row.values[:per_item] for _, row in kept])
    lengths = [min(len(row), per_item) for _, row in kept]
    starts = np.cumsum([0, *lengths[:-1]])
    source = np.repeat(np.asarray([p for p, _ in kept], dtype=np.int64), lengths)
    rank = np.arange(len(codes), dtype=np.int64) - np.repeat(starts, lengths)
    return codes, values, source, rank, starts, lengths


def _co_columns(
    x: np.ndarray,
    cands: ArrayCandidates,
    slot: np.ndarray,
    recency: list[float],
    per_item: int,
    cfg: BlendConfig,
) -> np.ndarray:
    """co_sum .. co_sources; returns the matrix rows of the pooled items some
    co row holds (whose popularity the reference reads)."""
    c = _C
    x[:, [c["co_sum"], c["co_max"], c["co_sources"]]] = 0.0
    x[:, [c["co_log_count"], c["co_source"], c["co_rank"]]] = NAN
    seg = _segments(cands.co, per_item)
    if seg is None:
        return np.zeros(0, dtype=np.int64)
    codes, raw, source, rank, starts, lengths = seg
    at = slot[codes]
    held_by_a_row = np.zeros(len(x), dtype=bool)
    held_by_a_row[at[at >= 0]] = True
    members = np.flatnonzero(held_by_a_row)
    values = raw
    if cfg.pop_damping > 0 and cands.damping is not None:
        values = raw / cands.damping[codes]
    scale = np.repeat(np.maximum.reduceat(values, starts), lengths)
    keep = (at >= 0) & (values > 0) & (scale > 0)
    if not keep.any():
        return members
    at, values, scale, raw = at[keep], values[keep], scale[keep], raw[keep]
    source, rank = source[keep], rank[keep]
    norm = values / scale
    term = np.asarray(recency, dtype=np.float64)[source] * norm
    n = len(x)
    total = np.zeros(n)
    np.add.at(total, at, term)
    best = np.zeros(n)
    np.maximum.at(best, at, norm)
    most = np.full(n, -np.inf)
    np.maximum.at(most, at, raw)
    first, top = _smallest(at, source, n), _smallest(at, rank, n)
    hits = np.bincount(at, minlength=n).astype(np.float64)
    x[:, c["co_sum"]] = total
    x[:, c["co_max"]] = best
    x[:, c["co_sources"]] = hits
    x[:, c["co_source"]] = first
    x[:, c["co_rank"]] = top
    held = np.flatnonzero(hits)
    x[held, c["co_log_count"]] = list(map(math.log1p, most[held].tolist()))
    return members


def _near(
    rows: Sequence[Row], slot: np.ndarray, recency: list[float], per_item: int, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per matrix row, over the positive cosines of ``rows`` (embedding or content
    neighbours): their decayed sum, the largest, the newest source (NaN: none)."""
    total, best, newest = np.zeros(n), np.zeros(n), np.full(n, NAN)
    seg = _segments(rows, per_item)
    if seg is None:
        return total, best, newest
    codes, cos, source, _, _, _ = seg
    at = slot[codes]
    keep = (at >= 0) & (cos > 0)
    if not keep.any():
        return total, best, newest
    at, cos, source = at[keep], cos[keep], source[keep]
    np.add.at(total, at, np.asarray(recency, dtype=np.float64)[source] * cos)
    np.maximum.at(best, at, cos)
    return total, best, _smallest(at, source, n)


def _smallest(at: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Per matrix row, the smallest of ``values`` over its entries (NaN: none)."""
    low = np.full(n, _NONE, dtype=np.int64)
    np.minimum.at(low, at, values)
    out = low.astype(np.float64)
    out[low == _NONE] = NAN
    return out


def _trend_columns(x: np.ndarray, row: Row, slot: np.ndarray) -> None:
    """trend (score over the head's top, negatives as 0) and trend_rank."""
    c = _C
    x[:, c["trend"]] = 0.0
    x[:, c["trend_rank"]] = NAN
    if not len(row):
        return
    at = slot[row.codes]
    listed = np.flatnonzero(at >= 0)
    if not len(listed):
        return
    top = float(row.values.max())
    if top > 0:  # max(v, 0.0) / top, as the reference, in one step
        x[at[listed], c["trend"]] = np.maximum(row.values[listed], 0.0) / top
    x[at[listed], c["trend_rank"]] = listed.astype(np.float64)


def _linear_columns(
    x: np.ndarray,
    sources: Sequence[str],
    linear: Mapping[str, Sequence[tuple[str, float]]],
    pool: Sequence[Scored],
    cfg: BlendConfig,
) -> None:
    """lin_sum .. lin_rank by the reference's own walk over the linear rows."""
    c = _C
    x[:, [c["lin_sum"], c["lin_max"]]] = 0.0
    x[:, [c["lin_source"], c["lin_rank"]]] = NAN
    if not linear:
        return
    row_of = {s.item_id: i for i, s in enumerate(pool)}
    cands = Candidates(sources, {}, {}, [], linear=linear)
    for p, rank, item, weight, term in linear_terms(cands, cfg):
        i = row_of.get(item)
        if i is None:
            continue
        x[i, c["lin_sum"]] += term
        if weight > x[i, c["lin_max"]]:
            x[i, c["lin_max"]] = weight
        if math.isnan(x[i, c["lin_source"]]):
            x[i, c["lin_source"]] = float(p)
        if not rank >= x[i, c["lin_rank"]]:
            x[i, c["lin_rank"]] = float(rank)
