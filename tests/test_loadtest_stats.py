"""The load test's pure arithmetic, with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from producer.replay import Pacing
from streamrec.loadtest.run import due_times, split
from streamrec.loadtest.stats import (
    EventTimeline,
    NextClick,
    NextClicks,
    latency_summary,
    online_hit_rate,
    open_loop_schedule,
    per_second,
    state_aligned_hit_rate,
)


def test_open_loop_schedule_is_fixed_rate_and_bounded_twice() -> None:
    sched = open_loop_schedule(4.0, 2.0, 1000)
    assert sched.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    assert len(open_loop_schedule(1000.0, 10.0, 123)) == 123  # the count bound wins
    assert len(open_loop_schedule(0.0, 10.0, 10)) == 0


def test_latency_summary_known_answer_and_empty() -> None:
    s = latency_summary(list(range(1, 101)))
    assert s["p50"] == pytest.approx(50.5)
    assert s["p99"] == pytest.approx(99.01)
    assert s["max"] == 100.0 and s["mean"] == pytest.approx(50.5)
    assert latency_summary([]) == dict.fromkeys(("p50", "p95", "p99", "max", "mean"))


def timeline() -> EventTimeline:
    # a clicks x at 0 s and y at 2 s; b clicks z at 1 s.
    return EventTimeline(np.array([0.0, 1.0, 2.0]), ["a", "b", "a"], ["x", "z", "y"])


def test_timeline_knows_who_is_active_when() -> None:
    tl = timeline()
    assert tl.sent_by(-0.1) == 0 and tl.sent_by(1.0) == 2 and tl.sent_by(9) == 3
    with pytest.raises(ValueError):
        EventTimeline(np.array([0.0]), ["a", "b"], ["x"])


def test_next_click_is_strictly_after_the_answer() -> None:
    nxt = NextClicks(timeline())
    assert nxt.next_click("a", 0.0) == NextClick("y", None)  # x at 0.0 is not "after" 0.0
    assert nxt.next_click("a", 2.0) is None
    assert nxt.next_click("nobody", 0.0) is None


def test_online_hit_rate_counts_only_lookups_with_a_later_click() -> None:
    lookups = [
        ("a", 0.5, ["q", "y"]),  # next is y: hit
        ("b", 0.5, ["y"]),  # next is z: miss
        ("a", 2.5, ["y"]),  # no later click: not evaluated
        ("a", 0.5, ["q"] * 10 + ["y"]),  # y at rank 11: a miss at k=10
    ]
    hr = online_hit_rate(lookups, NextClicks(timeline()), k=10)
    assert hr == {"k": 10, "lookups": 4, "evaluated": 3, "hits": 1, "hr": pytest.approx(1 / 3)}
    assert online_hit_rate([], NextClicks(timeline()))["hr"] is None


def test_online_hit_rate_splits_session_continuations_from_returns() -> None:
    # a: x at ts 0, y 1 min later (same session), w 2 days later (a new session).
    tl = EventTimeline(
        np.array([0.0, 1.0, 2.0, 3.0]),
        ["a", "b", "a", "a"],
        ["x", "z", "y", "w"],
        [0, 5_000, 60_000, 2 * 86_400_000],
    )
    nxt = NextClicks(tl)
    assert nxt.next_click("a", 0.5) == NextClick("y", 60_000)
    assert nxt.next_click("a", 2.5) == NextClick("w", 2 * 86_400_000 - 60_000)
    assert nxt.next_click("b", -1.0) == NextClick("z", None)  # nothing earlier to measure from
    lookups = [
        ("a", 0.5, ["y"]),  # continues the session: hit
        ("a", 2.5, ["y"]),  # starts a new session: miss
        ("a", 2.6, ["w"]),  # starts a new session: hit
        ("b", -1.0, ["z"]),  # no earlier click: counted overall only
    ]
    hr = online_hit_rate(lookups, nxt, k=10, session_gap_ms=30 * 60_000)
    assert (hr["evaluated"], hr["hits"]) == (4, 3)
    assert hr["within_session"] == {"evaluated": 1, "hits": 1, "hr": 1.0}
    assert hr["new_session"] == {"evaluated": 2, "hits": 1, "hr": 0.5}
    assert "within_session" not in online_hit_rate(lookups, nxt, k=10)
    with pytest.raises(ValueError):
        EventTimeline(np.array([0.0]), ["a"], ["x"], [1, 2])


def test_state_aligned_hit_rate_targets_the_click_after_what_the_state_held() -> None:
    # a clicks x, y, then w; b clicks z once.
    tl = EventTimeline(np.array([0.0, 1.0, 2.0, 3.0]), ["a", "b", "a", "a"], ["x", "z", "y", "w"])
    nxt = NextClicks(tl)
    assert nxt.after_item("a", "x") == NextClick("y", None)  # no event times given
    assert nxt.after_item("a", "y") == NextClick("w", None)
    assert nxt.after_item("a", "w") is None  # the user's last click
    assert nxt.after_item("a", "z") is None and nxt.after_item("a", None) is None
    lookups = [
        ("a", "x", ["y"]),  # the state held x: the target is y, a hit
        ("a", "y", ["y", "q"]),  # held y: the target is w, a miss
        ("a", "warm-up-item", ["w"]),  # not a replayed click: not evaluated
        ("b", None, ["z"]),  # no sources: not evaluated
    ]
    hr = state_aligned_hit_rate(lookups, nxt, k=10)
    assert hr == {"k": 10, "evaluated": 2, "hits": 1, "hr": 0.5}
    assert state_aligned_hit_rate([], nxt)["hr"] is None
    # With event times the split says which targets continue the held click's session.
    timed = NextClicks(EventTimeline(tl.due, tl.users, tl.items, [0, 0, 60_000, 2 * 86_400_000]))
    split = state_aligned_hit_rate(lookups, timed, k=10, session_gap_ms=30 * 60_000)
    assert split["within_session"] == {"evaluated": 1, "hits": 1, "hr": 1.0}
    assert split["new_session"] == {"evaluated": 1, "hits": 0, "hr": 0.0}


def test_per_second_percentiles() -> None:
    t, v = per_second(np.array([0.1, 0.9, 1.5]), np.array([1.0, 3.0, 7.0]), 50)
    assert t.tolist() == [0.0, 1.0] and v.tolist() == [2.0, 7.0]


def test_due_times_match_the_replay_pacing() -> None:
    ts = np.array([1_000, 3_000, 3_000, 11_000])
    for pacing in (Pacing(speed=2.0), Pacing(rate=4.0)):
        expected = [pacing.due_time(int(x), 1_000, i) for i, x in enumerate(ts)]
        assert due_times(ts, pacing).tolist() == pytest.approx(expected)


def test_split_keeps_time_order() -> None:
    import pandas as pd

    df = pd.DataFrame({"ts": range(10)})
    warm, rest = split(df, 0.3)
    assert warm["ts"].tolist() == [0, 1, 2] and rest["ts"].tolist()[0] == 3
    with pytest.raises(ValueError):
        split(df, 1.0)


def test_summary_tells_shedding_from_server_failures() -> None:
    from streamrec.loadtest.http import Record
    from streamrec.loadtest.report import Observed, Phase, summarise

    records = [
        Record(0.0, 5.0, 200, "a", ["y"]),
        Record(0.1, 1.0, 503, "a", retry_after="1"),  # shed, as designed
        Record(0.2, 9.0, 500, "b"),  # a failure
        Record(0.3, 2000.0, 0, "b"),  # timed out
    ]
    s = summarise(Observed(records, [], [], NextClicks(timeline())), Phase(duration_s=1.0, k=10))
    req = s["requests"]
    assert (req["ok"], req["errors"], req["server_errors_5xx"], req["server_failures"]) == (
        1,
        3,
        2,
        1,
    )
    assert req["status_counts"] == {"200": 1, "503": 1, "500": 1, "timeout_or_transport": 1}
