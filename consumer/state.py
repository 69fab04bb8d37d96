"""The writer side of the state store: the contract every backend keeps, and the ingest loop.

A backend (Redis in ``consumer.store``, the evaluation's in-memory twin in
``evaluation.memory``) provides a few primitives over the groups of
``core/keyspace.py`` (user groups, row groups, the item group); everything
else, exactly-once included, is written once here, in :class:`Ingest`:

- ``positions``: each group's stored next offset per partition;
- ``histories``: some users' stored history entries, newest first;
- ``write``: apply each :class:`GroupWrite` atomically, *if* the group's stored
  offsets are still the ones it expects (compare-and-set), and say which were;
- ``dump`` and ``history_ttl``: the whole state as plain data, and a history's
  remaining idle time (tests, tools; never the hot path).

What one write does, in this order (``consumer/apply.lua`` is the reference):

1. compare-and-set: every partition's stored offset in the group must equal
   the expected one; otherwise nothing is written;
2. user group: each user's new entries are pushed in front of their history,
   which is trimmed to ``history_len`` (keeping, beyond it, the entries at or
   after ``keep_from`` of their partition and ``pair_window`` before those) and
   given the idle TTL;
3. row group: each row is rebased to the write's decay landmark if it was
   stored against an older one, its counts incremented, and, when it holds more
   than ``co_top_m`` plus a quarter of slack, pruned to its ``co_top_m`` best,
   the lowest (count, member) going first; its change feed notes the rows;
4. item group: trending is rescaled to the write's landmark if needed, then
   popularity (+count) and trending (+forward-decay weight) are incremented and
   pruned to ``pop_max``; stats, meta (``trend_ref``, ``half_life_ms``,
   ``clock`` = the largest event time seen) and the change feed follow;
5. the group's offsets move to the write's next offsets.

Exactly once, precisely: every group stores the offsets of the events whose
effects it holds, in the same atomic write as those effects. A consumer that
takes a partition resumes at the lowest offset any group holds for it
(:meth:`Ingest.resume_offsets`) and each group skips what it already has, so
after any crash every group holds each event's effect once. User groups are
written every poll (a user's own click shows in their next answer); row groups
and the item group are aggregated across polls and written at most
``delay_s`` later (and on rebalance and shutdown). A replay after a crash pairs
each event with the history before it: history entries carry their (partition,
offset), the replayed ones are stripped from the snapshot, and histories keep
what a replay needs (step 2).

tests/test_state_contract.py holds every backend to this, with one suite.
"""

from __future__ import annotations

import abc
import itertools
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from consumer.fastfold import PairCounts, fast_fold
from consumer.logic import (
    CO_EPOCH_HALF_LIVES,
    CO_SCALE,
    Entry,
    SessionRules,
    StateDelta,
    landmark,
    trend_weights,
)
from core.errors import InvalidEvent
from core.events import ClickEvent
from core.keyspace import Keyspace

log = logging.getLogger("streamrec.consumer")

