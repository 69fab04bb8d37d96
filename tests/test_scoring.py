"""The vectorised blend (serving/scoring.py) ranks exactly as the reference (serving/blend.py).

Same ids in the same order, same reasons and personalised flags, scores equal
within 1e-9 relative: on thousands of random cases (hypothesis) and on the
state a replay of real MovieLens events builds.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.state import PartitionBatch, StoreConfig
from evaluation.memory import MemoryState
from evaluation.prequential import build_item_index
from offline.index import ItemIndex
from offline.job import OfflineSettings
from producer.movielens import load_ratings, to_events
from serving.blend import BlendConfig, Candidates, Scored, blend
from serving.filters import CategoryRule, Filters
from serving.reader import ReadSpec, UserState
from serving.scoring import (
    EMPTY_ROW,
    ArrayCandidates,
    Row,
    Vocab,
    damping_array,
    fast_blend,
    trend_prior,
)

Pairs = list[tuple[str, float]]
ITEMS = [f"i{n}" for n in range(30)]
# Each item's categories (none for every fifth): what a request's category rule reads.
CATEGORIES = {
    item: frozenset(c for j, c in enumerate("abcd") if (n >> j) & 1 and n % 5)
    for n, item in enumerate(ITEMS)
}
CATS = sorted("abcde")  # "e" holds no item


def categories_of(item: str) -> frozenset[str]:
    return CATEGORIES.get(item, frozenset())


def rule_of(include: set[str], exclude: set[str]) -> CategoryRule | None:
    return Filters(categories=frozenset(include), exclude_categories=frozenset(exclude)).rule(
        categories_of, "test"
    )


def as_arrays(cands: Candidates, cfg: BlendConfig, vocab: Vocab) -> ArrayCandidates:
    """The reference's inputs prepared as serving.items prepares its arrays."""
    co = [Row.of(vocab, cands.co.get(s, [])) for s in cands.sources]
    emb = [Row.of(vocab, cands.emb.get(s, [])) for s in cands.sources]
    trending = trend_prior(Row.of(vocab, list(cands.trending)), cfg.w_trend, vocab)
    damping = None
    if cands.popularity is not None:
        damping = damping_array(cands.popularity, cfg.pop_damping, vocab)
        damping = np.concatenate([damping, np.ones(len(vocab) - len(damping))])
    content = [Row.of(vocab, cands.content.get(s, [])) for s in cands.sources]
    return ArrayCandidates(cands.sources, co, emb, trending, damping, content)


def assert_same(reference: list[Scored], fast: list[Scored]) -> None:
    assert [(s.item_id, s.reason, s.personalised) for s in fast] == [
        (s.item_id, s.reason, s.personalised) for s in reference
    ]
    for a, b in zip(reference, fast, strict=True):
        assert b.score == pytest.approx(a.score, rel=1e-9, abs=0.0)


def check(
    cands: Candidates,
    exclude: set[str],
    k: int,
    cfg: BlendConfig,
    rule: CategoryRule | None = None,
    vocab: Vocab | None = None,
) -> list[Scored]:
    if vocab is None:
        vocab = Vocab()
        # Some ids are known before the request (a warm vocabulary), like a worker's.
        vocab.codes(ITEMS[::3])
    reference = blend(cands, exclude, k, cfg, rule.allows if rule is not None else None)
    fast = fast_blend(as_arrays(cands, cfg, vocab), exclude, k, cfg, vocab, rule)
    assert_same(reference, fast)
    if rule is not None:
        assert all(rule.allows(s.item_id) for s in reference)
    return reference


# -- random cases ------------------------------------------------------------------------------
item = st.sampled_from(ITEMS)
# Few distinct values, so ties (the hard part of the order) are common.
count = st.sampled_from([1.0, 2.0, 3.0, 5.0, 8.0, 40.0, 0.5])
cosine = st.sampled_from([-0.5, 0.0, 0.1, 0.3, 0.3, 0.9, 1.0])


def ranked(values: st.SearchStrategy[float], max_size: int = 12) -> st.SearchStrategy[Pairs]:
    """A ranked list with distinct members, as a Redis row or FAISS gives it."""
    return st.dictionaries(item, values, max_size=max_size).map(
        lambda d: sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))
    )


