"""The load test's arithmetic, with no I/O: schedules, percentiles, who is active, HR@k.

Everything here works on plain arrays and lists, so it is tested with known
answers and shared by the load test and the benchmark.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def open_loop_schedule(rate: float, duration_s: float, max_requests: int) -> np.ndarray:
    """Send times (seconds from start) of an open-loop load: one every 1/rate s.

    Open loop means the times are fixed in advance and never wait for answers,
    so a slow server cannot slow the load down and hide its own latency
    (coordinated omission). Bounded by both the duration and the count.
    """
    if rate <= 0 or duration_s <= 0 or max_requests <= 0:
        return np.zeros(0)
    n = min(int(rate * duration_s), max_requests)
    return np.arange(n, dtype=np.float64) / rate


def latency_summary(latencies_ms: Sequence[float] | np.ndarray) -> dict[str, float | None]:
    """p50/p95/p99/max/mean in ms; None for each when there are no samples."""
    arr = np.asarray(latencies_ms, dtype=np.float64)
    if arr.size == 0:
        return {"p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "max": float(arr.max()),
        "mean": float(arr.mean()),
    }


@dataclass(frozen=True)
class EventTimeline:
    """The replayed events as due times (s from the replay start) with their users and items.

    ``due`` must be non-decreasing: it is the replay's schedule
    (producer.replay.Pacing.due_time), so the load generator knows who is
    active at any moment without talking to the replay process. ``ts`` (event
    time, ms), when given, lets the hit rate tell a click that continues a
    session from one that starts a new session.
    """

    due: np.ndarray
    users: Sequence[str]
    items: Sequence[str]
    ts: Sequence[int] | None = None

    def __post_init__(self) -> None:
        if not (len(self.due) == len(self.users) == len(self.items)):
            raise ValueError("due, users and items must have the same length")
        if self.ts is not None and len(self.ts) != len(self.users):
            raise ValueError("ts must have one entry per event")

    def sent_by(self, t: float) -> int:
        """How many events are due at or before ``t``."""
        return int(np.searchsorted(self.due, t, side="right"))


@dataclass(frozen=True)
class NextClick:
    item: str
    # Event time from the user's last click due at or before the lookup to this
    # one; None without event times or when the timeline holds no earlier click.
    gap_ms: int | None


class NextClicks:
    """For (user, time): the user's next item due strictly after that time, if any."""

    def __init__(self, timeline: EventTimeline) -> None:
        self._times: dict[str, list[float]] = {}
        self._events: dict[str, list[tuple[str, int | None]]] = {}
        ts: Sequence[int | None] = (
            timeline.ts if timeline.ts is not None else [None] * len(timeline.users)
        )
        rows = zip(timeline.due.tolist(), timeline.users, timeline.items, ts, strict=True)
        # user -> item -> position of the user's last click on it
        self._position: dict[str, dict[str, int]] = {}
        for t, user, item, when in rows:
            self._times.setdefault(user, []).append(t)
            events = self._events.setdefault(user, [])
            self._position.setdefault(user, {})[item] = len(events)
            events.append((item, when))

    def next_click(self, user: str, t: float) -> NextClick | None:
        times = self._times.get(user)
        if not times:
            return None
        return self._click(user, bisect.bisect_right(times, t))

    def after_item(self, user: str, item: str | None) -> NextClick | None:
        """The user's click right after their (last) click on ``item`` in the timeline.

        None when ``item`` is not one of the user's replayed clicks (warm-up,
        no history) or was their last. The gap is measured from the
        click on ``item``.
        """
        i = None if item is None else self._position.get(user, {}).get(item)
        return None if i is None else self._click(user, i + 1)

    def _click(self, user: str, i: int) -> NextClick | None:
        """The user's ``i``-th click, with the gap from the click before it."""
        events = self._events.get(user, [])
        if i >= len(events):
            return None
        item, when = events[i]
        before = events[i - 1][1] if i > 0 else None
        return NextClick(item, when - before if when is not None and before is not None else None)


