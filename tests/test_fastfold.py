"""The consumer's fast fold (numpy walk, pair counts as arrays) equals the reference fold.

``consumer.logic.fold`` is the specification; ``consumer.fastfold.fast_fold`` is
what ``consumer.state.Ingest`` runs. Every field of the delta must be equal, and
the pair counts, summed in whatever order, equal the reference's exactly.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.fastfold import PairCounts, fast_fold
from consumer.logic import Entry, SessionRules, StateDelta, fold, rebase
from core.events import ClickEvent
from core.feedback import Feedback

T0 = 1_600_000_000_000
MIN = 60_000
HALF_LIFE = 7 * 24 * 3600 * 1000

FIELDS = ("histories", "added", "pop", "trend_ts", "trend_w", "events", "pairs", "max_ts")


def _compare(
    events: list[ClickEvent],
    histories: dict[str, list[Entry]],
    rules: SessionRules,
    co_decay: tuple[int, int] | None,
) -> None:
    positions = [(k % 3, k) for k in range(len(events))]
    ref = fold(events, histories, rules, co_decay=co_decay, positions=positions)
    pairs = PairCounts()
    fast = fast_fold(events, histories, rules, pairs, co_decay=co_decay, positions=positions)
    for name in FIELDS:
        assert getattr(fast, name) == getattr(ref, name), name
    assert fast.co == {}  # the pairs went to `pairs`
    assert pairs.as_mapping() == dict(ref.co)
    assert all(type(v) is int for v in pairs.as_mapping().values())
    # Histories keep their positions (not part of Entry equality).
    for user, h in ref.histories.items():
        assert [e.pos for e in fast.histories[user]] == [e.pos for e in h]


TYPES = ["click", "view", "cart", "rating", "dislike"]
FEEDBACK = Feedback(type_weights={"click": 1.0, "view": 0.5, "cart": 3.0, "rating": 1.0})


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[ClickEvent], dict[str, list[Entry]], SessionRules]:
    window = draw(st.integers(1, 12))
    rules = SessionRules(
        gap_ms=draw(st.sampled_from([5 * MIN, 30 * MIN, 10**12])),
        pair_window=window,
        history_len=draw(st.integers(1, 15)),
        linear_pair_weights=draw(st.booleans()),
        forward_weight=draw(st.integers(1, 3)),
        feedback=FEEDBACK,
    )
    users = draw(st.integers(1, 6))
    items = draw(st.integers(1, 12))
    n = draw(st.integers(0, 80))
    weighted = draw(st.booleans())
    sessions = draw(st.booleans())
    t = T0
    events = []
    for _ in range(n):
        t += draw(st.integers(-2 * MIN, 20 * MIN))  # a little out of order, too
        etype = draw(st.sampled_from(TYPES)) if weighted else "click"
        weight = draw(st.sampled_from([None, 0.5, 2.0, 4.0])) if weighted else None
        events.append(
            ClickEvent(
                f"u{draw(st.integers(0, users - 1))}",
                f"i{draw(st.integers(0, items - 1))}",
                t,
                etype,
                weight,
                f"s{draw(st.integers(0, 1))}" if sessions and draw(st.booleans()) else None,
            )
        )
    histories: dict[str, list[Entry]] = {}
    for u in range(draw(st.integers(0, users))):
        length = draw(st.integers(0, 20))
        histories[f"u{u}"] = [
            Entry(
                T0 - k * draw(st.integers(0, 10 * MIN)),
                f"i{draw(st.integers(0, items - 1))}",
                f"s{draw(st.integers(0, 1))}" if sessions and draw(st.booleans()) else None,
                (0, k),
                draw(st.integers(0, 9)) == 0,
            )
            for k in range(length)
        ]
    return events, histories, rules


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=streams(), decay=st.booleans())
def test_fast_fold_equals_the_reference(
    case: tuple[list[ClickEvent], dict[str, list[Entry]], SessionRules], decay: bool
) -> None:
    events, histories, rules = case
    ref_time = (T0 // HALF_LIFE) * HALF_LIFE
    _compare(events, histories, rules, (ref_time, HALF_LIFE) if decay else None)


def test_fast_fold_adds_to_what_a_delta_and_the_counts_hold() -> None:
    """Folding in polls into one delta and one PairCounts equals folding once."""
    rng = np.random.default_rng(3)
    rules = SessionRules(pair_window=5, history_len=7)
    events = [
        ClickEvent(f"u{rng.integers(0, 9)}", f"i{rng.integers(0, 25)}", T0 + k * MIN)
        for k in range(600)
    ]
    whole = fold(events, {}, rules)
    delta, pairs = StateDelta(), PairCounts()
    for lo in range(0, len(events), 47):
        fast_fold(events[lo : lo + 47], {}, rules, pairs, delta)
    for name in FIELDS:
        assert getattr(delta, name) == getattr(whole, name), name
    assert pairs.as_mapping() == dict(whole.co)


@pytest.mark.realdata
def test_fast_fold_equals_the_reference_on_movielens(movielens_dir: Any) -> None:
    """ml-latest-small's first 30,000 events in polls of 2,000, with the shipped rules,
    with and without decay, histories carried between polls."""
    from producer.movielens import load_ratings, to_events

    events = list(to_events(load_ratings(movielens_dir, limit=30_000)))
    rules = SessionRules()
    for co_decay in (None, ((events[-1].ts // HALF_LIFE) * HALF_LIFE, HALF_LIFE)):
        stored: dict[str, list[Entry]] = {}
        for lo in range(0, len(events), 2000):
            batch = events[lo : lo + 2000]
            ref = fold(batch, stored, rules, co_decay=co_decay)
            pairs = PairCounts()
            fast = fast_fold(batch, stored, rules, pairs, co_decay=co_decay)
            for name in FIELDS:
                assert getattr(fast, name) == getattr(ref, name), name
            assert pairs.as_mapping() == dict(ref.co)
            stored.update({u: h[: rules.pair_window] for u, h in ref.histories.items()})


def test_increments_too_large_for_int64_are_exact() -> None:
    """Weights far above any shipped setting: Python integers, as the reference."""
    rules = SessionRules(
        pair_window=10, forward_weight=100, feedback=Feedback(type_weights={"buy": 1e16})
    )
    events = [ClickEvent("u", f"i{k}", T0 + k, "buy") for k in range(5)]
    ref = fold(events, {}, rules, co_decay=((T0 // HALF_LIFE) * HALF_LIFE, HALF_LIFE))
    pairs = PairCounts()
    fast_fold(events, {}, rules, pairs, co_decay=((T0 // HALF_LIFE) * HALF_LIFE, HALF_LIFE))
    assert max(ref.co.values()) > 2**63
    assert pairs.as_mapping() == dict(ref.co)


# -- PairCounts ---------------------------------------------------------------------


def test_pair_counts_sum_rebase_filter_and_size() -> None:
    rng = np.random.default_rng(11)
    want: Counter[tuple[str, str]] = Counter()
    pairs = PairCounts()
    for _ in range(20):
        chunk = {
            (f"r{rng.integers(0, 30)}", f"n{rng.integers(0, 30)}"): int(rng.integers(1, 10**12))
            for _ in range(50)
        }
        pairs.add_mapping(chunk)
        want.update(chunk)
    assert pairs.as_mapping() == dict(want)
    assert len(pairs) == len(want)
    assert pairs.at_least(len(want)) and not pairs.at_least(len(want) + 1)
    factor = 2.0 ** (-3.7)
    pairs.rebase(factor)
    assert pairs.as_mapping() == {k: rebase(v, factor) for k, v in want.items()}
    rows = pairs.rows()
    assert rows == {
        a: {b: rebase(v, factor) for (r, b), v in want.items() if r == a} for a, _ in want
    }
    # Only the rows a filter keeps move to another PairCounts, with its own codes.
    other = PairCounts()
    other.add_mapping({("r1", "x"): 5})
    other.add_rows_of(pairs, lambda item: item in {"r1", "r2"})
    expect = {k: rebase(v, factor) for k, v in want.items() if k[0] in {"r1", "r2"}}
    expect[("r1", "x")] = expect.get(("r1", "x"), 0) + 5
    assert other.as_mapping() == expect
    empty = PairCounts()
    assert not empty and len(empty) == 0 and empty.rows() == {}
    empty.rebase(0.5)
    assert empty.as_mapping() == {}


def test_pair_counts_rebase_of_python_integers_rounds_as_the_reference() -> None:
    pairs = PairCounts()
    pairs.add_mapping({("a", "b"): 2**70 + 12345, ("a", "c"): 3})
    pairs.rebase(0.3)
    assert pairs.as_mapping() == {
        ("a", "b"): math.floor((2**70 + 12345) * 0.3 + 0.5),
        ("a", "c"): 1,
    }


def test_sums_past_int64_are_exact() -> None:
    """Each increment fits an int64 but their sum does not (the largest weight the
    validator accepts, late in a decay epoch, thousands of times): Python integers."""
    from consumer.logic import CO_EPOCH_HALF_LIVES, landmark
    from consumer.state import StoreConfig
    from core.events import MAX_WEIGHT

    cfg = StoreConfig()
    hl = cfg.co_half_life_ms
    assert hl is not None
    ref = landmark(T0, hl, CO_EPOCH_HALF_LIVES)
    t = ref + int(15.9 * hl)
    events = [
        ClickEvent("u", "ab"[k % 2], t + k * 1000, "purchase", MAX_WEIGHT) for k in range(3400)
    ]
    want = fold(events, {}, cfg.rules, co_decay=(ref, hl)).co
    assert max(want.values()) > 2**63
    whole, polls = PairCounts(), PairCounts()
    fast_fold(events, {}, cfg.rules, whole, co_decay=(ref, hl))
    stored: dict[str, list[Entry]] = {}
    for lo in range(0, len(events), 500):
        d = fast_fold(events[lo : lo + 500], stored, cfg.rules, polls, co_decay=(ref, hl))
        stored.update(d.histories)
    assert whole.as_mapping() == dict(want) == polls.as_mapping()
