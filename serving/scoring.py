"""The blend over arrays: the same ranked list as ``serving.blend.blend``, in bulk.

``serving.blend.blend`` is the specification: readable, one candidate at a
time, and what the evaluation runs. This module computes the same list from
item rows held as numpy arrays (``serving.items`` keeps them in each API
worker), with the same floating-point operations in the same order, so the
scores are equal, not merely close; tests/test_scoring.py holds the two equal
on thousands of random and real cases.

The work that depends only on an item is done once per row, not per request:

- :func:`damping_factor`: ``max(pop, 1) ** β`` of an item (1 when its
  popularity is unknown), in plain Python as the reference computes it, kept
  per item code (dividing by it then gives the reference's damped count);
- :func:`trend_prior`: ``w_trend · score / top`` of each item of a trending
  list, indexed by item code.

Per request, for the user's sources:

1. every (source, signal) row is a segment of one concatenated array, in the
   reference's visiting order (source p = 0, 1, ...; co-occurrence first);
2. co counts are divided by their items' damping factors and each co segment
   is scaled by its own maximum; entries that are not positive or belong to
   the user are dropped; each entry's term is ``(decay**p · w) / scale ·
   value``, the reference's ``factor`` times its value;
3. ``np.add.at`` sums the terms per item in array order (the reference's
   ``total`` dict adds in that order), ``np.maximum.at``/``np.minimum.at``
   find each item's largest term and the earliest entry holding it (the
   reference's strict ``>``): that term's signal and source are the reason;
4. the top k by (-score, item id), then trending filler as in the reference.

Inputs must be what Redis and FAISS give: every row and the trending list have
distinct members.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate

import numpy as np

from serving.blend import (
    CO_CLICKED,
    SAME_CATEGORY,
    SIMILAR,
    TRENDING,
    BlendConfig,
    Reason,
    ReasonKind,
    Scored,
    fill_with_trending,
    trend_norms,
)
from serving.filters import CategoryRule, RuleMasks

_EMPTY_CODES = np.zeros(0, dtype=np.int64)
_EMPTY_VALUES = np.zeros(0, dtype=np.float64)
_TRENDING_REASON = Reason(TRENDING, None)


class Scratch:
    """Code-indexed work arrays for one scoring call at a time, left zeroed after it.

    Allocating and clearing arrays the size of the catalogue per request would
    cost more than the scoring (62,000 items x 8 bytes x 4 arrays); each call
    resets only the entries it touched.
    """

    def __init__(self, size: int) -> None:
        self.unset = np.iinfo(np.int64).max
        self.total = np.zeros(size, dtype=np.float64)
        self.best = np.zeros(size, dtype=np.float64)
        self.first = np.full(size, self.unset, dtype=np.int64)
        self.banned = np.zeros(size, dtype=bool)
        self.slot = np.full(size, -1, dtype=np.int64)  # a code's row in a matrix, -1: none

    def __len__(self) -> int:
        return len(self.total)


class Vocab:
    """Item id <-> dense integer code, shared by every array the fast path scores.

    Not thread-safe: one per API worker, used from its event loop only.
    """

    def __init__(self) -> None:
        self._codes: dict[str, int] = {}
        self.names: list[str] = []
        self._scratch = Scratch(1024)
        # Category rules' verdicts per code (serving.filters), valid while codes are.
        self.rule_masks = RuleMasks()

    def __len__(self) -> int:
        return len(self.names)

    def code(self, item: str) -> int:
        found = self._codes.get(item)
        if found is None:
            found = self._codes[item] = len(self.names)
            self.names.append(item)
        return found

    def codes(self, items: Sequence[str]) -> np.ndarray:
        """Codes of ``items``, assigning new ones where needed."""
        get = self._codes.get
        found = [get(i) for i in items]
        if None in found:
            code = self.code
            found = [code(i) for i in items]
        return np.array(found, dtype=np.int64)

    def known(self, items: Collection[str]) -> list[int]:
        """Codes of the ``items`` that have one (an item without a code is in no row)."""
        get = self._codes.get
        return [c for i in items if (c := get(i)) is not None]

    def scratch(self) -> Scratch:
        """Work arrays covering every code assigned so far (grown by doubling)."""
        if len(self._scratch) < len(self.names):
            self._scratch = Scratch(max(2 * len(self._scratch), len(self.names)))
        return self._scratch


@dataclass(frozen=True, slots=True)
class Row:
    """One ranked list (a co-occurrence row, embedding neighbours, the trending head)."""

    codes: np.ndarray  # int64 item codes, best first
    values: np.ndarray  # float64 counts, cosines or scores

    @classmethod
    def of(cls, vocab: Vocab, pairs: Sequence[tuple[str, float]]) -> Row:
        if not pairs:
            return EMPTY_ROW
        values = np.array([v for _, v in pairs], dtype=np.float64)
        return cls(vocab.codes([item for item, _ in pairs]), values)

    def __len__(self) -> int:
        return len(self.codes)

    def pairs(self, vocab: Vocab) -> list[tuple[str, float]]:
        names = vocab.names
        codes, values = self.codes.tolist(), self.values.tolist()
        return [(names[c], v) for c, v in zip(codes, values, strict=True)]


EMPTY_ROW = Row(_EMPTY_CODES, _EMPTY_VALUES)


def damping_factor(count: float | None, beta: float) -> float:
    """What ``serving.blend`` divides a co count by: ``max(pop, 1) ** β``; 1 (not
    damped) for an item the popularity set does not hold. Computed in Python, as
    the reference computes it, so dividing by it gives the reference's value."""
    return max(count, 1.0) ** beta if count else 1.0


