"""Pure state-update logic: from events and the users' current histories to state deltas.

No I/O here: the live worker, the tests and the offline evaluation all call
:func:`fold` with histories they fetched however they like.

Sessions run on event time. A user's history is a list of entries, newest
first. A new event continues the current session while consecutive events are
at most ``gap_ms`` apart (and carry the same ``session_id`` when both have one);
otherwise it starts a new session. Each event is paired with the distinct items
among the last ``pair_window`` entries of its session: those pairs are the
co-occurrence counts.

Events weigh what ``core.feedback.Feedback`` says of their type and weight:
an event's weight scales its pairs, popularity and trending, and negative
feedback (weight 0) is recorded in the history, flagged, and pairs with nothing.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import orjson
from pydantic import BaseModel, ConfigDict, Field

from core.events import ClickEvent
from core.feedback import RATING, Feedback

# Forward-decayed scores are 2 ** ((ts - ref) / half_life) against a landmark
# ref that is an epoch of the event time: a multiple of 256 half-lives. Terms
# then stay below 2**256 (a float64 holds ~2**1023), and every writer agrees on
# the landmark without asking anyone.
EPOCH_HALF_LIVES = 256
# Decayed co-occurrence counts are integers in fixed point: each pair's weight
# times its event's decay factor times CO_SCALE, that factor rounded once per
# event. Redis adds integers (several times cheaper than HINCRBYFLOAT's long
# doubles), sums are exact whatever the batching, and the rounding is at most
# 1/2048 of the factor at the landmark. The co landmark's epoch is 16 half-lives, so a term is
# below 2**16 * 20 * CO_SCALE (~1.3e9) and a count stays far inside int64.
CO_SCALE = 1024
CO_EPOCH_HALF_LIVES = 16


@dataclass(frozen=True, slots=True)
class Entry:
    ts: int
    item: str
    session_id: str | None = None
    # (partition, offset) of the event, where it came from the stream. Not part
    # of equality: a history is the same whichever offsets delivered it.
    pos: tuple[int, int] | None = field(default=None, compare=False)
    # Negative feedback (core.feedback): it excludes the item for the user and
    # pairs with nothing. Encoded as a sixth element, 1, after the position.
    neg: bool = False

    def encode(self) -> bytes:
        if self.neg:
            pos = self.pos if self.pos is not None else (None, None)
            return orjson.dumps([self.ts, self.item, self.session_id, *pos, 1])
        if self.pos is None:
            return orjson.dumps([self.ts, self.item, self.session_id])
        return orjson.dumps([self.ts, self.item, self.session_id, *self.pos])

    @classmethod
    def decode(cls, raw: bytes | str) -> Entry:
        value = orjson.loads(raw)
        n = len(value)
        pos = (int(value[3]), int(value[4])) if n >= 5 and value[3] is not None else None
        return cls(int(value[0]), str(value[1]), value[2], pos, n >= 6 and value[5] == 1)


class SessionRules(BaseModel):
    """How clicks become sessions and pairs, with the shipped defaults.

    Nested in ``consumer.settings.ConsumerSettings`` (env
    ``STREAMREC_CONSUMER_STATE__RULES__PAIR_WINDOW``, ...), which validates
    these bounds at start; the evaluation builds its candidates from the same class.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # 30 minutes of inactivity ends a session.
    gap_ms: int = Field(default=30 * 60 * 1000, ge=1)
    # Pair each click with up to 10 recent items of its session.
    pair_window: int = Field(default=10, ge=1, le=1000)
    # Entries kept per user; serving reads the newest of these and excludes them all.
    history_len: int = Field(default=50, ge=1, le=10_000)
    # False: every pair counts 1. True: a partner p steps back (0 = the newest)
    # counts pair_window - p, so adjacent clicks weigh most (sequential-rules
    # style, Ludewig & Jannach 2018). Integer weights keep ZINCRBY counts exact.
    # On ml-latest-small's validation part it lifted the blend's HR@10 from
    # 0.1278 to 0.1321 (docs/evaluation.md). Stats "pairs" counts pairings, not weights.
    linear_pair_weights: bool = True
    # Asymmetric sequential rules: when b follows a, row a (what comes after a)
    # gets forward_weight times the pair weight, row b (what came before b) gets
    # it once. 1 = symmetric. An integer, so counts stay exact in Redis. 2 is best
    # on ml-latest-small's validation part (over 1, 3 and 4; docs/evaluation.md).
    forward_weight: int = Field(default=2, ge=1, le=100)
    # How much each event counts by its type and weight (core/feedback.py).
    feedback: Feedback = Field(default_factory=Feedback)


def session_window(
    history: Sequence[Entry], ts: int, session_id: str | None, rules: SessionRules
) -> list[Entry]:
    """The newest entries of ``history`` that share a session with an event at ``ts``.

    Walks back from the newest entry while each step is within the gap. Events
    that arrive slightly out of order still join: the gap is measured both ways.
    """
    out: list[Entry] = []
    prev_ts, prev_sid = ts, session_id
    for entry in history:
        if len(out) >= rules.pair_window:
            break
        if abs(prev_ts - entry.ts) > rules.gap_ms:
            break
        if prev_sid is not None and entry.session_id is not None and prev_sid != entry.session_id:
            break
        out.append(entry)
        prev_ts, prev_sid = entry.ts, entry.session_id
    return out


