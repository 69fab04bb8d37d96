"""The writer side of the state store: the contract every backend keeps, and the apply loop.

A backend (Redis in ``consumer.store``, the evaluation's in-memory twin in
``evaluation.memory``) provides four primitives; everything else, the
exactly-once loop included, is written once here on top of them:

- ``stored_offsets``: the next offset to apply for each partition;
- ``snapshot``: offsets, trending landmark and the newest ``pair_window``
  entries of some users' histories, read together;
- ``write``: apply each :class:`PartitionWrite` atomically, *if* the stored
  offset and landmark are still the ones its snapshot saw (compare-and-set),
  and say which were applied;
- ``dump`` and ``history_ttl``: the whole state as plain data, and a history's
  remaining idle time (tests, tools; never the hot path).

What a write does, in this order (``consumer/apply.lua`` is the reference):

1. compare-and-set: the stored offset must equal ``expected_offset``; a new
   landmark needs the stored one to equal ``landmark.expected`` (or to be the
   new one already); otherwise nothing is written;
2. histories: the batch's new entries are pushed in front of each user's list,
   which is trimmed to ``history_len`` and given the idle TTL;
3. co-occurrence: each pair's count is incremented, then every touched row is
   pruned to its ``co_top_m`` best, the lowest (count, member) going first;
4. popularity (+count) and trending (+forward-decay weight against the new
   landmark, after rescaling every stored score by ``landmark.factor``), both
   pruned to ``pop_max`` the same way;
5. stats (``events``, ``pairs``, ``dlq:{reason}``), the meta hash
   (``trend_ref``, ``half_life_ms``, ``clock`` = the largest event time seen)
   and finally the partition's offset.

tests/test_state_contract.py holds every backend to this, with one suite.
"""

from __future__ import annotations

import abc
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from consumer.logic import Entry, SessionRules, StateDelta, fold, trend_landmark, trend_weights
from core.errors import InvalidEvent
from core.events import ClickEvent

log = logging.getLogger("streamrec.consumer")

# Conflicts happen only when a partition changes owner or trending is rescaled
# concurrently; a few rounds settle either.
MAX_CAS_ROUNDS = 8


class StoreConfig(BaseModel):
    """The state model: how events become state, and what the store keeps for how long.

    The shipped defaults; nested in ``consumer.settings.ConsumerSettings`` as
    ``state`` (env ``STREAMREC_CONSUMER_STATE__CO_TOP_M``, ...).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    rules: SessionRules = Field(default_factory=SessionRules)
    # Half-life of the trending set (the trending reference, the blend's prior and
    # filler, cold users' answers). 365 days was chosen on ml-latest-small's
    # validation part over 7, 30, 90 and 730 (docs/evaluation.md): MovieLens's
    # timeline is sparse. A dense live stream may want hours to days.
    half_life_ms: int = Field(default=365 * 24 * 3600 * 1000, ge=1000)
    co_top_m: int = Field(default=200, ge=1)
    pop_max: int = Field(default=200_000, ge=1)
    # Wall-clock expiry of an idle user's history: a memory bound, not state
    # semantics (sessions are cut on event time).
    idle_ttl_s: int = Field(default=30 * 24 * 3600, ge=1)


@dataclass
class Snapshot:
    """What a batch is computed from: offsets, the trending landmark, recent histories."""

    histories: dict[str, list[Entry]]  # newest first, at most pair_window entries
    offsets: dict[int, int | None]
    trend_ref: int | None


@dataclass
class PartitionBatch:
    """The records of one partition in one poll: valid events and dead-letter reasons."""

    partition: int
    first_offset: int
    next_offset: int
    events: list[tuple[int, ClickEvent]] = field(default_factory=list)
    rejected: list[tuple[int, InvalidEvent]] = field(default_factory=list)

    def since(self, offset: int | None) -> PartitionBatch:
        """The part of this batch at or after ``offset`` (None: all of it)."""
        if offset is None or offset <= self.first_offset:
            return self
        return PartitionBatch(
            self.partition,
            max(self.first_offset, offset),
            self.next_offset,
            [(o, e) for o, e in self.events if o >= offset],
            [(o, r) for o, r in self.rejected if o >= offset],
        )


@dataclass
class ApplyResult:
    applied_events: int = 0
    skipped_events: int = 0  # already applied before (redelivery after a crash or rebalance)
    rejected: int = 0
    conflicts: int = 0


@dataclass(frozen=True, slots=True)
class Landmark:
    """The trending landmark a write expects, the one it leaves, and the rescale between."""

    expected: int | None  # what the snapshot read
    new: int | None  # what the write stores (None: leave it; the batch had no event)
    factor: float | None = None  # multiply every stored trending score by this first


@dataclass(frozen=True)
class PartitionWrite:
    """One partition's delta with its offsets: applied whole, or (on a CAS miss) not at all."""

    topic: str
    partition: int
    expected_offset: int | None
    next_offset: int
    landmark: Landmark
    delta: StateDelta
    dead_letters: Counter[str] = field(default_factory=Counter)  # reason -> records

    def trend_increments(self, half_life_ms: int) -> dict[str, float]:
        """Forward-decay weight per item against the new landmark."""
        if self.landmark.new is None:
            return {}
        return trend_weights(self.delta.trend_ts, self.landmark.new, half_life_ms)

    def stats(self) -> dict[str, int]:
        """Counter increments: events and pairings applied, dead letters by reason."""
        out: dict[str, int] = {}
        if self.delta.events:
            out["events"] = self.delta.events
            out["pairs"] = self.delta.pairs
        for reason, n in self.dead_letters.items():
            out[f"dlq:{reason}"] = n
        return out

    def new_entries(self) -> Iterable[tuple[str, list[Entry]]]:
        """Each touched user's new entries, oldest first (the order they are pushed in)."""
        delta = self.delta
        for user, history in delta.histories.items():
            yield user, history[: delta.added[user]][::-1]


