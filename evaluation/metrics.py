"""What a prequential run counts: hits, reciprocal ranks and NDCG at each k, per segment,
and beyond accuracy: how popular, novel and diverse the lists are.

Each prediction has one relevant item (the user's next click), so recall@k is
HR@k and precision@k is HR@k / k; both are reported under their names too.
Beyond accuracy, over each top-10 list (``ItemStats``, fixed from the events
before the predicted part):

- popularity bias: the mean popularity percentile of the listed items (1 = the
  most clicked item of the catalogue, items never clicked share the bottom);
- novelty: the mean self-information of the listed items, -log2 of an item's
  share of the clicks (add-one smoothed over the catalogue), in bits;
- intra-list diversity: the mean Jaccard distance between the genre sets of
  the pairs of listed items that have genres (none: not counted).

Pure: no I/O, no state other than the running sums.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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

    def add(self, ranked: Sequence[str], target: str, fallback: bool) -> int | None:
        """Count one prediction; returns the target's rank (None: not listed)."""
        self.n += 1
        self.fallbacks += fallback
        try:
            rank = ranked.index(target) + 1
        except ValueError:
            return None
        for k in KS:
            if rank <= k:
                self.hits[k] += 1
                self.rr[k] += 1.0 / rank
                # One relevant item: IDCG = 1, DCG = 1 / log2(rank + 1).
                self.ndcg[k] += 1.0 / math.log2(rank + 1)
        return rank

    def summary(self) -> dict[str, float]:
        n = max(self.n, 1)
        out: dict[str, float] = {"n": self.n}
        for k in KS:
            out[f"hr@{k}"] = self.hits[k] / n
            out[f"mrr@{k}"] = self.rr[k] / n
            out[f"ndcg@{k}"] = self.ndcg[k] / n
            out[f"recall@{k}"] = self.hits[k] / n  # one relevant item per prediction
            out[f"precision@{k}"] = self.hits[k] / n / k
        out["fallback"] = self.fallbacks / n
        return out


@dataclass(frozen=True)
class ItemStats:
    """What the beyond-accuracy measures know about items: fixed before the predicted part."""

    percentile: Mapping[str, float]  # item -> popularity percentile in [0, 1]
    info: Mapping[str, float]  # item -> self-information, bits
    unseen_percentile: float
    unseen_info: float
    genres: Mapping[str, frozenset[str]]

    @classmethod
    def from_counts(
        cls, counts: Mapping[str, int], catalog: int, genres: Mapping[str, frozenset[str]]
    ) -> ItemStats:
        catalog = max(catalog, len(counts), 1)
        total = sum(counts.values())
        # Percentile by rank, ties sharing the middle of their run; the never-clicked
        # items of the catalogue sit below every clicked one.
        zeros = catalog - len(counts)
        by_count: dict[int, int] = {}
        for c in counts.values():
            by_count[c] = by_count.get(c, 0) + 1
        below, middle = zeros, {}
        for c in sorted(by_count):
            middle[c] = (below + by_count[c] / 2) / catalog
            below += by_count[c]
        denom = total + catalog
        return cls(
            percentile={i: middle[c] for i, c in counts.items()},
            info={i: -math.log2((c + 1) / denom) for i, c in counts.items()},
            unseen_percentile=zeros / 2 / catalog,
            unseen_info=-math.log2(1 / denom),
            genres=genres,
        )


@dataclass
class BeyondTally:
    """Running sums of the beyond-accuracy measures over top-10 lists."""

    lists: int = 0
    percentile: float = 0.0
    novelty: float = 0.0
    ild: float = 0.0
    ild_lists: int = 0

    def add(self, top: Sequence[str], stats: ItemStats) -> None:
        if not top:
            return
        self.lists += 1
        pct, info = stats.percentile, stats.info
        self.percentile += sum(pct.get(i, stats.unseen_percentile) for i in top) / len(top)
        self.novelty += sum(info.get(i, stats.unseen_info) for i in top) / len(top)
        sets = [g for i in top if (g := stats.genres.get(i))]
        if len(sets) >= 2:
            total, pairs = 0.0, 0
            for a in range(len(sets)):
                for b in range(a + 1, len(sets)):
                    total += 1.0 - len(sets[a] & sets[b]) / len(sets[a] | sets[b])
                    pairs += 1
            self.ild += total / pairs
            self.ild_lists += 1

    def summary(self) -> dict[str, float | None]:
        n = max(self.lists, 1)
        return {
            "popularity_percentile@10": self.percentile / n,
            "novelty@10": self.novelty / n,
            "ild@10": self.ild / self.ild_lists if self.ild_lists else None,
        }


@dataclass
class MethodResult:
    all: Tally = field(default_factory=Tally)
    cold: Tally = field(default_factory=Tally)
    warm: Tally = field(default_factory=Tally)
    # Warm targets split: continuing the user's session, or the first click of a
    # new one (a return visit). Cold targets (no history) are in neither.
    within_session: Tally = field(default_factory=Tally)
    new_session: Tally = field(default_factory=Tally)
    # Targets by how new the item is: never clicked before the predicted part
    # (new_item), and, of those, clicked now for the very first time (first_click:
    # only a streaming signal can have it at all).
    new_item: Tally = field(default_factory=Tally)
    first_click: Tally = field(default_factory=Tally)
    shown: set[str] = field(default_factory=set)  # distinct items in any top-10
    # user -> [predictions, hits@10, NDCG@10 gains]: the unit of the paired
    # bootstrap (evaluation/bootstrap.py).
    by_user: dict[str, list[float]] = field(default_factory=dict)
    stats: ItemStats | None = None  # None: no beyond-accuracy measures
    beyond: BeyondTally = field(default_factory=BeyondTally)

    def add(
        self,
        ranked: Sequence[str],
        target: str,
        fallback: bool,
        *,
        cold: bool,
        new_session: bool,
        user: str = "",
        new_item: bool = False,
        first_click: bool = False,
    ) -> None:
        rank = self.all.add(ranked, target, fallback)
        row = self.by_user.get(user)
        if row is None:
            row = self.by_user[user] = [0, 0, 0.0]
        row[0] += 1
        if rank is not None and rank <= 10:
            row[1] += 1
            row[2] += 1.0 / math.log2(rank + 1)
        if cold:
            self.cold.add(ranked, target, fallback)
        else:
            self.warm.add(ranked, target, fallback)
            (self.new_session if new_session else self.within_session).add(ranked, target, fallback)
        if new_item:
            self.new_item.add(ranked, target, fallback)
            if first_click:
                self.first_click.add(ranked, target, fallback)
        self.shown.update(ranked[:10])
        if self.stats is not None:
            self.beyond.add(ranked[:10], self.stats)

    def summary(self, catalog: int) -> dict[str, Any]:
        out: dict[str, Any] = self.all.summary()
        out["coverage@10"] = len(self.shown) / max(catalog, 1)
        if self.stats is not None:
            out.update(self.beyond.summary())
        out["cold"] = self.cold.summary()
        out["warm"] = self.warm.summary()
        out["within_session"] = self.within_session.summary()
        out["new_session"] = self.new_session.summary()
        out["new_item"] = self.new_item.summary()
        out["first_click"] = self.first_click.summary()
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
