"""The reader side of the state store: what one request reads, and the contract backends keep.

A backend (Redis in ``serving.store``, the evaluation's in-memory twin in
``evaluation.memory``) answers, for one user and a :class:`ReadSpec`:

- ``history``: the newest ``history_len`` entries as ``(ts_ms, item)``, newest first;
- ``negative``: the items of that history whose newest entry is negative
  feedback (``serving.history``);
- ``sources``: the newest ``n_sources`` distinct items of that history that are
  not negative (``serving.history.sources_of``);
- ``co``: each source's co-occurrence row, its ``per_item`` best neighbours
  with their counts, best first, equal counts by member *descending* (Redis's
  ZREVRANGE order); a source with no row maps to ``[]``;
- ``trending``: the ``n_trend`` best of the trending set, in the same order;
- ``pop``: the all-time count of every distinct member of those rows that the
  popularity set holds (the blend's popularity damping divides by it);
- ``clock``: the stream clock, the largest event time the state holds (None:
  nothing applied yet): "now" for the learned ranker's time features.

And, item-level: ``hot_items`` (the trending head's ids, what most requests
touch) and ``popular`` (the popularity head, the popularity reference's list).
tests/test_state_contract.py holds every backend to this, with one suite.
"""

from __future__ import annotations

import abc
import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field

from serving.blend import BlendConfig
from serving.history import Seen, seen_items


@dataclass(frozen=True, slots=True)
class ReadSpec:
    """How much one request reads; ``ServingSettings.read_spec`` derives it from the settings."""

    history_len: int = 50
    n_sources: int = 10
    per_item: int = 50
    n_trend: int = 100

    @classmethod
    def for_request(
        cls, k: int, *, history_len: int, trend_candidates: int, blend: BlendConfig
    ) -> ReadSpec:
        """What a request for ``k`` items reads. The trending head is at least
        ``k + history_len`` long, so the filler still reaches ``k`` after every
        history item is excluded."""
        return cls(
            history_len=history_len,
            n_sources=blend.history_items,
            per_item=blend.candidates_per_item,
            n_trend=max(trend_candidates, k + history_len),
        )


@dataclass(frozen=True, slots=True)
class UserState:
    """What the blend needs for one user, as the consumer last wrote it."""

    history: list[tuple[int, str]]  # (ts_ms, item_id), newest first
    sources: list[str]  # newest distinct history items whose co rows were read
    co: dict[str, list[tuple[str, float]]]  # source -> [(neighbour, count)], best first
    trending: list[tuple[str, float]]  # (item, forward-decayed score), best first
    # All-time counts ({ns}:pop) of the co-row members the pop set holds.
    pop: dict[str, float] = field(default_factory=dict)
    skipped: int = 0  # history entries that did not parse
    negative: frozenset[str] = frozenset()  # negative feedback in the history
    clock: int | None = None  # the largest event time applied (the stream clock)

    @property
    def history_items(self) -> list[str]:
        return [item for _, item in self.history]

    def seen(self, policy: Seen, gap_ms: int) -> set[str]:
        """What a request excludes under ``policy`` (serving.history.seen_items)."""
        return seen_items(self.history, self.negative, policy, gap_ms)


def best(row: Mapping[str, float], n: int) -> list[tuple[str, float]]:
    """The ``n`` best of a co row, best first, equal counts by member descending
    (the order every backend answers in)."""
    if n <= 0 or not row:
        return []
    if len(row) <= n:
        return sorted(row.items(), key=_rank, reverse=True)
    return heapq.nlargest(n, row.items(), key=_rank)


def _rank(kv: tuple[str, float]) -> tuple[float, str]:
    return kv[1], kv[0]


class StateReader(abc.ABC):
    """A state backend's read side (async: the API's event loop drives it)."""

    @abc.abstractmethod
    async def user_state(self, user_id: str, spec: ReadSpec) -> UserState:
        """Everything one recommendation needs for this user (see the module docstring)."""

    @abc.abstractmethod
    async def hot_items(self, n: int) -> list[str]:
        """The ``n`` items at the head of the trending set, best first."""

    @abc.abstractmethod
    async def popular(self, n: int) -> list[tuple[str, float]]:
        """The ``n`` best of the all-time popularity set with their counts, best first."""

    @abc.abstractmethod
    async def ping(self) -> bool:
        """Whether the backend answers."""
