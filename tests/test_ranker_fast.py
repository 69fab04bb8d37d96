"""The ranker's features over arrays (serving/ranker_fast.py) equal the reference's
(serving.ranker.features over serving.items.as_lists of the same arrays): every
value bit for bit, NaN where the reference has NaN, on random and real cases.
Equal, not close: a tree splits on exact thresholds."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_scoring import ITEMS, as_arrays, cases, replayed_requests, seeded_case

from serving.blend import (
    CO_CLICKED,
    SIMILAR,
    TRENDING,
    BlendConfig,
    Candidates,
    Reason,
    Scored,
    trend_norms,
)
from serving.items import as_lists
from serving.ranker import FEATURES, Moment, PoolConfig, extend_pool, features
from serving.ranker_fast import fast_features
from serving.scoring import Vocab, fast_blend

MIN = 60_000
Linear = dict[str, list[tuple[str, float]]]
SMALL_POOL = PoolConfig(pool=12, trend_extra=5, linear_extra=3)  # a random case's pool


def compare(
    cands: Candidates,
    pool: list[Scored] | None,
    exclude: set[str],
    cfg: BlendConfig,
    moment: Moment,
    linear: Linear,
    first_seen: dict[str, int],
    vocab: Vocab | None = None,
    size: PoolConfig = SMALL_POOL,
) -> np.ndarray:
    """Both matrices for one request; ``pool`` None: the API's pool of ``size``
    (the fast blend's best, then the extras)."""
    if vocab is None:
        vocab = Vocab()
        vocab.codes(ITEMS[::3])  # a warm vocabulary, like a worker's
    arrays = as_arrays(cands, cfg, vocab)
    popularity = (cands.popularity or {}).get
    lists = replace(
        as_lists(arrays, vocab, popularity, cfg.candidates_per_item),
        linear=linear,
        first_seen=first_seen,
    )
    if pool is None:
        first = fast_blend(arrays, exclude, size.pool, cfg, vocab)
        pool = extend_pool(first, lists, exclude, cfg, size)
        # The API's way: the trending head's pairs and norms made once per head.
        trend = arrays.trending
        assert trend.norms == trend_norms(lists.trending)
        head = Candidates(lists.sources, {}, {}, trend.pairs, linear=linear)
        assert extend_pool(first, head, exclude, cfg, size, None, trend.norms) == pool
    expected = features(lists, pool, moment, cfg)
    got = fast_features(arrays, pool, moment, cfg, vocab, popularity, linear, first_seen)
    assert got.shape == expected.shape == (len(pool), len(FEATURES))
    for j, name in enumerate(FEATURES):
        a, b = expected[:, j], got[:, j]
        assert np.array_equal(a, b, equal_nan=True), (name, a.tolist(), b.tolist())
    # The scratch slots are left as found: the next request starts clean.
    assert (vocab.scratch().slot == -1).all()
    return expected


def random_extras(rnd: random.Random, sources: list[str]) -> tuple[Linear, dict[str, int], Moment]:
    weights = [-0.2, 0.0, 0.05, 0.3, 0.3, 1.0]
    linear: Linear = {}
    for src in sources:
        if rnd.random() < 0.5:
            row = {rnd.choice(ITEMS): rnd.choice(weights) for _ in range(rnd.randint(0, 8))}
            linear[src] = sorted(row.items(), key=lambda kv: (-kv[1], kv[0]))
    first_seen = {i: rnd.randrange(0, 10 * MIN) for i in rnd.sample(ITEMS, rnd.randint(0, 20))}
    now = rnd.randrange(5 * MIN, 200 * MIN)
    stamps = sorted((rnd.randrange(0, now) for _ in range(rnd.randint(0, 12))), reverse=True)
    history = [(t, rnd.choice(ITEMS)) for t in stamps]
    clock = None if rnd.random() < 0.2 else now
    return linear, first_seen, Moment.of(clock, history, rnd.choice([MIN, 30 * MIN]))


def random_pool(rnd: random.Random) -> list[Scored]:
    kinds = [CO_CLICKED, SIMILAR, TRENDING]
    return [
        Scored(
            item, rnd.choice([0.0, 0.5, 2.0]), Reason(rnd.choice(kinds), None), rnd.random() < 0.5
        )
        for item in rnd.sample(ITEMS, rnd.randint(0, 20))
    ]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(), st.randoms(use_true_random=False), st.booleans())