class StateWriter(abc.ABC):
    """A state backend's write side. Subclasses provide the primitives; ``apply`` is shared."""

    config: StoreConfig

    @abc.abstractmethod
    def stored_offsets(self, topic: str, partitions: Iterable[int]) -> dict[int, int | None]: ...

    @abc.abstractmethod
    def snapshot(self, topic: str, partitions: Sequence[int], users: Sequence[str]) -> Snapshot: ...

    @abc.abstractmethod
    def write(self, writes: Sequence[PartitionWrite]) -> list[bool]:
        """Apply each write atomically if its compare-and-set holds; True where applied."""

    @abc.abstractmethod
    def history_ttl(self, user: str) -> int | None:
        """Seconds until the user's history expires (None: the user has no history)."""

    @abc.abstractmethod
    def dump(self) -> dict[str, Any]:
        """Everything as plain data: ``hist``, ``co``, ``pop``, ``trend``, ``meta``,
        ``offsets`` and ``stats`` (see ``consumer.store.RedisStateWriter.dump`` for the shapes)."""

    def apply(self, topic: str, batches: Sequence[PartitionBatch]) -> ApplyResult:
        """Apply partition batches exactly once each; safe to call again after any failure."""
        result = ApplyResult()
        pending = [b for b in batches if b.next_offset > b.first_offset]
        for _ in range(MAX_CAS_ROUNDS):
            if not pending:
                return result
            users = sorted({e.user_id for b in pending for _, e in b.events})
            snap = self.snapshot(topic, [b.partition for b in pending], users)
            todo: list[tuple[PartitionBatch, PartitionBatch]] = []
            for batch in pending:
                stored = snap.offsets[batch.partition]
                if stored is not None and stored >= batch.next_offset:
                    result.skipped_events += len(batch.events)
                    continue
                fresh = batch.since(stored)
                result.skipped_events += len(batch.events) - len(fresh.events)
                todo.append((batch, fresh))
            if not todo:
                return result
            landmark = self._landmark(snap.trend_ref, (f for _, f in todo))
            writes = [self._plan(topic, fresh, snap, landmark) for _, fresh in todo]
            outcomes = self.write(writes)
            pending = []
            for (batch, fresh), applied in zip(todo, outcomes, strict=True):
                if applied:
                    result.applied_events += len(fresh.events)
                    result.rejected += len(fresh.rejected)
                else:
                    result.conflicts += 1
                    pending.append(batch)
            if pending:
                log.info(
                    "offset/landmark moved under %d partition batch(es); re-reading", len(pending)
                )
        raise RuntimeError(
            f"could not apply {len(pending)} batch(es) after {MAX_CAS_ROUNDS} rounds"
        )

    def _landmark(self, ref: int | None, batches: Iterable[PartitionBatch]) -> Landmark:
        """One landmark for every partition written together (they share the trending set)."""
        max_ts = max((e.ts for b in batches for _, e in b.events), default=None)
        if max_ts is None:
            return Landmark(ref, ref)
        new, factor = trend_landmark(ref, max_ts, self.config.half_life_ms)
        return Landmark(ref, new, factor)

    def _plan(
        self, topic: str, batch: PartitionBatch, snap: Snapshot, landmark: Landmark
    ) -> PartitionWrite:
        delta = fold((e for _, e in batch.events), snap.histories, self.config.rules)
        return PartitionWrite(
            topic=topic,
            partition=batch.partition,
            expected_offset=snap.offsets[batch.partition],
            next_offset=batch.next_offset,
            # A batch without events leaves the landmark alone (and never rescales).
            landmark=landmark if delta.events else Landmark(landmark.expected, None),
            delta=delta,
            dead_letters=Counter(exc.reason for _, exc in batch.rejected),
        )