def event_weight(event: ClickEvent, rules: SessionRules) -> float:
    """What the event adds (core.feedback); at or below 0: negative feedback."""
    return rules.feedback.weight(event.type, event.weight)


def partners(history: Sequence[Entry], event: ClickEvent, rules: SessionRules) -> list[str]:
    """Distinct items the event pairs with, newest first, never the event's own item.

    Negative feedback pairs with nothing: as the event (no partners) or as an
    entry of the window (skipped, though it still carries the session on)."""
    if event_weight(event, rules) <= 0:
        return []
    seen: set[str] = {event.item_id}
    out: list[str] = []
    for entry in session_window(history, event.ts, event.session_id, rules):
        if not entry.neg and entry.item not in seen:
            seen.add(entry.item)
            out.append(entry.item)
    return out


def step(
    history: Sequence[Entry], event: ClickEvent, rules: SessionRules
) -> tuple[list[Entry], list[str]]:
    """Apply one event to one user's history: the new history and the pairing partners."""
    found = partners(history, event, rules)
    neg = event_weight(event, rules) <= 0
    new_history = [Entry(event.ts, event.item_id, event.session_id, neg=neg), *history]
    return new_history[: rules.history_len], found


@dataclass
class StateDelta:
    """Everything one batch of events changes, ready to be applied atomically."""

    # Each touched user's history after the batch, newest first: the given
    # history with the batch's entries in front, capped at ``history_len``.
    histories: dict[str, list[Entry]] = field(default_factory=dict)
    # How many of the front entries of ``histories[user]`` the batch added.
    added: Counter[str] = field(default_factory=Counter)
    # (row item, neighbour) -> increment: an integer, the pair weight times the
    # event's weight (and its forward-decay factor when co counts decay), rounded.
    co: Counter[tuple[str, str]] = field(default_factory=Counter)
    # item -> the summed weights of its events (a count when every event weighs 1)
    pop: dict[str, float] = field(default_factory=dict)
    # item -> its events' timestamps, and the weights of those that do not weigh 1
    # (trend_w, index-aligned with trend_ts where present); decay weights are
    # computed against the landmark at apply time (see trend_weights), so the
    # delta stays landmark-free.
    trend_ts: dict[str, list[int]] = field(default_factory=dict)
    trend_w: dict[str, list[float]] = field(default_factory=dict)
    events: int = 0
    pairs: int = 0  # distinct (event, partner) pairings, whatever their weights
    max_ts: int | None = None

    @property
    def touched_users(self) -> set[str]:
        return set(self.histories)