Case = tuple[Candidates, set[str], int, BlendConfig, CategoryRule | None]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    sources = draw(st.lists(item, max_size=6, unique=True))
    co = {s: draw(ranked(count)) for s in sources if draw(st.booleans())}
    emb = {s: draw(ranked(cosine)) for s in sources if draw(st.booleans())}
    content = {s: draw(ranked(cosine)) for s in sources if draw(st.booleans())}
    trending = draw(ranked(st.sampled_from([0.0, 1.0, 2.0, 2.0, 7.5, 100.0]), max_size=15))
    popularity = draw(
        st.none() | st.dictionaries(item, st.sampled_from([1.0, 2.0, 10.0, 1e4, 0.0, 0.5]))
    )
    exclude = draw(st.sets(item, max_size=6))
    cfg = BlendConfig(
        recency_decay=draw(st.sampled_from([0.5, 0.8, 1.0])),
        w_co=draw(st.sampled_from([0.0, 0.5, 1.0])),
        w_emb=draw(st.sampled_from([0.0, 0.25, 1.0])),
        w_content=draw(st.sampled_from([0.0, 0.1, 1.0])),
        w_trend=draw(st.sampled_from([0.0, 0.2, 2.0])),
        candidates_per_item=draw(st.sampled_from([1, 3, 50])),
        pop_damping=draw(st.sampled_from([0.0, 0.15, 1.0])),
    )
    k = draw(st.integers(min_value=0, max_value=15))
    cats = st.sets(st.sampled_from(CATS), max_size=2)
    rule = draw(st.none() | st.builds(rule_of, cats, cats))
    cands = Candidates(sources, co, emb, trending, popularity, content)
    return cands, exclude, k, cfg, rule


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_fast_blend_equals_the_reference_on_random_cases(case: Case) -> None:
    check(*case)


def seeded_case(rnd: random.Random) -> Case:
    """The same space as ``cases()``, drawn from a seeded generator: thousands cost
    seconds, where hypothesis spends most of its time drawing."""

    def ranked_list(values: list[float], max_size: int = 12) -> Pairs:
        d = {rnd.choice(ITEMS): rnd.choice(values) for _ in range(rnd.randint(0, max_size))}
        return sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))

    counts = [1.0, 2.0, 3.0, 5.0, 8.0, 40.0, 0.5]
    cosines = [-0.5, 0.0, 0.1, 0.3, 0.3, 0.9, 1.0]
    sources = rnd.sample(ITEMS, rnd.randint(0, 6))
    co = {src: ranked_list(counts) for src in sources if rnd.random() < 0.6}
    emb = {src: ranked_list(cosines) for src in sources if rnd.random() < 0.5}
    content = {src: ranked_list(cosines) for src in sources if rnd.random() < 0.4}
    trending = ranked_list([0.0, 1.0, 2.0, 2.0, 7.5, 100.0], 15)
    popularity = (
        None
        if rnd.random() < 0.3
        else {i: rnd.choice([1.0, 2.0, 10.0, 1e4, 0.0, 0.5]) for i in rnd.sample(ITEMS, 10)}
    )
    exclude = set(rnd.sample(ITEMS, rnd.randint(0, 6)))
    cfg = BlendConfig(
        recency_decay=rnd.choice([0.5, 0.8, 1.0]),
        w_co=rnd.choice([0.0, 0.5, 1.0, 1.0]),
        w_emb=rnd.choice([0.0, 0.25, 1.0]),
        w_content=rnd.choice([0.0, 0.1, 1.0]),
        w_trend=rnd.choice([0.0, 0.2, 2.0]),
        candidates_per_item=rnd.choice([1, 3, 50]),
        pop_damping=rnd.choice([0.0, 0.15, 1.0]),
    )
    k = rnd.randint(0, 15)
    rule = None
    if rnd.random() < 0.4:
        rule = rule_of(set(rnd.sample(CATS, rnd.randint(0, 2))), set(rnd.sample(CATS, 1)))
    return Candidates(sources, co, emb, trending, popularity, content), exclude, k, cfg, rule


def test_fast_blend_equals_the_reference_on_seeded_random_cases() -> None:
    """5,000 more cases, and a tally that shows they reach what matters:
    every reason kind, filler, ties, damping and category rules (not a vacuous
    comparison)."""
    rnd = random.Random(20261201)
    seen = dict.fromkeys(
        ["co_clicked", "similar", "same_category", "trending", "filler", "tie", "damped", "ruled"],
        0,
    )
    for _ in range(5000):
        cands, exclude, k, cfg, rule = seeded_case(rnd)
        out = check(cands, exclude, k, cfg, rule)
        seen["ruled"] += rule is not None and bool(out)
        for s in out:
            seen["filler" if not s.personalised else s.reason.kind] += 1
        scores = [s.score for s in out if s.personalised]
        seen["tie"] += len(scores) - len(set(scores))
        seen["damped"] += cfg.pop_damping > 0 and cands.popularity is not None and bool(cands.co)
    assert all(n > 100 for n in seen.values()), seen


