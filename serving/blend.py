"""The blend: one pure function from fetched candidates to a ranked, explained list.

No I/O here, so the live endpoint and the offline evaluation run exactly this code.

For a candidate ``c`` and the user's sources ``s_0`` (newest) .. ``s_n``::

    score(c) = Σ_p decay**p · ( w_co  · co(s_p, c) / max_c' co(s_p, c')
                              + w_emb · max(cos(s_p, c), 0)
                              + w_content · content(s_p, c) )
             + w_trend · trend(c) / max_c' trend(c')

``content`` is the cosine of the two items' catalogue categories and tags
(``offline.content``), given for candidates the embedding has not seen (cold
items): the one personalised signal a never-clicked item can have.

Each co-occurrence row is normalised by its own largest count so a source with
thousands of co-clicks does not drown one with ten: every row then lies in [0, 1],
like the cosine term.

Popularity damping (``pop_damping`` = β > 0, and a ``popularity`` mapping given):
each co-count is first divided by ``max(pop(c), 1) ** β`` (``pop`` = all-time
click count), the usual fix for item-kNN's bias towards items everyone clicks;
the row is then normalised by its largest damped value. Without the mapping, or
with β = 0, co-counts are used as they are.

The trending prior is normalised by the top trending score; the forward-decay
factor is the same for every item, so this needs no clock.

The reason an item is shown is its single largest term: (source, signal), or
"trending" when the prior outweighs every personalised term.

Cost is linear in the number of fetched candidates (sources × candidates_per_item
per signal, ~1,000 at the defaults); nothing here ever walks the catalogue.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

ReasonKind = Literal["co_clicked", "similar", "same_category", "trending"]
CO_CLICKED: Final = "co_clicked"
SIMILAR: Final = "similar"
SAME_CATEGORY: Final = "same_category"
TRENDING: Final = "trending"


class BlendConfig(BaseModel):
    """The blend's weights, with the shipped defaults chosen on ml-latest-small's
    validation part (docs/evaluation.md). Nested in ``serving.settings.ServingSettings``
    as ``blend`` (env ``STREAMREC_SERVING_BLEND__W_EMB=0.3``, ...)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Distinct most-recent items used as sources.
    history_items: int = Field(default=10, ge=1, le=50)
    # The source at position p (0 = newest) weighs decay**p.
    recency_decay: float = Field(default=0.8, gt=0.0, le=1.0)
    # Co-occurrence weight; each source's row is normalised to [0, 1].
    w_co: float = Field(default=1.0, ge=0.0)
    # Embedding cosine weight (negative cosines clipped to 0).
    w_emb: float = Field(default=0.25, ge=0.0)
    # Content (categories and tags) cosine weight, for cold candidates only (not
    # in the embedding index). 0.2 was chosen on ml-latest-small's validation
    # part over 0, 0.05 and 0.5, and holds or helps on both halves
    # (benchmarks/content_weight.py; docs/own-data.md).
    w_content: float = Field(default=0.2, ge=0.0)
    # Trending prior (normalised by the top score); also orders the filler.
    w_trend: float = Field(default=0.2, ge=0.0)
    candidates_per_item: int = Field(default=50, ge=1, le=1000)
    # β of co(s, c) / pop(c)**β; takes effect where the candidates' popularity is
    # given (Candidates.popularity): the server and the evaluation both give it.
    pop_damping: float = Field(default=0.15, ge=0.0, le=2.0)


@dataclass(frozen=True, slots=True)
class Candidates:
    """What the blend ranks for one user, as fetched (``serving.reader.UserState`` + index)."""

    sources: Sequence[str]  # the user's recent distinct items, newest first
    co: Mapping[str, Sequence[tuple[str, float]]]  # source -> co row, best first
    emb: Mapping[str, Sequence[tuple[str, float]]]  # source -> embedding neighbours
    trending: Sequence[tuple[str, float]]  # the prior list, best first
    # item -> all-time clicks, for popularity damping; None: no damping.
    popularity: Mapping[str, float] | None = None
    # source -> content neighbours among cold items (offline.content), best first.
    content: Mapping[str, Sequence[tuple[str, float]]] = field(default_factory=dict)
    # source -> the session linear model's row (offline.linear), best first; read
    # by the learned ranker (serving.ranker), not by the blend.
    linear: Mapping[str, Sequence[tuple[str, float]]] = field(default_factory=dict)
    # item -> the time (ms) of its first click in the index version's build
    # (offline.index ItemIndex.first_seen), for the candidate's age; read by the
    # learned ranker only. An item clicked first after the build is absent.
    first_seen: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reason:
    kind: ReasonKind
    because_of: str | None


@dataclass(frozen=True, slots=True)
class Scored:
    item_id: str
    score: float
    reason: Reason
    # False for trending filler. A personalised item whose largest term is the
    # trending prior keeps True, so "was any of this personal?" needs no guessing.
    personalised: bool = True


_TRENDING_REASON: Final = Reason(TRENDING, None)


def recent_sources(history: Sequence[str], n: int) -> list[str]:
    """The ``n`` most recent distinct items of a newest-first history."""
    out: list[str] = []
    seen: set[str] = set()
    for item in history:
        if len(out) >= n:
            break
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def scaled_co(
    row: Sequence[tuple[str, float]],
    pop_get: Callable[[str], float | None] | None,
    beta: float,
) -> tuple[Sequence[tuple[str, float]], float]:
    """A co row as the blend weighs it: each count damped by its item's
    popularity (``pop_get`` given; None: as it is), and the row's scale, its
    largest (damped) value, taken before any exclusion."""
    if pop_get is not None:
        row = _damped(row, pop_get, beta)
    return row, max(v for _, v in row)


