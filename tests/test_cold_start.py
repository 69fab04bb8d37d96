"""Cold start on the serving path: fold -> state -> blend, with a real embedding index."""

from __future__ import annotations

import numpy as np

from consumer.logic import SessionRules
from consumer.state import PartitionBatch, StoreConfig
from core.events import ClickEvent
from evaluation.memory import MemoryState
from offline.index import ItemIndex
from serving.blend import BlendConfig, Candidates, Scored, blend
from serving.reader import ReadSpec

T0 = 1_600_000_000_000
MIN = 60_000
DAY = 24 * 60 * MIN
CONFIG = StoreConfig(rules=SessionRules(), half_life_ms=DAY)


def recommend(
    state: MemoryState, user: str, index: ItemIndex | None = None, k: int = 5
) -> list[Scored]:
    cfg = BlendConfig()
    us = state.read_user(user, ReadSpec(50, cfg.history_items, 50, 100))
    emb = index.similar_many(us.sources, 50) if index is not None and us.sources else {}
    return blend(Candidates(us.sources, us.co, emb, us.trending), us.history_items, k, cfg)


def feed(state: MemoryState, events: list[ClickEvent]) -> None:
    """One poll of one partition, after whatever was fed before."""
    first = state.stored_offsets("t", [0])[0] or 0
    batch = PartitionBatch(0, first, first + len(events), list(enumerate(events, first)))
    state.apply("t", [batch])


def test_a_user_with_no_history_gets_what_is_trending_now() -> None:
    state = MemoryState(CONFIG)
    # "old" was popular ten days ago, "new" today: with a one-day half-life the
    # decayed counts are 20 * 2**-10 ≈ 0.02 against 5, so "new" leads.
    feed(state, [ClickEvent(f"u{i}", "old", T0 + i) for i in range(20)])
    feed(state, [ClickEvent(f"v{i}", "new", T0 + 10 * DAY + i) for i in range(5)])
    feed(state, [ClickEvent("w", "mid", T0 + 10 * DAY + 100)])
    ranked = recommend(state, "stranger")
    assert [s.item_id for s in ranked] == ["new", "mid", "old"]
    assert all(s.reason.kind == "trending" and not s.personalised for s in ranked)


def test_a_user_with_one_click_gets_its_co_clicked_and_similar_items() -> None:
    state = MemoryState(CONFIG)
    events: list[ClickEvent] = []
    for i in range(30):
        t = T0 + i * DAY
        # Many users watch "alien" then "aliens"; some add "predator".
        events += [ClickEvent(f"u{i}", "alien", t), ClickEvent(f"u{i}", "aliens", t + MIN)]
        if i % 3 == 0:
            events.append(ClickEvent(f"u{i}", "predator", t + 2 * MIN))
        # Unrelated but very popular: it must not push out the neighbours.
        events += [ClickEvent(f"p{i}{j}", "blockbuster", t + 3 * MIN + j) for j in range(4)]
    feed(state, events)
    # An index where "terminator" sits next to "alien" and was never co-clicked.
    index = ItemIndex.from_vectors(
        ["alien", "terminator", "blockbuster"],
        np.array([[1.0, 0.1], [0.95, 0.2], [0.0, 1.0]], dtype=np.float32),
    )
    feed(state, [ClickEvent("newbie", "alien", T0 + 40 * DAY)])
    ranked = recommend(state, "newbie", index)
    top = [s.item_id for s in ranked]
    # Row alien: aliens follows it next in 30 sessions (30 x 10, x2 forward = 600),
    # predator one click later in 10 (10 x 9 x 2 = 180). So aliens = 1, predator =
    # 0.30, and terminator, reached through the embedding alone, w_emb 0.25 x cos ≈ 0.25.
    assert top[:3] == ["aliens", "predator", "terminator"]
    assert ranked[0].reason.kind == "co_clicked" and ranked[0].reason.because_of == "alien"
    assert "terminator" in top
    terminator = ranked[top.index("terminator")]
    assert terminator.reason.kind == "similar" and terminator.personalised
    assert "alien" not in top  # never the user's own item


def test_an_item_unknown_to_the_index_gets_neighbours_once_clicked_with_others() -> None:
    index = ItemIndex.from_vectors(["a", "b"], np.eye(2, dtype=np.float32))
    state = MemoryState(CONFIG)
    assert "fresh" not in index and index.similar_many(["fresh"], 10) == {"fresh": []}
    # Before anyone pairs it, a click on it gives only trending filler.
    feed(state, [ClickEvent("x", "b", T0)])
    feed(state, [ClickEvent("first", "fresh", T0 + DAY)])
    assert not any(s.personalised for s in recommend(state, "first", index))
    # Two users click it alongside "partner" in a session: the consumer pairs them.
    feed(
        state,
        [
            ClickEvent("u1", "fresh", T0 + 2 * DAY),
            ClickEvent("u1", "partner", T0 + 2 * DAY + MIN),
            ClickEvent("u2", "partner", T0 + 2 * DAY + 2 * MIN),
            ClickEvent("u2", "fresh", T0 + 2 * DAY + 3 * MIN),
        ],
    )
    feed(state, [ClickEvent("later", "fresh", T0 + 3 * DAY)])
    ranked = recommend(state, "later", index)
    assert ranked[0].item_id == "partner"
    assert ranked[0].reason.kind == "co_clicked" and ranked[0].reason.because_of == "fresh"