def test_category_rules_on_one_growing_vocabulary() -> None:
    """One worker's vocabulary across requests: the verdicts each rule keeps per
    code stay right while new codes arrive (they are filled in as met)."""
    rnd = random.Random(7)
    vocab = Vocab()
    rules = [rule_of({"a"}, set()), rule_of({"b", "c"}, {"a"}), rule_of(set(), {"d"})]
    for n in range(1500):
        cands, exclude, k, cfg, _ = seeded_case(rnd)
        extra = f"new{n}"  # a code assigned mid-way, in no category
        cands = Candidates(
            cands.sources,
            {**cands.co, **({cands.sources[0]: [(extra, 9.0)]} if cands.sources else {})},
            cands.emb,
            cands.trending,
            cands.popularity,
        )
        check(cands, exclude, k, cfg, rnd.choice(rules), vocab)
    assert len(vocab) > 1000


def test_known_answers_carry_over() -> None:
    """A few of test_blend.py's known answers, through the fast path."""
    co = {"new": [("Z", 1.0), ("Q", 4.0)], "old": [("Z", 3.0)]}
    out = check(Candidates(["new", "old"], co, {}, []), set(), 2, BlendConfig())
    assert [s.item_id for s in out] == ["Z", "Q"] and out[0].score == pytest.approx(1.05)
    pop: Mapping[str, float] = {"P": 64.0, "N": 4.0}
    cfg = BlendConfig(w_emb=0.0, w_trend=0.0, pop_damping=0.5)
    row: Sequence[tuple[str, float]] = [("P", 8.0), ("N", 4.0), ("U", 2.0)]
    out = check(Candidates(["A"], {"A": row}, {}, [], pop), set(), 3, cfg)
    assert [s.item_id for s in out] == ["N", "U", "P"]
    assert check(Candidates([], {}, {}, [("b", 5.0), ("a", 5.0)]), {"b"}, 5, cfg)[0].item_id == "a"


def test_an_empty_row_and_no_trending() -> None:
    vocab = Vocab()
    cfg = BlendConfig()
    cands = ArrayCandidates(["A"], [EMPTY_ROW], [EMPTY_ROW], trend_prior(EMPTY_ROW, 0.2, vocab))
    assert fast_blend(cands, set(), 5, cfg, vocab) == []


# -- real cases ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Replayed:
    """One request on MovieLens state: the user's read and the blend's inputs."""

    at: int  # the event's position in the replay
    state: UserState
    cands: Candidates
    index: ItemIndex
    now_ms: int  # the newest event time the state holds


def replayed_requests(movielens_dir: Path, every: int) -> Iterator[Replayed]:
    """Replay 12,000 ratings; then, for every ``every``-th of the next 6,000, the
    request of its user on the state before it (each event is applied after)."""
    df = load_ratings(movielens_dir, limit=18_000)
    events = list(to_events(df))
    state = MemoryState(StoreConfig())
    state.apply("t", [PartitionBatch(0, 0, 12_000, list(enumerate(events[:12_000])))])
    index = build_item_index(df, events[12_000].ts, OfflineSettings(dim=16))
    cfg = BlendConfig()
    spec = ReadSpec(history_len=50, n_sources=cfg.history_items, per_item=50, n_trend=100)
    for i in range(12_000, 18_000):
        e = events[i]
        if i % every == 0:
            us = state.read_user(e.user_id, spec)
            emb = index.similar_many(us.sources, cfg.candidates_per_item) if us.sources else {}
            cands = Candidates(us.sources, us.co, emb, us.trending, us.pop)
            yield Replayed(i, us, cands, index, events[i - 1].ts)
        state.apply("t", [PartitionBatch(0, i, i + 1, [(i, e)])])


@pytest.mark.realdata
def test_fast_blend_equals_the_reference_on_movielens_state(movielens_dir: Path) -> None:
    """Replay 12,000 ratings; at every 5th of the next 6,000, both rank for that user."""
    cfg = BlendConfig()
    vocab = Vocab()
    compared = personalised = 0
    for req in replayed_requests(movielens_dir, 5):
        seen = req.state.history_items
        reference = blend(req.cands, seen, 20, cfg)
        fast = fast_blend(as_arrays(req.cands, cfg, vocab), seen, 20, cfg, vocab)
        assert_same(reference, fast)
        compared += 1
        personalised += any(s.personalised for s in reference)
    assert compared == 1200 and personalised > 1000