def _damped(
    row: Sequence[tuple[str, float]],
    pop_get: Callable[[str], float | None],
    beta: float,
) -> list[tuple[str, float]]:
    """``(item, co / max(pop(item), 1) ** beta)`` for one co row, in the row's order."""
    out: list[tuple[str, float]] = []
    for item, value in row:
        p = pop_get(item)
        out.append((item, value / max(p, 1.0) ** beta if p else value))
    return out


_DEFAULT = BlendConfig()  # frozen, so one shared default is safe


def blend(
    cands: Candidates,
    exclude: Collection[str],
    k: int,
    cfg: BlendConfig = _DEFAULT,
    allow: Callable[[str], bool] | None = None,
) -> list[Scored]:
    """Rank candidates for one user; see the module docstring for the formula.

    Personalised candidates come first, by score; trending items then fill up to
    ``k``. Items in ``exclude`` or ``cands.sources`` never appear, nor items
    ``allow`` refuses (a request's category rule, serving.filters); a refused
    item still counts in its row's normalisation, as an excluded one does. Ties
    break on item id. ``cands.popularity`` (item -> all-time clicks, the ``pop``
    set) is read only when ``cfg.pop_damping`` > 0; items missing from it count
    as 1 (not damped).
    """
    if k <= 0:
        return []
    sources, co, emb, trending = cands.sources, cands.co, cands.emb, cands.trending
    content = cands.content
    popularity = cands.popularity
    banned = set(exclude)
    banned.update(sources)

    trend_norm = trend_norms(trending)

    total: dict[str, float] = {}
    best: dict[str, tuple[float, Reason]] = {}
    per_item = cfg.candidates_per_item
    beta = cfg.pop_damping
    damping = beta > 0 and popularity is not None
    pop_get = popularity.get if popularity is not None else None
    for p, src in enumerate(sources):
        recency = cfg.recency_decay**p
        signals: tuple[tuple[ReasonKind, Sequence[tuple[str, float]], float], ...] = (
            (CO_CLICKED, co.get(src, ()), cfg.w_co),
            (SIMILAR, emb.get(src, ()), cfg.w_emb),
            (SAME_CATEGORY, content.get(src, ()), cfg.w_content),
        )
        for kind, row, weight in signals:
            row = row[:per_item]
            if weight <= 0 or not row:
                continue
            factor = recency * weight
            if kind == CO_CLICKED:
                # Normalise by the row's max before exclusions, so dropping the
                # user's own items does not inflate what is left.
                row, scale = scaled_co(row, pop_get if damping else None, beta)
                if scale <= 0:
                    continue
                factor /= scale
            reason = Reason(kind, src)
            for item, value in row:
                if value <= 0 or item in banned or (allow is not None and not allow(item)):
                    continue
                contrib = factor * value
                total[item] = total.get(item, 0.0) + contrib
                prev = best.get(item)
                # Strictly greater: on equal terms the newer source and co_clicked
                # (visited first) keep the reason, so it is deterministic.
                if prev is None or contrib > prev[0]:
                    best[item] = (contrib, reason)

    # Select the top k on plain (-score, item) tuples and build Scored objects
    # only for those: ~1,000 candidates for k = 10 costs a heap pass, not a
    # sort of objects (the offline evaluation calls this ~10^5 times per run).
    w_trend = cfg.w_trend
    keyed = [
        (-(personal + w_trend * trend_norm.get(item, 0.0)), item)
        for item, personal in total.items()
    ]
    top = heapq.nsmallest(k, keyed) if len(keyed) > k else sorted(keyed)
    out: list[Scored] = []
    for neg_score, item in top:
        prior = w_trend * trend_norm.get(item, 0.0)
        top_term, reason = best[item]
        out.append(Scored(item, -neg_score, _TRENDING_REASON if prior > top_term else reason))
    return fill_with_trending(out, trending, trend_norm, banned, k, w_trend, allow)


def trend_norms(trending: Sequence[tuple[str, float]]) -> dict[str, float]:
    """Each trending item's score over the top score (negatives clipped to 0)."""
    top_trend = max((s for _, s in trending), default=0.0)
    if top_trend <= 0:
        return {}
    return {item: max(s, 0.0) / top_trend for item, s in trending}


def fill_with_trending(
    out: list[Scored],
    trending: Sequence[tuple[str, float]],
    trend_norm: Mapping[str, float],
    banned: Collection[str],
    k: int,
    w_trend: float,
    allow: Callable[[str], bool] | None = None,
) -> list[Scored]:
    """Append trending filler to ``out`` (the personalised items) until it holds ``k``.

    The filler is the trending items not already shown (nor banned, nor refused
    by ``allow``), best first. Their score
    is the prior alone, so it may exceed a weak personalised score; they still
    rank after every personalised item because a personal signal beats none.
    """
    if len(out) >= k:
        return out
    chosen = {s.item_id for s in out}
    filler = sorted(
        (
            Scored(item, w_trend * trend_norm.get(item, 0.0), _TRENDING_REASON, False)
            for item, _ in trending
            if item not in banned and item not in chosen and (allow is None or allow(item))
        ),
        key=lambda s: (-trend_norm.get(s.item_id, 0.0), s.item_id),
    )
    for s in filler:
        if len(out) >= k:
            break
        if s.item_id in chosen:  # a duplicate in the input list
            continue
        chosen.add(s.item_id)
        out.append(s)
    return out
