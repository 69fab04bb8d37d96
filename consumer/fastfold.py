"""The consumer's fold with its pairing walk in numpy: the same delta as ``logic.fold``.

``consumer.logic.fold`` is the specification, and stays the evaluation's and
the tests' reference; this is the consumer's hot path. One Python pass per
event keeps what is sequential and cheap (histories, popularity, trending, an
event's weight and decay factor); the walk back through each event's session
window, ~75 % of the reference's time at a pair window of 10, runs over the
whole batch at once, one numpy step per window position:

- every user's visible entries (the newest ``pair_window`` of the history
  given, then the batch's events, oldest first) are laid out in one array, so
  the entry ``d`` steps back from an event is a fixed offset from it;
- how far back an event may look is what the reference's history held at that
  moment (its trimming included), at most ``pair_window`` entries;
- a gap over ``gap_ms`` or a change of session id between two consecutive
  entries ends the walk; a negative entry is walked over but pairs with
  nothing; an item pairs once, never with the event's own item, and the p-th
  partner (0 = the newest) weighs ``pair_window - p`` (linear weights);
- the batch's pair increments are summed per (row, neighbour) in numpy, then
  added to the delta's counts.

``tests/test_fastfold.py`` holds it equal to the reference on random streams
(sessions, negative feedback, weights, decay, short histories) and on
MovieLens. Counts are integers, so the order they are summed in cannot matter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from consumer.logic import CO_SCALE, Entry, SessionRules, StateDelta, count_item, rebase
from core.events import ClickEvent
from core.feedback import RATING

# Above this an increment might not fit an int64 (absurd weights): the walk then
# computes with Python's unbounded integers (numpy object arrays), as the reference.
_INT_LIMIT = 2**62
# A (row, neighbour) pair as one int64: row code << 32 | neighbour code.
_SHIFT = 32
_LOW = (1 << _SHIFT) - 1


class PairCounts:
    """Co-occurrence increments waiting to be written: (row item, neighbour) ->
    integer, as arrays of packed item codes (``code``) and increments, summed per
    pair when asked. Codes are this object's own; a new one starts afresh."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.names: list[str] = []
        self._keys: list[np.ndarray] = []
        self._incs: list[np.ndarray] = []
        self._held = 0  # entries held: at least the number of distinct pairs
        self._summed = True  # the arrays hold each pair once
        # What a sum could reach (the absolute increments added): past int64's
        # reach, the counts become Python integers, as the reference's are.
        self._bound = 0
        self._wide = False

    def code(self, item: str) -> int:
        c = self.codes.get(item)
        if c is None:
            c = self.codes[item] = len(self.names)
            self.names.append(item)
        return c

    def add(self, keys: np.ndarray, incs: np.ndarray) -> None:
        """Add increments for packed pairs (``row << 32 | neighbour``)."""
        if len(keys):
            if incs.dtype != object:
                self._bound += int(np.abs(incs).max()) * len(incs)
            if not self._wide and (incs.dtype == object or self._bound >= _INT_LIMIT):
                self._incs = [x.astype(object) for x in self._incs]
                self._wide = True
            self._keys.append(keys)
            self._incs.append(incs.astype(object) if self._wide else incs)
            self._held += len(keys)
            self._summed = False

    def add_mapping(self, pairs: Mapping[tuple[str, str], int]) -> None:
        """Add increments given as (row item, neighbour) -> integer."""
        code = self.code
        keys = [(code(a) << _SHIFT) | code(b) for a, b in pairs]
        incs = list(pairs.values())
        big = any(abs(v) >= _INT_LIMIT for v in incs)
        self.add(np.array(keys, dtype=np.int64), np.array(incs, dtype=object if big else np.int64))

    def add_rows_of(self, other: PairCounts, keep_row: Callable[[str], bool]) -> None:
        """Add ``other``'s increments of the rows ``keep_row`` accepts."""
        keys, incs = other._sum()
        if not len(keys):
            return
        names = other.names
        row_codes = (keys >> _SHIFT).tolist()
        keep = np.array([keep_row(names[r]) for r in row_codes], dtype=bool)
        code = self.code
        remap = np.array([code(x) for x in names], dtype=np.int64)
        kept = keys[keep]
        self.add((remap[kept >> _SHIFT] << _SHIFT) | remap[kept & _LOW], incs[keep])

    def __len__(self) -> int:
        return len(self._sum()[0])

    def at_least(self, n: int) -> bool:
        """Whether at least ``n`` distinct pairs are held (cheap while clearly not)."""
        return self._held >= n and len(self) >= n

    def __bool__(self) -> bool:
        return self._held > 0

    def rebase(self, factor: float) -> None:
        """Every count times ``factor``, rounded as ``consumer.logic.rebase``."""
        keys, incs = self._sum()
        if incs.dtype == object:
            moved = np.array([rebase(v, factor) for v in incs.tolist()], dtype=object)
        else:
            moved = np.floor(incs.astype(np.float64) * factor + 0.5).astype(np.int64)
        self._keys, self._incs = [keys], [moved]

    def rows(self) -> dict[str, dict[str, float]]:
        """row item -> neighbour -> summed increment."""
        keys, incs = self._sum()
        if not len(keys):
            return {}
        names = np.array(self.names, dtype=object)
        row_codes = keys >> _SHIFT
        nb_names = names[keys & _LOW].tolist()
        values = incs.tolist()
        starts = np.flatnonzero(np.r_[True, row_codes[1:] != row_codes[:-1]]).tolist()
        ends = [*starts[1:], len(keys)]
        return {
            names[row_codes[lo]]: dict(zip(nb_names[lo:hi], values[lo:hi], strict=True))
            for lo, hi in zip(starts, ends, strict=True)
        }

    def as_mapping(self) -> dict[tuple[str, str], float]:
        """(row item, neighbour) -> summed increment (tests, tools)."""
        return {(a, b): v for a, row in self.rows().items() for b, v in row.items()}

    def _sum(self) -> tuple[np.ndarray, np.ndarray]:
        """The held increments summed per pair, sorted by packed pair."""
        if not self._keys:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        if self._summed:
            return self._keys[0], self._incs[0]
        allincs = np.concatenate(self._incs)
        keys, inverse = np.unique(np.concatenate(self._keys), return_inverse=True)
        incs = np.zeros(len(keys), dtype=allincs.dtype)
        np.add.at(incs, inverse, allincs)
        self._keys, self._incs = [keys], [incs]
        self._held, self._summed = len(keys), True
        return keys, incs