Offsets = dict[int, int | None]  # partition -> stored next offset (None: nothing yet)


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
    # Half-life of co-occurrence counts (None: counts never decay). Rows follow
    # the present: a full row admits a neighbour that is strong now, and a pair
    # nobody clicks any more fades out. 1,095 days (3 years) was chosen on
    # ml-latest-small's validation part over none, 30, 365 and 3,650 days
    # (benchmarks/co_half_life.py; docs/evaluation.md): MovieLens spans 22 years.
    # A live product should set about the time its items stay relevant
    # together: days to weeks for news or fashion, months for a back catalogue.
    co_half_life_ms: int | None = Field(default=1095 * 24 * 3600 * 1000, ge=1000)
    co_top_m: int = Field(default=200, ge=1)
    pop_max: int = Field(default=200_000, ge=1)
    # Wall-clock expiry of an idle user's history: a memory bound, not state
    # semantics (sessions are cut on event time).
    idle_ttl_s: int = Field(default=30 * 24 * 3600, ge=1)
    # Wall-clock expiry of a co row no click has touched: bounds the item keys
    # by the items clicked recently, whatever ids writers send.
    row_idle_ttl_s: int = Field(default=90 * 24 * 3600, ge=1)

    @property
    def co_slack(self) -> int:
        """Members a row may hold beyond ``co_top_m`` before it is pruned back (amortises
        the prune, and gives a new neighbour a few flushes to prove itself)."""
        return max(1, self.co_top_m // 4)


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
        return self.between(offset, None)

    def between(self, lo: int | None, hi: int | None) -> PartitionBatch:
        """The part of this batch in [lo, hi) (None: unbounded)."""
        first = self.first_offset if lo is None else max(self.first_offset, lo)
        stop = self.next_offset if hi is None else min(self.next_offset, hi)
        if first == self.first_offset and stop == self.next_offset:
            return self
        return PartitionBatch(
            self.partition,
            first,
            max(first, stop),
            [(o, e) for o, e in self.events if first <= o < stop],
            [(o, r) for o, r in self.rejected if first <= o < stop],
        )


@dataclass
class ApplyResult:
    applied_events: int = 0
    skipped_events: int = 0  # already applied before (redelivery after a crash or rebalance)
    rejected: int = 0
    conflicts: int = 0


@dataclass
class GroupWrite:
    """One group's share of a poll (user group) or a flush (row group, item group)."""

    tag: str
    topic: str
    offsets: dict[int, tuple[int | None, int]]  # partition -> (expected stored, next)
    # user group: (user, new entries oldest first); partition -> oldest offset
    # the item state has not got yet (what a replay would need again).
    histories: list[tuple[str, list[Entry]]] = field(default_factory=list)
    keep_from: dict[int, int] = field(default_factory=dict)
    # row group: item -> neighbour -> increment, against landmark co_ref (None: no decay)
    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    co_ref: int | None = None
    # item group: increments against trend_ref; stats; the largest event time
    pop: dict[str, float] = field(default_factory=dict)
    trend: dict[str, float] = field(default_factory=dict)
    trend_ref: int | None = None
    stats: dict[str, int] = field(default_factory=dict)
    clock: int | None = None

    def offset_fields(self) -> list[tuple[str, int | None, int]]:
        return [
            (Keyspace.offset_field(self.topic, p), expected, nxt)
            for p, (expected, nxt) in sorted(self.offsets.items())
        ]


class Rewind(Exception):
    """The store moved under this consumer (another owner wrote, or events are missing):
    seek these partitions to these offsets (None: the beginning) and poll again."""

    def __init__(self, offsets: dict[int, int | None], why: str) -> None:
        super().__init__(f"rewind {offsets}: {why}")
        self.offsets = offsets


class StateWriter(abc.ABC):
    """A state backend's write side. Subclasses provide the primitives; ``apply`` is shared."""

    config: StoreConfig
    keys: Keyspace

    @abc.abstractmethod
    def positions(self, topic: str, partitions: Sequence[int]) -> dict[str, Offsets]:
        """Every group's (``keys.tags()``) stored next offset for each partition."""

    @abc.abstractmethod
    def histories(self, users: Sequence[str], n: int | None) -> dict[str, list[Entry]]:
        """The newest ``n`` stored entries (None: all) of each user that has any."""

    @abc.abstractmethod
    def write(self, writes: Sequence[GroupWrite]) -> list[bool]:
        """Apply each write atomically if its compare-and-set holds; True where applied."""

    @abc.abstractmethod
    def history_ttl(self, user: str) -> int | None:
        """Seconds until the user's history expires (None: the user has no history)."""

    @abc.abstractmethod
    def dump(self) -> dict[str, Any]:
        """Everything as plain data: ``hist``, ``co``, ``pop``, ``trend``, ``meta``,
        ``offsets`` and ``stats`` (see ``consumer.store.RedisStateWriter.dump`` for the shapes)."""

    def stored_offsets(self, topic: str, partitions: Iterable[int]) -> Offsets:
        """Per partition, the offset every group has reached (None: some group has nothing)."""
        parts = list(partitions)
        return durable(self.positions(topic, parts), parts) if parts else {}

    def apply(self, topic: str, batches: Sequence[PartitionBatch]) -> ApplyResult:
        """Apply partition batches exactly once each and write everything at once (no
        delay): for tests, tools and the evaluation. The consumer runs an :class:`Ingest`."""
        ingests: dict[str, Ingest] = self.__dict__.setdefault("_ingests", {})
        ingest = ingests.get(topic)
        if ingest is None:
            ingest = ingests[topic] = Ingest(self, topic, delay_s=0.0, advance_every_s=0.0)
        return ingest.apply(batches)


def rows_at(
    rows: dict[str, tuple[float | None, dict[str, float]]],
    clock: int | None,
    half_life_ms: int | None,
) -> dict[str, dict[str, float]]:
    """Co rows, each stored against its own landmark (None: undecayed) in fixed
    point, as decayed counts as of the stream clock: what two states are compared
    by, member by member."""
    out: dict[str, dict[str, float]] = {}
    for item, (ref, row) in rows.items():
        if not row:
            continue
        if ref is None or clock is None or half_life_ms is None:
            out[item] = {nb: float(v) for nb, v in row.items()}
        else:
            factor = 2.0 ** ((ref - clock) / half_life_ms) / CO_SCALE
            out[item] = {nb: float(v) * factor for nb, v in row.items()}
    return out


def keep_for_replay(
    history: Sequence[Entry], keep_from: dict[int, int], cap: int, window: int
) -> int:
    """How many entries a history keeps: ``cap``, or the leading entries at or after
    ``keep_from`` of their partition plus ``window`` before them, if more."""
    if len(history) <= cap:
        return len(history)
    fresh = 0
    for e in history:
        pos = e.pos
        if pos is None or pos[0] not in keep_from or pos[1] < keep_from[pos[0]]:
            break
        fresh += 1
    return max(cap, fresh + window)


def dump_offsets(by_tag: dict[str, dict[str, int]], keys: Keyspace) -> dict[str, int]:
    """Per "topic:partition", the offset every group has reached (groups without it
    are left out: they have nothing of that partition yet)."""
    names = sorted({name for group in by_tag.values() for name in group})
    out: dict[str, int] = {}
    for name in names:
        values = [g[name] for tag in keys.tags() if name in (g := by_tag.get(tag, {}))]
        out[name] = min(values)
    return out


def durable(positions: dict[str, Offsets], partitions: Iterable[int]) -> Offsets:
    """The lowest offset over groups per partition; None where some group has none."""
    out: Offsets = {}
    for p in partitions:
        values = [group.get(p) for group in positions.values()]
        out[p] = None if any(v is None for v in values) else min(v for v in values if v is not None)
    return out


@dataclass
class Pending:
    """Item state folded but not yet written: aggregated across polls."""

    co: PairCounts = field(default_factory=PairCounts)
    co_ref: int | None = None
    pop: dict[str, float] = field(default_factory=dict)
    trend: dict[str, float] = field(default_factory=dict)
    trend_ref: int | None = None
    stats: Counter[str] = field(default_factory=Counter)
    clock: int | None = None
    since: float | None = None  # clock() when the first contribution arrived

    def empty(self) -> bool:
        return self.since is None


class Ingest:
    """The exactly-once ingest loop over a :class:`StateWriter`, for one topic.

    ``apply`` writes each poll's histories at once and folds its item state into
    :class:`Pending`; ``flush`` writes that (when ``due``: ``delay_s`` after its
    first contribution, or when it grows past ``max_pairs``). The consumer calls
    ``flush`` before it gives partitions up and when it stops.

    ``background``: a due flush's row and item-group writes go to Redis from a
    thread of their own while this one folds the next polls (Redis works on the
    rows while Python folds). At most one flush is in flight; its outcome is
    taken (``_settle``) before the next flush is built, before positions are
    read or forgotten, and by ``flush``, which always returns with everything
    written. Until then the groups' stored offsets lag, which is safe: histories
    keep more entries for a replay, and Kafka commits what every group has.
    The flush's user-group writes (idle groups' offsets moving up) stay on this
    thread, since the next poll's history writes expect those offsets.
    """

    def __init__(
        self,
        store: StateWriter,
        topic: str,
        *,
        delay_s: float = 1.0,
        max_pairs: int = 1_000_000,
        advance_every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        background: bool = False,
    ) -> None:
        self.store = store
        self.topic = topic
        self.delay_s = delay_s
        self.max_pairs = max_pairs
        self.advance_every_s = advance_every_s
        self.clock = clock
        keys = store.keys
        self._tags = keys.tags()
        self._user_tags = keys.user_tags()
        self._row_tags = keys.row_tags()
        self._item_side = [*self._row_tags, keys.item_tag]
        self.stored: dict[str, Offsets] = {tag: {} for tag in self._tags}
        # partition -> the next offset whose effects every group has or pending holds
        self.covered: dict[int, int | None] = {}
        self.pending = Pending()
        self._last_advance = -float("inf")
        self._rewound: dict[int, int | None] = {}
        # partition -> (next offset, user -> history): a replay's folded histories
        self._carry: dict[int, tuple[int, dict[str, list[Entry]]]] = {}
        self._flusher = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamrec-flush")
            if background
            else None
        )
        self._flushing: Future[list[tuple[GroupWrite, bool]]] | None = None

    def close(self) -> None:
        """Wait for the flush in flight (its outcome is left for the store to tell)."""
        if self._flusher is not None:
            self._flusher.shutdown(wait=True)

    # -- positions -------------------------------------------------------------
    def resume_offsets(self, partitions: Sequence[int]) -> Offsets:
        """Where to start reading each partition: the lowest offset any group holds.

        None: no group holds anything (start where the consumer group would); -1:
        some groups hold something and some nothing (start from the beginning).
        """
        self._load(partitions)
        out: Offsets = {}
        for p, floor in durable(self.stored, partitions).items():
            if floor is None:
                nothing = all(group.get(p) is None for group in self.stored.values())
                floor = None if nothing else -1
                if floor == -1:
                    self._rewound[p] = -1  # the next batch of p is its beginning
            out[p] = floor
        return out

    def durable_offsets(self) -> Offsets:
        """Per owned partition, what every group has stored (what Kafka may commit).
        Safe to call while another thread applies: it iterates a copy of the owned
        partitions (the groups are fixed and only looked up)."""
        return durable(self.stored, list(self.covered))

    def forget(self, partitions: Iterable[int]) -> set[int]:
        """Partitions given up (after a flush): their positions are read again if they
        return. Item state still held back cannot be told apart by partition, so it
        goes too, with every partition it covers (the store's offsets are behind all
        of them): returns those the caller did not name, to read them again."""
        given_up = set(partitions)
        landed = self._drop_flush()
        if not landed or not self.pending.empty():
            self.pending = Pending()
            given_up |= set(self.covered)
        for p in given_up:
            self.covered.pop(p, None)
            self._carry.pop(p, None)
            for group in self.stored.values():
                group.pop(p, None)
        return given_up - set(partitions)

    def _load(self, partitions: Sequence[int]) -> None:
        if not partitions:
            return
        self._settle()
        fresh = self.store.positions(self.topic, partitions)
        for tag in self._tags:
            group = fresh.get(tag, {})
            for p in partitions:
                self.stored[tag][p] = group.get(p)
        self.covered.update(durable(self.stored, partitions))

    # -- apply -----------------------------------------------------------------
    def apply(self, batches: Sequence[PartitionBatch]) -> ApplyResult:
        """Write the batches' histories now and hold their item state back (flushing
        what is due). After any failure nothing held is trusted: positions are read
        again, and the next batch rewinds if the store is behind it."""
        try:
            return self._apply(batches)
        except Rewind:
            raise
        except BaseException:
            self._invalidate()
            raise

    def _invalidate(self) -> None:
        self.pending = Pending()
        self.forget(list(self.covered))

    def _apply(self, batches: Sequence[PartitionBatch]) -> ApplyResult:
        result = ApplyResult()
        live = [b for b in batches if b.next_offset > b.first_offset]
        self._load(sorted({b.partition for b in live if b.partition not in self.covered}))
        todo: list[PartitionBatch] = []
        rewinds: list[Rewind] = []
        for batch in live:
            try:
                fresh = self._fresh_part(batch)
            except Rewind as asked:
                rewinds.append(asked)
                continue
            result.skipped_events += len(batch.events) - len(fresh.events)
            if fresh.next_offset > fresh.first_offset:
                todo.append(fresh)
            else:  # every group has all of it
                covered = self.covered.get(batch.partition)
                self.covered[batch.partition] = max(covered or 0, batch.next_offset)
        if rewinds:
            # Nothing of this poll is written: every partition in it is read
            # again, from where its batch started unless a rewind says otherwise
            # (the consumer's position is past them all).
            offsets: dict[int, int | None] = {b.partition: b.first_offset for b in todo}
            for named in (r.offsets for r in rewinds):
                offsets.update(named)
            raise Rewind(offsets, "; ".join(str(r) for r in rewinds))
        if todo:
            writes = self._plan(todo)
            outcomes = self.store.write(writes)
            if not all(outcomes):
                result.conflicts += outcomes.count(False)
                self._conflict(
                    [b.partition for b in todo], "a history write found its offsets moved"
                )
            for w in writes:
                self._record(w)
            for batch in todo:
                self.covered[batch.partition] = batch.next_offset
                result.applied_events += len(batch.events)
                result.rejected += len(batch.rejected)
        if self.due():
            self._flush(False)
        return result

    def _fresh_part(self, batch: PartitionBatch) -> PartitionBatch:
        """What of the batch some group still needs; a gap in front of it rewinds."""
        p = batch.partition
        covered = self.covered.get(p)
        if (
            covered is None
            and batch.first_offset > 0
            and self._rewound.get(p) != -1
            and any(self.stored[tag].get(p) is not None for tag in self._tags)
        ):
            # Some groups hold part of p and some none of it (a first flush that
            # failed or was cut short): those need p from its beginning.
            self._rewound[p] = -1
            raise Rewind({p: -1}, f"partition {p}: some groups hold none of it")
        if covered is not None and batch.first_offset > covered:
            if self._rewound.get(p) == covered:
                # Asked for once already and the broker still starts later: the
                # events in between are gone (retention). Say so and go on.
                log.error(
                    "%s[%d]: events %d..%d are no longer on the topic; their effects are lost",
                    self.topic,
                    p,
                    covered,
                    batch.first_offset - 1,
                )
            else:
                self._rewound[p] = covered
                raise Rewind({p: covered}, f"partition {p} resumed after a gap")
        self._rewound.pop(p, None)
        if not any(self._lacks(tag, p, batch.next_offset - 1) for tag in self._tags):
            return batch.between(batch.next_offset, None)
        # covered is None only while some group holds nothing of p (_load).
        return batch.since(covered)

    def _plan(self, batches: list[PartitionBatch]) -> list[GroupWrite]:
        """Fold the batches: history writes to return, item state into pending."""
        cfg = self.store.config
        keys = self.store.keys
        pend = self.pending
        max_ts = max((e.ts for b in batches for _, e in b.events), default=None)
        if max_ts is not None:
            self._move_landmarks(max_ts)
        # Replay: some group already holds part of a batch (a restart after a
        # crash). Read whole histories then, and strip the replayed entries.
        replay = {
            b.partition
            for b in batches
            if any(
                (v := self.stored[t].get(b.partition)) is not None and v > b.first_offset
                for t in self._tags
            )
        }
        users = sorted({e.user_id for b in batches for _, e in b.events})
        window = cfg.rules.pair_window
        base = self.store.histories(users, None if replay else window)
        carry = self._carried(batches, replay)
        if replay:
            firsts = {b.partition: b.first_offset for b in batches if b.partition in replay}
            base = {u: _strip(h, firsts) for u, h in base.items()}
            polled = set(users)
            for carried in carry.values():
                base.update((u, carried[u]) for u in polled & carried.keys())
        co_decay = (
            (pend.co_ref, cfg.co_half_life_ms)
            if cfg.co_half_life_ms is not None and pend.co_ref is not None
            else None
        )
        entries: dict[str, dict[str, list[Entry]]] = defaultdict(dict)  # tag -> user -> new
        offsets: dict[str, dict[int, tuple[int | None, int]]] = defaultdict(dict)
        histories: dict[str, list[Entry]] = dict(base)
        for batch in batches:
            p = batch.partition
            for lo, hi in self._segments(batch):
                seg = batch.between(lo, hi)
                positions = [(p, o) for o, _ in seg.events]
                # Every row group lacks the segment (the usual case): pairs are
                # added straight into pending, saving a filter per row.
                direct = all(self._lacks(tag, p, lo) for tag in self._row_tags)
                pairs = pend.co if direct else PairCounts()
                delta = fast_fold(
                    [e for _, e in seg.events],
                    histories,
                    cfg.rules,
                    pairs,
                    co_decay=co_decay,
                    positions=positions,
                )
                histories.update(delta.histories)
                self._take_items(p, lo, seg, delta, pairs)
                for user, new_hist in delta.histories.items():
                    tag = keys.user_tag(user)
                    if not self._lacks(tag, p, lo):
                        continue
                    new = new_hist[: delta.added[user]][::-1]
                    entries[tag].setdefault(user, []).extend(new)
            for tag in entries:
                stored = self.stored[tag].get(p)
                if stored is None or stored < batch.next_offset:
                    offsets[tag][p] = (stored, batch.next_offset)
        for batch in batches:
            if batch.partition in carry:
                carried = carry[batch.partition]
                carried.update((e.user_id, histories[e.user_id]) for _, e in batch.events)
                self._carry[batch.partition] = (batch.next_offset, carried)
        keep_from = {p: self._item_floor(p) for p in {b.partition for b in batches}}
        writes = [
            GroupWrite(
                tag,
                self.topic,
                offsets[tag],
                histories=[(u, new) for u, new in users_new.items() if new],
                keep_from={p: keep_from[p] for p in offsets[tag]},
            )
            for tag, users_new in entries.items()
            if offsets[tag]
        ]
        return writes

    def _carried(
        self, batches: list[PartitionBatch], replay: set[int]
    ) -> dict[int, dict[str, list[Entry]]]:
        """Per replayed partition, the histories its replay has folded so far (user ->
        newest first), where this poll goes on from the last: the store lacks what an
        original poll with more than history_len events of a user never pushed, and
        a replay may be cut into other polls. Every other carry is dropped."""
        out: dict[int, dict[str, list[Entry]]] = {}
        for b in batches:
            nxt, carried = self._carry.pop(b.partition, (None, {}))
            if b.partition in replay:
                out[b.partition] = carried if nxt == b.first_offset else {}
        return out

    def _segments(self, batch: PartitionBatch) -> list[tuple[int, int]]:
        """The batch cut at every group's stored offset inside it: within a segment,
        each group either has all of it or none."""
        p = batch.partition
        cuts = sorted(
            {
                v
                for tag in self._tags
                if (v := self.stored[tag].get(p)) is not None
                and batch.first_offset < v < batch.next_offset
            }
        )
        bounds = [batch.first_offset, *cuts, batch.next_offset]
        return list(itertools.pairwise(bounds))

    def _move_landmarks(self, max_ts: int) -> None:
        """Keep pending's decay landmarks at the epoch of the newest event (rescaling it)."""
        cfg = self.store.config
        pend = self.pending
        if cfg.co_half_life_ms is not None:
            ref = landmark(max_ts, cfg.co_half_life_ms, CO_EPOCH_HALF_LIVES)
            if pend.co_ref is None or ref > pend.co_ref:
                if pend.co_ref is not None and pend.co:
                    pend.co.rebase(2.0 ** ((pend.co_ref - ref) / cfg.co_half_life_ms))
                pend.co_ref = ref
        ref = landmark(max_ts, cfg.half_life_ms)
        if pend.trend_ref is None or ref > pend.trend_ref:
            if pend.trend_ref is not None and pend.trend:
                factor = 2.0 ** ((pend.trend_ref - ref) / cfg.half_life_ms)
                pend.trend = {item: v * factor for item, v in pend.trend.items()}
            pend.trend_ref = ref

    def _lacks(self, tag: str, p: int, offset: int) -> bool:
        """Whether group ``tag`` has not stored the event at ``offset`` of partition ``p``."""
        stored = self.stored[tag].get(p)
        return stored is None or stored <= offset

    def _record(self, w: GroupWrite) -> None:
        """A write landed: its group now stores its next offsets."""
        for p, (_, nxt) in w.offsets.items():
            self.stored[w.tag][p] = nxt

    def _take_items(
        self, p: int, lo: int, seg: PartitionBatch, delta: StateDelta, pairs: PairCounts
    ) -> None:
        """Add what the groups that lack segment [lo, ...) need to pending (pairs
        folded straight into pending's are there already)."""
        keys = self.store.keys
        pend = self.pending
        if pairs is not pend.co:
            behind = {tag for tag in self._row_tags if self._lacks(tag, p, lo)}
            pend.co.add_rows_of(pairs, lambda item: keys.row_tag(item) in behind)
        if self._lacks(keys.item_tag, p, lo):
            pop, pop_get = pend.pop, pend.pop.get
            for item, n in delta.pop.items():
                pop[item] = pop_get(item, 0.0) + n
            assert pend.trend_ref is not None or not delta.trend_ts
            if delta.trend_ts:
                half_life = self.store.config.half_life_ms
                weights = trend_weights(
                    delta.trend_ts, pend.trend_ref or 0, half_life, delta.trend_w
                )
                trend = pend.trend
                for item, weight in weights.items():
                    trend[item] = trend.get(item, 0.0) + weight
            if delta.events:
                pend.stats["events"] += delta.events
                pend.stats["pairs"] += delta.pairs
            for _, exc in seg.rejected:
                pend.stats[f"dlq:{exc.reason}"] += 1
            if delta.max_ts is not None and (pend.clock is None or delta.max_ts > pend.clock):
                pend.clock = delta.max_ts
        if pend.since is None and (seg.events or seg.rejected):
            pend.since = self.clock()

    def _item_floor(self, p: int) -> int:
        """The oldest offset of partition p some item-side group has not stored: what a
        replay would fold again, so histories keep entries from there on."""
        floor = durable({tag: self.stored[tag] for tag in self._item_side}, [p])[p]
        return 0 if floor is None else floor

    def _conflict(self, partitions: Iterable[int], why: str) -> None:
        """Someone else wrote our partitions: drop what we hold, re-read, start again."""
        parts = sorted(set(partitions) | set(self.covered))
        self.pending = Pending()
        self.forget(parts)
        raise Rewind(self.resume_offsets(parts), why)

    # -- flush -----------------------------------------------------------------
    def due(self) -> bool:
        """Whether :meth:`flush_if_due` has something to do."""
        if self._flushing is not None and self._flushing.done():
            return True  # take its outcome (and move Kafka commits up)
        return self._pending_due()

    def _pending_due(self) -> bool:
        pend = self.pending
        if pend.since is None:
            return self.clock() - self._last_advance >= self.advance_every_s and self._lagging()
        return self.clock() - pend.since >= self.delay_s or pend.co.at_least(self.max_pairs)

    def _lagging(self) -> bool:
        return any(
            _before(self.stored[tag].get(p), c)
            for tag in self._tags
            for p, c in self.covered.items()
            if c is not None
        )

    def flush(self) -> None:
        """Write pending item state now, and return with everything written (and move
        idle groups' offsets up, now and then)."""
        self._guarded(self._flush, True)

    def flush_if_due(self, *, wait: bool = False) -> None:
        """Take a finished background flush's outcome, and flush what is due: in the
        background where enabled, unless ``wait`` (nothing else to do meanwhile)."""
        self._guarded(self._flush, False, wait)

    def _guarded(self, step: Callable[[bool], None], force: bool, wait: bool = True) -> None:
        try:
            step(force)
            if wait:
                self._settle()
        except Rewind:
            raise
        except BaseException:
            self._invalidate()
            raise

    def _flush(self, force: bool) -> None:
        self._settle()
        if not force and not self._pending_due():
            return
        keys = self.store.keys
        pend = self.pending
        now = self.clock()
        advance = now - self._last_advance >= self.advance_every_s
        owned = {p: c for p, c in self.covered.items() if c is not None}

        def offsets(tag: str) -> dict[int, tuple[int | None, int]]:
            # Forward only: a group ahead of what we cover (a replay still on its
            # way past it) keeps its offset, or the replay would apply to it again.
            stored = self.stored[tag]
            return {p: (stored.get(p), c) for p, c in owned.items() if _before(stored.get(p), c)}

        rows: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
        for a, row in pend.co.rows().items():
            rows[keys.row_tag(a)][a] = row
        rows_first: list[GroupWrite] = []
        for tag in self._row_tags:
            moved = offsets(tag)
            if moved and (tag in rows or advance):
                rows_first.append(
                    GroupWrite(tag, self.topic, moved, rows=rows.get(tag, {}), co_ref=pend.co_ref)
                )
        idle_users: list[GroupWrite] = []
        if advance:
            for tag in self._user_tags:
                moved = offsets(tag)
                if moved:
                    idle_users.append(GroupWrite(tag, self.topic, moved))
        last: list[GroupWrite] = []
        moved = offsets(keys.item_tag)
        if moved and (not pend.empty() or advance):
            last.append(
                GroupWrite(
                    keys.item_tag,
                    self.topic,
                    moved,
                    pop=dict(pend.pop),
                    trend=pend.trend,
                    trend_ref=pend.trend_ref,
                    stats=dict(pend.stats),
                    clock=pend.clock,
                )
            )
        self.pending = Pending(co_ref=pend.co_ref, trend_ref=pend.trend_ref)
        if advance:
            self._last_advance = now
        if idle_users:
            self._take(self._write_in_order([idle_users]))
        if not rows_first and not last:
            return
        if self._flusher is None:
            self._take(self._write_in_order([rows_first, last]))
        else:
            self._flushing = self._flusher.submit(self._write_in_order, [rows_first, last])

    def _write_in_order(self, stages: list[list[GroupWrite]]) -> list[tuple[GroupWrite, bool]]:
        """Each stage's writes in one call, in order, stopping after a stage with a
        refused write. Rows go before the item group: its stats say "applied", so
        a reader that waits for them finds the rows there. Touches no state of
        ``self`` but the store, so it may run on the flush thread."""
        done: list[tuple[GroupWrite, bool]] = []
        for writes in stages:
            if not writes:
                continue
            outcomes = self.store.write(writes)
            done.extend(zip(writes, outcomes, strict=True))
            if not all(outcomes):
                break
        return done

    def _take(self, done: list[tuple[GroupWrite, bool]]) -> None:
        """Record the writes that landed; a refused one means someone else wrote."""
        for w, ok in done:
            if ok:
                self._record(w)
        if not all(ok for _, ok in done):
            owned = [p for p, c in self.covered.items() if c is not None]
            self._conflict(owned, "an item-state write found its offsets moved")

    def settle(self) -> None:
        """Wait for the flush in flight, if any, and take its outcome (raising what it
        raised: a :class:`Rewind` when its offsets had moved)."""
        self._guarded(lambda _: self._settle(), False, False)

    def _settle(self) -> None:
        """Take the outcome of the flush in flight, if any (raising what it raised)."""
        future, self._flushing = self._flushing, None
        if future is not None:
            self._take(future.result())

    def _drop_flush(self) -> bool:
        """Wait for the flush in flight and record what of it landed; False when some
        of it did not (refused, or failed: then the store's positions decide)."""
        future, self._flushing = self._flushing, None
        if future is None:
            return True
        try:
            done = future.result()
        except Exception:  # already failing; the store's positions decide
            log.debug("the flush in flight failed while partitions were given up")
            return False
        for w, ok in done:
            if ok:
                self._record(w)
        return all(ok for _, ok in done)


def _before(stored: int | None, covered: int) -> bool:
    """Whether a group's stored offset is behind what the consumer covers."""
    return stored is None or stored < covered


def _strip(history: list[Entry], firsts: dict[int, int]) -> list[Entry]:
    """A history without the entries of offsets a replay is about to fold again."""
    out = []
    for e in history:
        pos = e.pos
        if pos is not None and pos[0] in firsts and pos[1] >= firsts[pos[0]]:
            continue
        out.append(e)
    return out
