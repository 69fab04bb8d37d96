"""Typed feedback: what an event of each type adds, and negative feedback end to end."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from consumer.logic import CO_SCALE, Entry, SessionRules, event_weight, fold, step
from core.events import ClickEvent
from core.feedback import Feedback
from core.settings import RedisSettings
from serving.history import parse_history, seen_items, sources_of

MIN = 60_000
T0 = 1_600_000_000_000
FLAT = SessionRules(pair_window=3, linear_pair_weights=False, forward_weight=1)


def ev(item: str, minute: float, etype: str = "click", weight: float | None = None) -> ClickEvent:
    return ClickEvent("u", item, T0 + int(minute * MIN), etype, weight)


def test_each_type_weighs_what_the_setting_says() -> None:
    fb = Feedback()
    assert fb.weight("click", None) == 1.0
    assert fb.weight("view", None) == 0.5
    assert fb.weight("addtocart", None) == 2.0 and fb.weight("transaction", None) == 3.0
    assert fb.weight("something-new", None) == fb.default_weight == 1.0
    assert fb.weight("purchase", 2.0) == 6.0  # the event's weight multiplies its type's
    assert fb.weight("dislike", None) == 0.0 and fb.weight("dislike", 5.0) == 0.0
    assert fb.weight("click", -1.0) < 0  # a negative weight is negative feedback
    custom = Feedback(type_weights={"view": 0.25}, default_weight=0.0)
    assert custom.weight("view", None) == 0.25 and custom.weight("click", None) == 0.0


def test_ratings_below_the_threshold_are_negative_and_a_pivot_scales_the_rest() -> None:
    assert Feedback().weight("rating", 0.5) == 1.0  # shipped: every rating counts once
    fb = Feedback(rating_negative_below=2.5, rating_pivot=4.0)
    assert fb.weight("rating", 2.0) == 0.0
    assert fb.weight("rating", 2.5) == pytest.approx(2.5 / 4)
    assert fb.weight("rating", 5.0) == pytest.approx(1.25)
    assert fb.weight("rating", None) == 1.0


def test_a_weight_scales_pairs_popularity_and_trending() -> None:
    rules = FLAT.model_copy(update={"feedback": Feedback(type_weights={"buy": 3.0})})
    delta = fold([ev("a", 0), ev("b", 1, "buy")], {}, rules)
    assert delta.co[("b", "a")] == 3 and delta.co[("a", "b")] == 3
    assert delta.pop == {"a": 1.0, "b": 3.0}
    assert delta.trend_w == {"b": [3.0]} and delta.trend_ts["b"] == [T0 + MIN]
    # With co decay the weight is part of the event's fixed-point factor.
    decayed = fold([ev("a", 0), ev("b", 0, "buy")], {}, rules, co_decay=(T0, MIN))
    assert decayed.co[("b", "a")] == 3 * CO_SCALE


def test_a_fractional_weight_without_decay_is_rounded_per_pair() -> None:
    rules = SessionRules(pair_window=4, linear_pair_weights=True, forward_weight=2)
    delta = fold([ev("a", 0), ev("b", 1), ev("c", 2, "view")], {}, rules)
    # c (weight 0.5) pairs with b (base 4) and a (base 3): 2 and 1.5 -> 2, forward x2.
    assert delta.co[("c", "b")] == 2 and delta.co[("b", "c")] == 4
    assert delta.co[("c", "a")] == 2 and delta.co[("a", "c")] == 3
    assert all(isinstance(v, int) for v in delta.co.values())


def test_negative_feedback_adds_nothing_and_is_flagged_in_the_history() -> None:
    events = [ev("a", 0), ev("x", 1, "dislike"), ev("b", 2)]
    delta = fold(events, {}, FLAT)
    # x pairs with nothing, and b pairs with a across it (the session goes on).
    assert set(delta.co) == {("a", "b"), ("b", "a")}
    assert "x" not in delta.pop and "x" not in delta.trend_ts
    assert [(e.item, e.neg) for e in delta.histories["u"]] == [
        ("b", False),
        ("x", True),
        ("a", False),
    ]
    assert delta.events == 3
    neg = delta.histories["u"][1]
    assert Entry.decode(neg.encode()) == neg and Entry.decode(neg.encode()).neg
    with_pos = Entry(1, "x", None, (2, 7), True)
    assert Entry.decode(with_pos.encode()).pos == (2, 7)


@pytest.mark.parametrize(
    "feedback",
    [Feedback(), Feedback(rating_negative_below=2.5)],
    ids=["flat ratings (weighed inline)", "a rating threshold"],
)
def test_fold_equals_stepping_with_types_and_weights(
    rng: np.random.Generator, feedback: Feedback
) -> None:
    """fold's hot loop against step + event_weight, with every kind of type."""
    rules = SessionRules(
        gap_ms=20 * MIN,
        pair_window=4,
        history_len=6,
        linear_pair_weights=True,
        forward_weight=2,
        feedback=feedback,
    )
    types = ["click", "view", "purchase", "dislike", "rating", "other"]
    minutes = np.cumsum(rng.integers(0, 30, size=500))
    events = [
        ClickEvent(
            f"u{rng.integers(0, 5)}",
            f"i{rng.integers(0, 12)}",
            T0 + int(m) * MIN,
            str(rng.choice(types)),
            None if rng.random() < 0.5 else float(rng.choice([0.5, 1.0, 2.0, 4.0, -1.0])),
        )
        for m in minutes
    ]
    histories: dict[str, list[Entry]] = {}
    co: Counter[tuple[str, str]] = Counter()
    pop: Counter[str] = Counter()
    for e in events:
        new, found = step(histories.get(e.user_id, []), e, rules)
        histories[e.user_id] = new
        wt = event_weight(e, rules)
        if wt > 0:
            pop[e.item_id] += wt
        for p, other in enumerate(found):
            base = rules.pair_window - p
            co[(e.item_id, other)] += int(base * wt + 0.5) if wt != 1 else base
            co[(other, e.item_id)] += int(base * 2 * wt + 0.5) if wt != 1 else base * 2
    delta = fold(events, {}, rules)
    assert delta.histories == histories
    assert delta.co == co
    assert delta.pop == pytest.approx(dict(pop))