def fast_fold(
    events: Iterable[ClickEvent],
    histories: Mapping[str, Sequence[Entry]],
    rules: SessionRules,
    co: PairCounts,
    delta: StateDelta | None = None,
    *,
    co_decay: tuple[int, int] | None = None,
    positions: Sequence[tuple[int, int]] | None = None,
) -> StateDelta:
    """``consumer.logic.fold`` with the same arguments, but the pair counts added to
    ``co`` instead of ``delta.co`` (which stays as it was)."""
    events = events if isinstance(events, list) else list(events)
    out = delta if delta is not None else StateDelta()
    window, cap = rules.pair_window, rules.history_len
    feedback = rules.feedback
    weigh = feedback.weight
    type_get, default_w = feedback.type_weights.get, feedback.default_weight
    negative_types = feedback.negative_types
    flat_ratings = feedback.rating_negative_below is None and not feedback.rating_pivot
    ref, half_life = co_decay if co_decay is not None else (0, 0)

    n = len(events)
    code = co.code
    sids: dict[str, int] = {}  # session id -> code (-1: none)
    # The laid-out entries: per user, the visible start then the batch's events.
    lay_ts: list[int] = []
    lay_item: list[int] = []
    lay_sid: list[int] = []
    lay_neg: list[bool] = []
    # Per event: its slot in the layout, how far back it may look, its scale.
    slot = [0] * n
    reach = [0] * n
    scales = [0] * n
    fracs = [0.0] * n
    # Per user: what it started with (newest first) and the reference's working
    # history (oldest first).
    starts: dict[str, Sequence[Entry]] = {}
    work: dict[str, list[Entry]] = {}
    mine: dict[str, list[int]] = {}  # user -> its events, in order
    added = out.added
    max_ts = out.max_ts
    pos = None
    event_weights = [0.0] * n
    # Pass 1: weights, histories, popularity, trending (the reference's order);
    # what each event may look back at is noted for the walk.
    for k, event in enumerate(events):
        if positions is not None:
            pos = positions[k]
        user, item, ts, sid = event.user_id, event.item_id, event.ts, event.session_id
        h = work.get(user)
        if h is None:
            start: Sequence[Entry] | None = out.histories.get(user)
            if start is None:
                start = histories.get(user, ())
            starts[user] = start
            h = work[user] = list(reversed(start))
            mine[user] = []
        mine[user].append(k)
        if max_ts is None or ts > max_ts:
            max_ts = ts
        etype, ev_w = event.type, event.weight
        if ev_w is None or (flat_ratings and etype == RATING):
            wt = 0.0 if etype in negative_types else type_get(etype, default_w)
        else:
            wt = weigh(etype, ev_w)
        event_weights[k] = wt
        added[user] += 1
        neg = wt <= 0
        reach[k] = 0 if neg else min(window, len(h))
        if half_life:
            scales[k] = int(wt * 2.0 ** ((ts - ref) / half_life) * CO_SCALE + 0.5)
        elif wt == 1.0:
            scales[k] = 1
        else:
            scales[k], fracs[k] = 1, wt
        h.append(Entry(ts, item, sid, pos, neg))
        if len(h) > 2 * cap:
            del h[:-cap]
        if neg:
            continue
        count_item(out, item, ts, wt)

    # Lay each user's block out: the newest `window` entries it started with, then
    # its batch events, in order.
    for user, ks in mine.items():
        for e in reversed(starts[user][:window]):
            lay_ts.append(e.ts)
            lay_item.append(code(e.item))
            lay_sid.append(-1 if e.session_id is None else sids.setdefault(e.session_id, len(sids)))
            lay_neg.append(e.neg)
        for k in ks:
            e_ev = events[k]
            slot[k] = len(lay_ts)
            lay_ts.append(e_ev.ts)
            lay_item.append(code(e_ev.item_id))
            sid = e_ev.session_id
            lay_sid.append(-1 if sid is None else sids.setdefault(sid, len(sids)))
            lay_neg.append(event_weights[k] <= 0)

    pairs = 0
    if n:
        big = max(max(scales), max(fracs)) * window * rules.forward_weight >= _INT_LIMIT
        pairs = _walk(
            co,
            np.asarray(lay_ts, dtype=np.int64),
            np.asarray(lay_item, dtype=np.int64),
            np.asarray(lay_sid, dtype=np.int64),
            np.asarray(lay_neg, dtype=bool),
            np.asarray(slot, dtype=np.int64),
            np.asarray(reach, dtype=np.int64),
            np.asarray(scales, dtype=object if big else np.int64),
            np.asarray(fracs, dtype=np.float64),
            rules,
        )

    for user, h in work.items():
        out.histories[user] = h[: -cap - 1 : -1]
        if added[user] > cap:
            added[user] = cap
    out.events += n
    out.pairs += pairs
    out.max_ts = max_ts
    return out