def test_fast_features_equal_the_reference_on_random_cases(
    case: tuple, rnd: random.Random, own_pool: bool
) -> None:
    cands, exclude, _, cfg, _ = case
    linear, first_seen, moment = random_extras(rnd, list(cands.sources))
    pool = random_pool(rnd) if own_pool else None
    compare(cands, pool, exclude, cfg, moment, linear, first_seen)


def test_fast_features_equal_the_reference_on_seeded_random_cases() -> None:
    """4,000 more, with a tally showing the columns are reached (not all absent)."""
    rnd = random.Random(20261203)
    reached = dict.fromkeys(FEATURES, 0)
    vocab = Vocab()  # one growing vocabulary, as a worker's
    for n in range(4000):
        cands, exclude, _, cfg, _ = seeded_case(rnd)
        linear, first_seen, moment = random_extras(rnd, list(cands.sources))
        pool = random_pool(rnd) if n % 3 == 0 else None
        x = compare(cands, pool, exclude, cfg, moment, linear, first_seen, vocab if n % 2 else None)
        for j, name in enumerate(FEATURES):
            col = x[:, j]
            reached[name] += int(np.count_nonzero(~np.isnan(col) & (col != 0)))
    assert all(v > 100 for v in reached.values()), reached


def test_an_empty_pool_and_a_user_with_nothing() -> None:
    cfg = BlendConfig()
    moment = Moment.of(None, [], 30 * MIN)
    empty = Candidates([], {}, {}, [])
    assert compare(empty, [], set(), cfg, moment, {}, {}).shape == (0, len(FEATURES))
    pool = [Scored("i1", 0.0, Reason(TRENDING, None), False)]
    compare(empty, pool, set(), cfg, moment, {}, {})


@pytest.mark.realdata
def test_fast_features_equal_the_reference_on_movielens_state(movielens_dir: Path) -> None:
    """Replay 12,000 ratings; at every 10th of the next 6,000, both build the
    features of the API's pool (100 + 30) for that user."""
    cfg = BlendConfig()
    vocab = Vocab()
    compared = co_held = 0
    for req in replayed_requests(movielens_dir, 10):
        us = req.state
        moment = Moment.of(req.now_ms, us.history, 30 * MIN)
        x = compare(
            req.cands, None, us.history_items, cfg, moment, {}, dict(req.index.first_seen),
            vocab, size=PoolConfig(),
        )  # fmt: skip
        compared += 1
        co_held += int(np.count_nonzero(x[:, FEATURES.index("co_sources")]))
    assert compared == 600 and co_held > 10_000


def test_a_nan_in_a_row_counts_as_absent_in_both() -> None:
    """A degenerate embedding (a zero vector) gives NaN cosines; neither path lets
    one into a sum (the reference once did, the arrays never did)."""
    nan = float("nan")
    cands = Candidates(
        ["i1", "i2"],
        {"i1": [("i3", 4.0), ("i4", 1.0)]},
        {"i1": [("i3", nan), ("i5", 0.5)], "i2": [("i5", nan)]},
        [("i6", 3.0)],
        {},
    )
    pool = [Scored(i, 1.0, Reason(SIMILAR, "i1")) for i in ("i3", "i4", "i5", "i6")]
    x = compare(cands, pool, set(), BlendConfig(), Moment.of(None, [], MIN), {}, {})
    emb_sum = x[:, FEATURES.index("emb_sum")]
    assert emb_sum.tolist() == [0.0, 0.0, 0.5, 0.0]
