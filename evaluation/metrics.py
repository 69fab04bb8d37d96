"""What a prequential run counts: hits, reciprocal ranks and NDCG at each k, per segment.

Pure: no I/O, no state other than the running sums.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from consumer.logic import Entry, SessionRules, session_window
from core.events import ClickEvent

KS: tuple[int, ...] = (5, 10, 20)


@dataclass
class Tally:
    """Running sums for one method over one group of predictions."""

    n: int = 0
    hits: dict[int, int] = field(default_factory=lambda: dict.fromkeys(KS, 0))
    rr: dict[int, float] = field(default_factory=lambda: dict.fromkeys(KS, 0.0))
    ndcg: dict[int, float] = field(default_factory=lambda: dict.fromkeys(KS, 0.0))
    fallbacks: int = 0

    def add(self, ranked: Sequence[str], target: str, fallback: bool) -> None:
        self.n += 1
        self.fallbacks += fallback
        try:
            rank = ranked.index(target) + 1
        except ValueError:
            return
        for k in KS:
            if rank <= k:
                self.hits[k] += 1
                self.rr[k] += 1.0 / rank
                # One relevant item: IDCG = 1, DCG = 1 / log2(rank + 1).
                self.ndcg[k] += 1.0 / math.log2(rank + 1)

    def summary(self) -> dict[str, float]:
        n = max(self.n, 1)
        out: dict[str, float] = {"n": self.n}
        for k in KS:
            out[f"hr@{k}"] = self.hits[k] / n
            out[f"mrr@{k}"] = self.rr[k] / n
            out[f"ndcg@{k}"] = self.ndcg[k] / n
        out["fallback"] = self.fallbacks / n
        return out


@dataclass
class MethodResult:
    all: Tally = field(default_factory=Tally)
    cold: Tally = field(default_factory=Tally)
    warm: Tally = field(default_factory=Tally)
    # Warm targets split: continuing the user's session, or the first click of a
    # new one (a return visit). Cold targets (no history) are in neither.
    within_session: Tally = field(default_factory=Tally)
    new_session: Tally = field(default_factory=Tally)
    shown: set[str] = field(default_factory=set)  # distinct items in any top-10
    # user -> [predictions, hits@10, NDCG@10 gains]: the unit of the paired
    # bootstrap (evaluation/bootstrap.py).
    by_user: dict[str, list[float]] = field(default_factory=dict)

    def add(
        self,
        ranked: Sequence[str],
        target: str,
        fallback: bool,
        *,
        cold: bool,
        new_session: bool,
        user: str = "",
    ) -> None:
        hits, gain = self.all.hits[10], self.all.ndcg[10]
        self.all.add(ranked, target, fallback)
        row = self.by_user.get(user)
        if row is None:
            row = self.by_user[user] = [0, 0, 0.0]
        row[0] += 1
        row[1] += self.all.hits[10] - hits
        row[2] += self.all.ndcg[10] - gain
        if cold:
            self.cold.add(ranked, target, fallback)
        else:
            self.warm.add(ranked, target, fallback)
            (self.new_session if new_session else self.within_session).add(ranked, target, fallback)
        self.shown.update(ranked[:10])

    def summary(self, catalog: int) -> dict[str, Any]:
        out: dict[str, Any] = self.all.summary()
        out["coverage@10"] = len(self.shown) / max(catalog, 1)
        out["cold"] = self.cold.summary()
        out["warm"] = self.warm.summary()
        out["within_session"] = self.within_session.summary()
        out["new_session"] = self.new_session.summary()
        return out


@dataclass
class SessionSplit:
    """Whether an event starts a new session for its user, by the consumer's own
    rule (``consumer.logic.session_window``; ``rules.pair_window`` ≥ 1, as the
    settings enforce); feed it every event in stream order with :meth:`see`."""

    rules: SessionRules
    last: dict[str, Entry] = field(default_factory=dict)

    def starts_session(self, event: ClickEvent) -> bool:
        prev = self.last.get(event.user_id)
        return prev is None or not session_window((prev,), event.ts, event.session_id, self.rules)

    def see(self, event: ClickEvent) -> None:
        self.last[event.user_id] = Entry(event.ts, event.item_id, event.session_id)