def _walk(
    co: PairCounts,
    ts: np.ndarray,
    item: np.ndarray,
    sid: np.ndarray,
    neg: np.ndarray,
    slot: np.ndarray,
    reach: np.ndarray,
    scale: np.ndarray,
    frac: np.ndarray,
    rules: SessionRules,
) -> int:
    """Every event's walk back, one window position at a time; the pair counts are
    added to ``co``. Returns the number of pairings."""
    window, gap, fwd = rules.pair_window, rules.gap_ms, rules.forward_weight
    linear = rules.linear_pair_weights
    me = item[slot]
    prev_ts, prev_sid = ts[slot], sid[slot]
    alive = reach > 0
    found = np.zeros(len(slot), dtype=np.int64)  # partners so far (p of the next one)
    partners: list[np.ndarray] = []  # per step: the partner item paired there, or -1
    rows: list[np.ndarray] = []
    nbs: list[np.ndarray] = []
    incs: list[np.ndarray] = []
    with_frac = bool(frac.any())
    for d in range(1, window + 1):
        alive &= reach >= d
        if not alive.any():
            break
        at = np.where(alive, slot - d, 0)
        e_ts, e_sid, e_item = ts[at], sid[at], item[at]
        broken = (np.abs(prev_ts - e_ts) > gap) | (
            (prev_sid >= 0) & (e_sid >= 0) & (prev_sid != e_sid)
        )
        alive &= ~broken
        pair = alive & ~neg[at] & (e_item != me)
        for earlier in partners:
            pair &= e_item != earlier
        partners.append(np.where(pair, e_item, -1))
        prev_ts = np.where(alive, e_ts, prev_ts)
        prev_sid = np.where(alive, e_sid, prev_sid)
        if pair.any():
            idx = np.flatnonzero(pair)
            base = (window - found[idx]) if linear else np.ones(len(idx), dtype=np.int64)
            if with_frac:
                # The reference: int(base * frac + 0.5) and int(base * fwd * frac + 0.5).
                f = frac[idx]
                plain = f == 0.0
                w = np.where(plain, base * scale[idx], _ints(base * f + 0.5, scale.dtype))
                wf = np.where(plain, w * fwd, _ints(base * fwd * f + 0.5, scale.dtype))
            else:
                w = base * scale[idx]
                wf = w * fwd
            rows.append(me[idx])
            nbs.append(e_item[idx])
            incs.append(w)
            rows.append(e_item[idx])
            nbs.append(me[idx])
            incs.append(wf)
            found[idx] += 1
    if not rows:
        return 0
    co.add(
        (np.concatenate(rows) << _SHIFT) | np.concatenate(nbs),
        np.concatenate(incs),
    )
    return int(found.sum())


def _ints(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Positive floats truncated to integers, as Python's ``int``: int64, or Python
    integers where the increments may not fit one."""
    if dtype == np.int64:
        return x.astype(np.int64)
    return np.array([int(v) for v in x.tolist()], dtype=object)