def test_the_newest_entry_decides_and_negatives_are_never_sources() -> None:
    raw = [
        Entry(5, "b").encode(),
        Entry(4, "a", None, (0, 3), True).encode(),  # a disliked ...
        Entry(3, "c", None, None, True).encode(),
        Entry(2, "c").encode(),  # ... c clicked, then disliked
        Entry(1, "a").encode(),
    ]
    h = parse_history(raw)
    assert h.negative == {"a", "c"}
    assert h.sources(5) == ["b"]
    lifted = parse_history([Entry(6, "a").encode(), *raw])  # a clicked again
    assert lifted.negative == {"c"} and lifted.sources(5) == ["a", "b"]
    assert sources_of(h.entries, frozenset(), 2) == ["b", "a"]


def test_what_counts_as_seen() -> None:
    entries = [(100 * MIN, "d"), (95 * MIN, "c"), (10 * MIN, "b"), (5 * MIN, "a")]
    gap = 30 * MIN
    assert seen_items(entries, {"z"}, "history", gap) == {"a", "b", "c", "d", "z"}
    assert seen_items(entries, {"z"}, "session", gap) == {"c", "d", "z"}
    assert seen_items(entries, {"z"}, "none", gap) == {"z"}
    assert seen_items([], set(), "session", gap) == set()


def test_a_dislike_through_redis_excludes_the_item_and_is_not_a_source(
    redis_settings: RedisSettings,
) -> None:
    """Through the consumer's writer and the API's reader on a real Redis."""
    import asyncio

    import redis as redis_sync

    from consumer.state import PartitionBatch, StoreConfig
    from consumer.store import RedisStateWriter
    from serving.reader import ReadSpec, UserState
    from serving.store import RedisStateReader

    client = redis_sync.Redis.from_url(redis_settings.url)
    writer = RedisStateWriter(client, redis_settings.keys, StoreConfig())
    events = [
        ClickEvent("v", "a", T0),
        ClickEvent("v", "b", T0 + MIN),
        ClickEvent("w", "a", T0),
        ClickEvent("w", "x", T0 + MIN),
        ClickEvent("v", "x", T0 + 2 * MIN, "dislike"),
    ]
    writer.apply("t", [PartitionBatch(0, 0, len(events), list(enumerate(events)))])
    client.close()

    async def read() -> tuple[UserState, list[tuple[str, float]]]:
        import redis.asyncio as aioredis

        aclient = aioredis.Redis.from_url(redis_settings.url)
        try:
            reader = RedisStateReader(aclient, redis_settings.keys)
            return await reader.user_state("v", ReadSpec()), await reader.popular(10)
        finally:
            await aclient.aclose()

    state, popular = asyncio.run(read())
    assert state.negative == {"x"}
    assert state.sources == ["b", "a"]
    assert "x" in state.seen("none", 30 * MIN)
    assert dict(popular)["x"] == 1.0  # w's click only: v's dislike added nothing


def test_feedback_settings_reach_a_child_process_through_its_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """settings_env writes a mapping or a set as JSON, which is how pydantic-settings
    reads it back (a repr of a dict stopped every consumer child process)."""
    from consumer.settings import ConsumerSettings
    from core.settings import settings_env

    feedback = Feedback(
        type_weights={"view": 0.25, "purchase": 5.0},
        negative_types=frozenset({"return", "dislike"}),
        rating_negative_below=2.0,
    )
    base = ConsumerSettings()
    rules = base.state.rules.model_copy(update={"feedback": feedback})
    settings = base.model_copy(update={"state": base.state.model_copy(update={"rules": rules})})
    env = settings_env(settings, ["state"])
    assert (
        env["STREAMREC_CONSUMER_STATE__RULES__FEEDBACK__NEGATIVE_TYPES"] == '["dislike", "return"]'
    )
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert ConsumerSettings().state.rules.feedback == feedback