def damping_array(popularity: Mapping[str, float], beta: float, vocab: Vocab) -> np.ndarray:
    """Each code's damping factor (1 where none), for ``ArrayCandidates.damping``."""
    out = np.ones(len(vocab), dtype=np.float64)
    for item, count in popularity.items():
        code = vocab.code(item)
        if code >= len(out):
            out = np.concatenate([out, np.ones(code + 1 - len(out))])
        out[code] = damping_factor(count, beta)
    return out


@dataclass(frozen=True, slots=True)
class TrendPrior:
    """A request's trending list and each listed item's prior, indexed by code."""

    row: Row
    # w_trend · score / top for listed codes, 0 elsewhere; one extra trailing 0
    # answers for codes assigned after it was built (they are not listed).
    prior: np.ndarray
    # The list as (item, score) and serving.blend.trend_norms of it: what the
    # ranker's trending extras read (serving.ranker.extend_pool), made once per
    # trending head rather than once per request.
    pairs: list[tuple[str, float]]
    norms: dict[str, float]

    def of(self, codes: np.ndarray) -> np.ndarray:
        return self.prior[np.minimum(codes, len(self.prior) - 1)]


def trend_prior(row: Row, w_trend: float, vocab: Vocab) -> TrendPrior:
    """The prior of each item of ``row`` (``serving.blend.trend_norms`` times ``w_trend``)."""
    prior = np.zeros(len(vocab) + 1, dtype=np.float64)
    if len(row):
        top = float(row.values.max())
        if top > 0:
            prior[row.codes] = w_trend * (np.maximum(row.values, 0.0) / top)
    pairs = row.pairs(vocab)
    return TrendPrior(row, prior, pairs, trend_norms(pairs))


@dataclass(frozen=True, slots=True)
class ArrayCandidates:
    """``serving.blend.Candidates`` as prepared arrays."""

    sources: Sequence[str]
    co: Sequence[Row]  # aligned with sources (EMPTY_ROW where none)
    emb: Sequence[Row]
    trending: TrendPrior
    # Each code's damping factor (see damping_factor), covering every code in
    # the co rows; None: no damping (β = 0 or no popularity known).
    damping: np.ndarray | None = None
    # Content neighbours among cold items, aligned with sources (empty: none).
    content: Sequence[Row] = ()


def fast_blend(
    cands: ArrayCandidates,
    exclude: Collection[str],
    k: int,
    cfg: BlendConfig,
    vocab: Vocab,
    rule: CategoryRule | None = None,
) -> list[Scored]:
    """``serving.blend.blend`` over prepared arrays; see the module docstring.
    ``rule``: a request's category rule (the reference's ``allow=rule.allows``)."""
    if k <= 0:
        return []
    banned = set(exclude)
    banned.update(cands.sources)
    # 1: the segments in the reference's visiting order with their factors,
    # (decay**p · weight) / scale as Python floats, as the reference has them.
    seg_codes: list[np.ndarray] = []
    seg_values: list[np.ndarray] = []
    factors: list[float] = []
    kinds: list[ReasonKind] = []
    srcs: list[str] = []
    w_co, w_emb, per_item = cfg.w_co, cfg.w_emb, cfg.candidates_per_item
    w_content = cfg.w_content
    for p, src in enumerate(cands.sources):
        recency = cfg.recency_decay**p
        signals: tuple[tuple[ReasonKind, Row, float], ...] = (
            (CO_CLICKED, cands.co[p], w_co),
            (SIMILAR, cands.emb[p], w_emb),
            (SAME_CATEGORY, cands.content[p] if cands.content else EMPTY_ROW, w_content),
        )
        for kind, row, weight in signals:
            if weight > 0 and row.codes.size:
                seg_codes.append(row.codes[:per_item])
                seg_values.append(row.values[:per_item])
                factors.append(recency * weight)
                kinds.append(kind)
                srcs.append(src)
    out: list[Scored] = []
    if seg_codes:
        damping = cands.damping if cfg.pop_damping > 0 else None
        segs = _Segments(seg_codes, seg_values, factors, kinds, srcs)
        out = _personal(segs, banned, cands.trending, damping, k, vocab, rule)
    if len(out) >= k:
        return out
    pairs = cands.trending.row.pairs(vocab)
    allow = rule.allows if rule is not None else None
    return fill_with_trending(out, pairs, trend_norms(pairs), banned, k, cfg.w_trend, allow)