def fold(
    events: Iterable[ClickEvent],
    histories: Mapping[str, Sequence[Entry]],
    rules: SessionRules,
    delta: StateDelta | None = None,
    *,
    co_decay: tuple[int, int] | None = None,
    positions: Sequence[tuple[int, int]] | None = None,
) -> StateDelta:
    """Fold events (in stream order) into a delta, starting from the given histories.

    ``histories`` holds each user's stored history, newest first (missing = new
    user); only its newest ``pair_window`` entries matter for pairing, so callers
    may pass just those. Equivalent to calling :func:`step` per event (a test
    holds it to that), written as one loop because it is the consumer's hot path:
    histories are kept oldest-first while folding so each event is an append.

    ``co_decay`` = (landmark, half_life_ms) weighs each event's pairs by
    ``round(2 ** ((ts - landmark) / half_life_ms) * CO_SCALE)`` (forward decay in
    fixed point); None: plain integer counts (an event whose weight is not 1
    adds its pair weights times its weight, rounded). ``positions``
    gives each event's (partition, offset), kept
    on its history entry.
    """
    out = delta if delta is not None else StateDelta()
    gap, window, cap = rules.gap_ms, rules.pair_window, rules.history_len
    linear = rules.linear_pair_weights
    fwd = rules.forward_weight
    work: dict[str, list[Entry]] = {}
    co, added = out.co, out.added
    feedback = rules.feedback
    weigh = feedback.weight
    # The common cases inline (a dict lookup, not a method call): an event whose
    # own weight does not matter (none given, or a rating while ratings are flat)
    # weighs its type's weight, or 0 for a negative type.
    type_get, default_w = feedback.type_weights.get, feedback.default_weight
    negative_types = feedback.negative_types
    flat_ratings = feedback.rating_negative_below is None and not feedback.rating_pivot
    # dict.get, not Counter's ``+=``: a missing key would call Counter.__missing__
    # in Python, and most pairs of a batch are new (~17 updates per event).
    co_get = co.get
    n = pairs = 0
    max_ts = out.max_ts
    ref, half_life = co_decay if co_decay is not None else (0, 0)
    pos = None
    for k, event in enumerate(events):
        if positions is not None:
            pos = positions[k]
        user, item, ts, sid = event.user_id, event.item_id, event.ts, event.session_id
        h = work.get(user)
        if h is None:
            start: Sequence[Entry] | None = out.histories.get(user)
            if start is None:
                start = histories.get(user, ())
            h = work[user] = list(reversed(start))
        n += 1
        if max_ts is None or ts > max_ts:
            max_ts = ts
        etype, ev_w = event.type, event.weight
        if ev_w is None or (flat_ratings and etype == RATING):
            wt = 0.0 if etype in negative_types else type_get(etype, default_w)
        else:
            wt = weigh(etype, ev_w)
        added[user] += 1
        # Negative feedback goes into the history, flagged, and adds nothing: no
        # walk (its window is empty), no popularity, no trending.
        neg = wt <= 0
        # The event's decay factor (times its weight) in fixed point, rounded once
        # per event: every pair weight is then an integer times it (exact sums, no
        # rounding per pair). Without decay, a weight other than 1 is rounded per pair.
        frac = 0.0
        if half_life:
            scale = int(wt * 2.0 ** ((ts - ref) / half_life) * CO_SCALE + 0.5)
        elif wt == 1.0:
            scale = 1
        else:
            scale, frac = 1, wt
        # Walk back through the session window (see session_window) pairing distinct items.
        seen = {item}
        prev_ts, prev_sid = ts, sid
        i = len(h) - 1
        stop = i if neg else max(-1, i - window)
        while i > stop:
            e = h[i]
            if abs(prev_ts - e.ts) > gap:
                break
            if prev_sid is not None and e.session_id is not None and prev_sid != e.session_id:
                break
            if e.item not in seen and not e.neg:
                # The p-th distinct partner (p = len(seen) - 1, 0 = newest).
                base = window - len(seen) + 1 if linear else 1
                if frac:
                    w = int(base * frac + 0.5)
                    wf = int(base * fwd * frac + 0.5)
                else:
                    w = base * scale
                    wf = w * fwd
                seen.add(e.item)
                pairs += 1
                pair = (item, e.item)
                co[pair] = co_get(pair, 0) + w
                pair = (e.item, item)
                co[pair] = co_get(pair, 0) + wf
            prev_ts, prev_sid = e.ts, e.session_id
            i -= 1
        h.append(Entry(ts, item, sid, pos, neg))
        if len(h) > 2 * cap:  # trim in bulk: amortised O(1) per event
            del h[:-cap]
        if neg:
            continue
        count_item(out, item, ts, wt)
    for user, h in work.items():
        out.histories[user] = h[: -cap - 1 : -1]
        if added[user] > cap:
            added[user] = cap
    out.events += n
    out.pairs += pairs
    out.max_ts = max_ts
    return out


def rebase(count: float, factor: float) -> int:
    """A fixed-point co count moved to a later landmark (apply.lua rounds the same way)."""
    return math.floor(count * factor + 0.5)


def count_item(out: StateDelta, item: str, ts: int, wt: float) -> None:
    """An event of positive weight ``wt`` on ``item``: its popularity and its
    trending time stamp (and weight, once any of the item's events does not weigh 1)."""
    stamps = out.trend_ts.get(item)
    if stamps is None:
        stamps = out.trend_ts[item] = []
    stamps.append(ts)
    out.pop[item] = out.pop.get(item, 0) + wt
    trend_w = out.trend_w
    if wt == 1.0:
        if trend_w:
            weights = trend_w.get(item)
            if weights is not None:
                weights.append(1.0)
    else:
        weights = trend_w.get(item)
        if weights is None:
            weights = trend_w[item] = [1.0] * (len(stamps) - 1)
        weights.append(wt)


def landmark(ts: int, half_life_ms: int, epoch_half_lives: int = EPOCH_HALF_LIVES) -> int:
    """The forward-decay landmark for event time ``ts``: the start of its epoch
    (256 half-lives for trending, ``CO_EPOCH_HALF_LIVES`` for co counts)."""
    epoch = epoch_half_lives * half_life_ms
    return (ts // epoch) * epoch


def trend_weights(
    trend_ts: Mapping[str, Sequence[int]],
    ref: int,
    half_life_ms: int,
    trend_w: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, float]:
    """Forward-decay increments per item against landmark ``ref``: each event's
    weight (``trend_w``, aligned with ``trend_ts``; 1 where an item has none)
    times its decay factor."""
    out: dict[str, float] = {}
    for item, stamps in trend_ts.items():
        weights = trend_w.get(item) if trend_w else None
        if weights is None:
            out[item] = sum(2.0 ** ((ts - ref) / half_life_ms) for ts in stamps)
        else:
            out[item] = sum(
                w * 2.0 ** ((ts - ref) / half_life_ms)
                for ts, w in zip(stamps, weights, strict=True)
            )
    return out


def decayed_count(score: float, ref: int, clock: int, half_life_ms: int) -> float:
    """A stored trending score as a count of events decayed to time ``clock``."""
    return score * 2.0 ** ((ref - clock) / half_life_ms)
