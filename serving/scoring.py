"""The blend over arrays: the same ranked list as ``serving.blend.blend``, in bulk.

``serving.blend.blend`` is the specification: readable, one candidate at a
time, and what the evaluation runs. This module computes the same list from
item rows held as numpy arrays (``serving.items`` keeps them in each API
worker), with the same floating-point operations in the same order, so the
scores are equal, not just close; tests/test_scoring.py holds the two equal on
thousands of random and real cases.

How the reference's steps map onto arrays, for one request:

1. every (source, signal) row is a segment of one concatenated array of item
   codes and values, in the reference's visiting order (source p = 0, 1, ...;
   co-occurrence before embedding);
2. popularity damping divides the co values by ``max(pop, 1) ** β`` (pop 0 =
   unknown: not damped); each co segment is scaled by its own maximum;
3. entries that are not positive or belong to the user are dropped; each
   entry's contribution is ``(decay**p · w) / scale · value``;
4. ``np.unique`` + ``np.bincount`` sum the contributions per item in array
   order (the reference's ``total`` dict adds in that same order), and a
   lexsort picks each item's largest term, the earliest on ties (the
   reference's strict ``>``): that term is the reason;
5. the top k by (-score, item id), and trending filler as in the reference.

Inputs must hold what Redis and FAISS give: each row and the trending list
have distinct members.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from serving.blend import (
    CO_CLICKED,
    SIMILAR,
    TRENDING,
    BlendConfig,
    Reason,
    ReasonKind,
    Scored,
    fill_with_trending,
    trend_norms,
)

_EMPTY_CODES = np.zeros(0, dtype=np.int64)
_EMPTY_VALUES = np.zeros(0, dtype=np.float64)
_TRENDING_REASON = Reason(TRENDING, None)


class Vocab:
    """Item id <-> dense integer code, shared by every array the fast path scores."""

    def __init__(self) -> None:
        self._codes: dict[str, int] = {}
        self.names: list[str] = []

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
        get, code = self._codes.get, self.code
        return np.fromiter(
            (c if (c := get(i)) is not None else code(i) for i in items),
            dtype=np.int64,
            count=len(items),
        )

    def known(self, items: Collection[str]) -> np.ndarray:
        """Codes of the ``items`` that have one (an item without a code is in no row)."""
        get = self._codes.get
        return np.fromiter((c for i in items if (c := get(i)) is not None), dtype=np.int64)


@dataclass(frozen=True, slots=True)
class Row:
    """One ranked list (a co-occurrence row, embedding neighbours, the trending head)."""

    codes: np.ndarray  # int64 item codes, best first
    values: np.ndarray  # float64 counts, cosines or scores

    @classmethod
    def of(cls, vocab: Vocab, pairs: Sequence[tuple[str, float]]) -> Row:
        if not pairs:
            return EMPTY_ROW
        items = [item for item, _ in pairs]
        values = np.fromiter((v for _, v in pairs), dtype=np.float64, count=len(pairs))
        return cls(vocab.codes(items), values)

    def __len__(self) -> int:
        return len(self.codes)

    def pairs(self, vocab: Vocab) -> list[tuple[str, float]]:
        names = vocab.names
        return [
            (names[c], v) for c, v in zip(self.codes.tolist(), self.values.tolist(), strict=True)
        ]


EMPTY_ROW = Row(_EMPTY_CODES, _EMPTY_VALUES)


@dataclass(frozen=True, slots=True)
class ArrayCandidates:
    """``serving.blend.Candidates`` with every list as a :class:`Row`."""

    sources: Sequence[str]
    co: Sequence[Row]  # aligned with sources; EMPTY_ROW where a source has none
    emb: Sequence[Row]
    trending: Row
    # Popularity by item code (0 = not in the pop set); None: no damping.
    popularity: np.ndarray | None = None


def fast_blend(
    cands: ArrayCandidates,
    exclude: Collection[str],
    k: int,
    cfg: BlendConfig,
    vocab: Vocab,
) -> list[Scored]:
    """``serving.blend.blend`` over arrays; see the module docstring."""
    if k <= 0:
        return []
    banned = set(exclude)
    banned.update(cands.sources)
    banned_codes = vocab.known(banned)
    per_item = cfg.candidates_per_item
    beta = cfg.pop_damping
    pop = cands.popularity if beta > 0 else None

    # 1-3: the segments, their factors and the kept entries.
    seg_codes: list[np.ndarray] = []
    seg_values: list[np.ndarray] = []
    factors: list[float] = []
    reasons: list[Reason] = []
    for p, src in enumerate(cands.sources):
        recency = cfg.recency_decay**p
        signals: tuple[tuple[ReasonKind, Row, float], ...] = (
            (CO_CLICKED, cands.co[p], cfg.w_co),
            (SIMILAR, cands.emb[p], cfg.w_emb),
        )
        for kind, row, weight in signals:
            if weight <= 0 or not len(row):
                continue
            codes, values = row.codes[:per_item], row.values[:per_item]
            factor = recency * weight
            if kind == CO_CLICKED:
                if pop is not None:
                    p_of = pop[codes]
                    values = np.where(p_of > 0, values / np.maximum(p_of, 1.0) ** beta, values)
                scale = float(values.max())
                if scale <= 0:
                    continue
                factor /= scale
            seg_codes.append(codes)
            seg_values.append(values)
            factors.append(factor)
            reasons.append(Reason(kind, src))
    trending = cands.trending
    trend_norm = _trend_norm(trending)
    out: list[Scored] = []
    if seg_codes:
        segments = _Segments(seg_codes, seg_values, factors, reasons)
        out = _personal(segments, banned_codes, trending, trend_norm, k, cfg, vocab)
    if len(out) >= k:
        return out
    pairs = trending.pairs(vocab)
    return fill_with_trending(out, pairs, trend_norms(pairs), banned, k, cfg.w_trend)


def _trend_norm(trending: Row) -> np.ndarray:
    """Each trending entry's normalised score, as ``serving.blend.trend_norms``."""
    if not len(trending):
        return _EMPTY_VALUES
    top = float(trending.values.max())
    if top <= 0:
        return np.zeros(len(trending), dtype=np.float64)
    return np.maximum(trending.values, 0.0) / top