def _hit_rate(
    pairs: Iterable[tuple[NextClick | None, Sequence[str]]],
    k: int,
    session_gap_ms: int | None,
) -> dict[str, Any]:
    """HR@k of (target, returned items) pairs; a None target is not evaluated.

    With ``session_gap_ms``, also split by the target: ``within_session`` when
    it follows the click before it by at most the gap, ``new_session`` when it
    starts a new session.
    """
    tally: dict[str, list[int]] = {"all": [0, 0], "within_session": [0, 0], "new_session": [0, 0]}
    for nxt, items in pairs:
        if nxt is None:
            continue
        hit = int(nxt.item in items[:k])
        parts = ["all"]
        if session_gap_ms is not None and nxt.gap_ms is not None:
            parts.append("within_session" if nxt.gap_ms <= session_gap_ms else "new_session")
        for part in parts:
            tally[part][0] += 1
            tally[part][1] += hit
    evaluated, hits = tally["all"]
    out: dict[str, Any] = {
        "k": k,
        "evaluated": evaluated,
        "hits": hits,
        "hr": hits / evaluated if evaluated else None,
    }
    if session_gap_ms is not None:
        for part in ("within_session", "new_session"):
            n, h = tally[part]
            out[part] = {"evaluated": n, "hits": h, "hr": h / n if n else None}
    return out


def state_aligned_hit_rate(
    lookups: Sequence[tuple[str, str | None, Sequence[str]]],
    next_clicks: NextClicks,
    k: int = 10,
    session_gap_ms: int | None = None,
) -> dict[str, Any]:
    """HR@k against the click that followed the newest one the answer's state held.

    ``lookups`` are (user, newest source of the answer, returned item ids). The
    answer's ``sources[0]`` says how far the served state had got through the
    user's clicks, whatever the consumer lag was; the target is the user's next
    click after that one: the offline protocol's question ("given everything
    before this click, is it in the top k?") asked of live answers. Lookups whose
    newest source is not a replayed click of the user are not evaluated. The
    session split is as in :func:`online_hit_rate`.
    """
    pairs = ((next_clicks.after_item(user, newest), items) for user, newest, items in lookups)
    return _hit_rate(pairs, k, session_gap_ms)


def online_hit_rate(
    lookups: Sequence[tuple[str, float, Sequence[str]]],
    next_clicks: NextClicks,
    k: int = 10,
    session_gap_ms: int | None = None,
) -> dict[str, Any]:
    """HR@k of live lookups: was the user's next click among the top k returned?

    ``lookups`` are (user, time the answer arrived, returned item ids). A lookup
    counts only when the user clicks again later in the replay; the next click is
    the first one due after the answer, so the answer could not have seen it.

    With ``session_gap_ms``, the hits are also split by what the next click is:
    ``within_session`` when it follows the user's previous click by at most the
    gap (the case the offline evaluation mostly scores: every click predicts the
    one after it), ``new_session`` when it starts a new session (the user came
    back later: a much harder guess). A replay compresses a MovieLens burst into
    milliseconds, so a lookup at a random moment usually falls between sessions.
    """
    pairs = ((next_clicks.next_click(user, t), items) for user, t, items in lookups)
    return {"lookups": len(lookups), **_hit_rate(pairs, k, session_gap_ms)}


def per_second(times_s: np.ndarray, values: np.ndarray, q: float) -> tuple[np.ndarray, np.ndarray]:
    """The ``q``-th percentile of ``values`` in each whole second of ``times_s``."""
    if times_s.size == 0:
        return np.zeros(0), np.zeros(0)
    secs = np.floor(times_s).astype(np.int64)
    out_t, out_v = [], []
    for s in np.unique(secs):
        out_t.append(float(s))
        out_v.append(float(np.percentile(values[secs == s], q)))
    return np.asarray(out_t), np.asarray(out_v)