@dataclass(frozen=True, slots=True)
class _Segments:
    """The (source, signal) rows of one request, in the reference's visiting order."""

    codes: list[np.ndarray]
    values: list[np.ndarray]
    bases: list[float]  # decay**p · weight
    kinds: list[ReasonKind]
    sources: list[str]


def _personal(
    seg: _Segments,
    banned: set[str],
    trending: TrendPrior,
    damping: np.ndarray | None,
    k: int,
    vocab: Vocab,
    rule: CategoryRule | None,
) -> list[Scored]:
    """Steps 2-4 for the personalised candidates."""
    lengths = [len(c) for c in seg.codes]
    codes = np.concatenate(seg.codes)
    values = np.concatenate(seg.values)
    co = np.array([kind == CO_CLICKED for kind in seg.kinds])
    starts = np.array([0, *accumulate(lengths[:-1])])
    if damping is not None and co.any():
        on_co = np.repeat(co, lengths)
        values[on_co] /= damping[codes[on_co]]
    # The reference's factor: decay**p · weight, over the row's largest (damped)
    # value for co rows; a co row with no positive value has nothing to score.
    scale = np.where(co, np.maximum.reduceat(values, starts), 1.0)
    factors = np.asarray(seg.bases) / np.where(scale > 0, scale, 1.0)
    contrib = np.repeat(factors, lengths) * values
    keep = values > 0
    buf = vocab.scratch()
    banned_codes = vocab.known(banned)
    if banned_codes:
        buf.banned[banned_codes] = True
        keep &= ~buf.banned[codes]
        buf.banned[banned_codes] = False
    if rule is not None:
        keep &= rule.mask(codes, vocab)
    at = np.flatnonzero(keep)  # positions in the concatenation, in visiting order
    if not len(at):
        return []
    codes, contrib = codes[at], contrib[at]
    # 3: sums and largest terms in code-indexed scratch arrays, reset after.
    np.add.at(buf.total, codes, contrib)
    np.maximum.at(buf.best, codes, contrib)
    tops = np.flatnonzero(contrib == buf.best[codes])
    np.minimum.at(buf.first, codes[tops], tops)
    winners = tops[buf.first[codes[tops]] == tops]  # each item's first largest term
    uniq = codes[winners]
    total = buf.total[uniq]
    buf.total[codes] = 0.0
    buf.best[codes] = 0.0
    buf.first[codes] = buf.unset
    prior = trending.of(uniq)
    score = total + prior
    # 4: top k by (-score, item id): everything tied with the k-th best is in
    # the pool, whose exact order is then settled in Python.
    n = len(uniq)
    pool = np.arange(n) if n <= k else np.flatnonzero(score >= np.partition(score, n - k)[n - k])
    names = vocab.names
    negs = (-score[pool]).tolist()
    items = [names[c] for c in uniq[pool].tolist()]
    ranked = sorted(zip(negs, items, pool.tolist(), strict=True))[:k]
    # Each pooled item's reason: the trending prior where it outweighs the item's
    # largest term, else the segment of that term (segment s holds positions
    # [ends[s-1], ends[s])), one Reason per segment.
    ends = list(accumulate(lengths))
    in_pool = pool.tolist()
    by_trend = dict(zip(in_pool, (prior[pool] > contrib[winners][pool]).tolist(), strict=True))
    segment = np.searchsorted(ends, at[winners][pool], side="right").tolist()
    seg_of = dict(zip(in_pool, segment, strict=True))
    reasons: dict[int, Reason] = {}
    out: list[Scored] = []
    for neg, item, i in ranked:
        if by_trend[i]:
            reason = _TRENDING_REASON
        else:
            s = seg_of[i]
            reason = reasons.get(s) or reasons.setdefault(s, Reason(seg.kinds[s], seg.sources[s]))
        out.append(Scored(item, -neg, reason))
    return out