@dataclass(frozen=True, slots=True)
class _Segments:
    """The (source, signal) rows of one request, in the reference's visiting order."""

    codes: list[np.ndarray]
    values: list[np.ndarray]
    factors: list[float]  # (decay**p · weight) / scale of each segment
    reasons: list[Reason]


def _personal(
    seg: _Segments,
    banned_codes: np.ndarray,
    trending: Row,
    trend_norm: np.ndarray,
    k: int,
    cfg: BlendConfig,
    vocab: Vocab,
) -> list[Scored]:
    """Steps 3-5 for the personalised candidates."""
    lengths = [len(c) for c in seg.codes]
    codes = np.concatenate(seg.codes)
    values = np.concatenate(seg.values)
    segment = np.repeat(np.arange(len(lengths)), lengths)
    keep = values > 0
    if len(banned_codes):
        keep &= ~np.isin(codes, banned_codes)
    codes, values, segment = codes[keep], values[keep], segment[keep]
    if not len(codes):
        return []
    contrib = np.asarray(seg.factors, dtype=np.float64)[segment] * values
    uniq, inverse = np.unique(codes, return_inverse=True)
    total = np.bincount(inverse, weights=contrib, minlength=len(uniq))
    # Each item's largest term, the earliest on ties: sort by item, then by
    # descending term, then by position; the first of each item's run wins.
    order = np.lexsort((np.arange(len(codes)), -contrib, inverse))
    runs = np.flatnonzero(np.r_[True, inverse[order][1:] != inverse[order][:-1]])
    best = order[runs]
    best_term, best_segment = contrib[best], segment[best]
    # The trending prior of each candidate that is in the trending list.
    prior = np.zeros(len(uniq), dtype=np.float64)
    if len(trending):
        at = np.searchsorted(uniq, trending.codes)
        hit = at < len(uniq)
        hit[hit] = uniq[at[hit]] == trending.codes[hit]
        prior[at[hit]] = cfg.w_trend * trend_norm[hit]
    score = total + prior
    # Top k by (-score, item id): everything tied with the k-th best is a
    # candidate, then the exact order in Python on that handful.
    n = len(uniq)
    pool = np.arange(n) if n <= k else np.flatnonzero(score >= np.partition(score, n - k)[n - k])
    names = vocab.names
    scores, codes_u = score.tolist(), uniq.tolist()
    ranked = sorted((-scores[i], names[codes_u[i]], i) for i in pool.tolist())[:k]
    out: list[Scored] = []
    for neg, item, i in ranked:
        reason = _TRENDING_REASON if prior[i] > best_term[i] else seg.reasons[best_segment[i]]
        out.append(Scored(item, -neg, reason))
    return out
