"""Known-answer tests of the pure session / pair / trending logic."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from consumer.logic import (
    CO_SCALE,
    Entry,
    SessionRules,
    decayed_count,
    fold,
    landmark,
    partners,
    session_window,
    step,
    trend_weights,
)
from core.events import ClickEvent

MIN = 60_000
T0 = 1_600_000_000_000
# Unweighted pairs (each counts 1), so the known answers below read as counts.
# Flat, symmetric pair counts: weights and asymmetry have tests of their own.
RULES = SessionRules(
    gap_ms=30 * MIN, pair_window=3, history_len=5, linear_pair_weights=False, forward_weight=1
)


def ev(user: str, item: str, minute: float, sid: str | None = None) -> ClickEvent:
    return ClickEvent(user, item, T0 + int(minute * MIN), session_id=sid)


def hist(*pairs: tuple[str, float]) -> list[Entry]:
    """History newest first from (item, minute) pairs given newest first."""
    return [Entry(T0 + int(m * MIN), item) for item, m in pairs]


def test_window_stops_at_the_gap() -> None:
    h = hist(("c", 50), ("b", 40), ("a", 0))  # a is 40 min before b: another session
    assert [e.item for e in session_window(h, T0 + 55 * MIN, None, RULES)] == ["c", "b"]


def test_event_after_gap_starts_a_new_session() -> None:
    h = hist(("b", 10), ("a", 5))
    assert session_window(h, T0 + 41 * MIN, None, RULES) == []
    assert partners(h, ev("u", "c", 41), RULES) == []


def test_gap_is_inclusive_at_exactly_the_limit() -> None:
    h = hist(("a", 0))
    assert partners(h, ev("u", "b", 30), RULES) == ["a"]
    assert partners(h, ev("u", "b", 30.001), RULES) == []


def test_window_caps_at_pair_window_entries() -> None:
    h = hist(("e", 5), ("d", 4), ("c", 3), ("b", 2), ("a", 1))
    assert partners(h, ev("u", "x", 6), RULES) == ["e", "d", "c"]


def test_partners_are_distinct_and_never_self() -> None:
    h = hist(("a", 3), ("b", 2), ("a", 1))
    assert partners(h, ev("u", "a", 4), RULES) == ["b"]
    assert partners(h, ev("u", "c", 4), RULES) == ["a", "b"]


def test_explicit_session_ids_split_sessions_within_the_gap() -> None:
    h = [Entry(T0, "a", "s1")]
    assert partners(h, ev("u", "b", 1, sid="s2"), RULES) == []
    assert partners(h, ev("u", "b", 1, sid="s1"), RULES) == ["a"]
    assert partners(h, ev("u", "b", 1), RULES) == ["a"]  # no id on one side: the gap decides


def test_step_prepends_and_caps_history() -> None:
    h = hist(*[(f"i{n}", n) for n in range(5, 0, -1)])
    new, _ = step(h, ev("u", "x", 6), RULES)
    assert [e.item for e in new] == ["x", "i5", "i4", "i3", "i2"]


def test_fold_counts_pairs_both_ways_and_popularity() -> None:
    events = [
        ev("u1", "a", 0),
        ev("u1", "b", 1),
        ev("u1", "c", 2),
        ev("u2", "a", 0),
        ev("u2", "b", 100),
    ]  # u2's b is in a new session: no pair
    delta = fold(events, {}, RULES)
    assert dict(delta.co) == {
        ("b", "a"): 1,
        ("a", "b"): 1,
        ("c", "b"): 1,
        ("b", "c"): 1,
        ("c", "a"): 1,
        ("a", "c"): 1,
    }
    assert dict(delta.pop) == {"a": 2, "b": 2, "c": 1}
    assert [e.item for e in delta.histories["u1"]] == ["c", "b", "a"]
    assert delta.events == 5
    assert delta.max_ts == T0 + 100 * MIN


def test_fold_continues_from_stored_history() -> None:
    stored = {"u1": hist(("a", 0))}
    delta = fold([ev("u1", "b", 1)], stored, RULES)
    assert dict(delta.co) == {("b", "a"): 1, ("a", "b"): 1}
    assert [e.item for e in delta.histories["u1"]] == ["b", "a"]


def test_fold_in_two_halves_equals_fold_in_one() -> None:
    events = [ev(f"u{n % 3}", f"i{n % 7}", n * 2) for n in range(60)]
    whole = fold(events, {}, RULES)
    first = fold(events[:25], {}, RULES)
    second = fold(events[25:], first.histories, RULES)
    assert whole.co == first.co + second.co
    assert Counter(whole.pop) == Counter(first.pop) + Counter(second.pop)
    assert whole.histories == {**first.histories, **second.histories}


def test_entry_round_trips() -> None:
    e = Entry(T0, "item:with|odd chars", "s")
    assert Entry.decode(e.encode()) == e


def test_forward_decay_known_answers() -> None:
    hl = 1000
    w = trend_weights({"a": [5000, 5000], "b": [4000]}, ref=4000, half_life_ms=hl)
    assert w == {"a": 4.0, "b": 1.0}
    # Two events one half-life old count as one event now.
    assert decayed_count(4.0, ref=4000, clock=6000, half_life_ms=hl) == pytest.approx(1.0)


def test_landmarks_are_epochs_of_event_time_so_terms_stay_bounded() -> None:
    hl = 1000
    assert landmark(0, hl) == 0
    assert landmark(255_999, hl) == 0
    assert landmark(256_000, hl) == 256_000
    assert landmark(600_000, hl) == 512_000
    for ts in (1, 10**6, 10**9, 1_700_000_000_000):
        ref = landmark(ts, hl)
        assert 1.0 <= 2.0 ** ((ts - ref) / hl) < 2.0**256


def test_co_decay_weighs_each_event_against_the_landmark() -> None:
    rules = SessionRules(pair_window=1, linear_pair_weights=False, forward_weight=1)
    events = [ev("u", "a", 0), ev("u", "b", 0), ev("u", "c", 2)]
    co = fold(events, {}, rules, co_decay=(T0, MIN)).co
    # Fixed point (CO_SCALE): at the landmark a pair counts CO_SCALE ...
    assert co[("b", "a")] == co[("a", "b")] == CO_SCALE
    assert co[("c", "b")] == 4 * CO_SCALE  # ... two half-lives later four times that
    assert fold(events, {}, rules).co[("c", "b")] == 1  # no decay: plain counts


def test_fold_keeps_each_event_position_on_its_entry() -> None:
    events = [ev("u", "a", 1), ev("u", "b", 2)]
    delta = fold(events, {}, RULES, positions=[(3, 40), (3, 41)])
    assert [e.pos for e in delta.histories["u"]] == [(3, 41), (3, 40)]
    assert Entry.decode(delta.histories["u"][0].encode()).pos == (3, 41)
    # The position is not part of equality.
    assert delta.histories["u"][0] == Entry(T0 + 2 * MIN, "b")


def test_fold_equals_stepping_event_by_event(rng: np.random.Generator) -> None:
    """The hot-path loop in fold must say exactly what step says, event by event."""
    rules = SessionRules(
        gap_ms=20 * MIN, pair_window=4, history_len=6, linear_pair_weights=False, forward_weight=2
    )
    minutes = np.cumsum(rng.integers(0, 40, size=400))
    events = [
        ClickEvent(
            f"u{rng.integers(0, 7)}",
            f"i{rng.integers(0, 15)}",
            T0 + int(m) * MIN,
            session_id=None if rng.random() < 0.7 else f"s{rng.integers(0, 2)}",
        )
        for m in minutes
    ]
    histories: dict[str, list[Entry]] = {}
    co: Counter[tuple[str, str]] = Counter()
    for e in events:
        new, found = step(histories.get(e.user_id, []), e, rules)
        histories[e.user_id] = new
        for other in found:
            # e follows other: other's row (what comes after it) gets the forward weight.
            co[(e.item_id, other)] += 1
            co[(other, e.item_id)] += rules.forward_weight
    delta = fold(events, {}, rules)
    assert delta.histories == histories
    assert delta.co == co
    # Folding in chunks from window-sized stored histories says the same.
    stored: dict[str, list[Entry]] = {}
    chunked: Counter[tuple[str, str]] = Counter()
    for lo in range(0, len(events), 37):
        part = fold(
            events[lo : lo + 37], {u: h[: rules.pair_window] for u, h in stored.items()}, rules
        )
        chunked += part.co
        for u, h in part.histories.items():
            stored[u] = (h[: part.added[u]] + stored.get(u, []))[: rules.history_len]
    assert chunked == co
    assert stored == histories


def test_pairs_are_counted_once_whatever_their_weights() -> None:
    events = [ev("u", "a", 0), ev("u", "b", 1), ev("u", "c", 2)]
    flat = fold(events, {}, RULES)
    weighted = fold(
        events,
        {},
        RULES.model_copy(update={"linear_pair_weights": True}),
    )
    assert flat.pairs == weighted.pairs == 3  # b-a, c-b, c-a
    # Window 3: the newest partner weighs 3, the next 2.
    assert weighted.co[("c", "b")] == 3 and weighted.co[("c", "a")] == 2


def test_forward_weight_favours_what_came_next() -> None:
    events = [ev("u", "a", 0), ev("u", "b", 1)]
    rules = RULES.model_copy(update={"forward_weight": 3})
    co = fold(events, {}, rules).co
    # b followed a: row a (what comes after a) gets 3, row b gets 1.
    assert co[("a", "b")] == 3 and co[("b", "a")] == 1
    assert fold(events, {}, RULES).co[("a", "b")] == 1
