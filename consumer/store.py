"""Apply state deltas to Redis: one atomic script per partition batch, offsets included.

The offset stored in Redis (``{ns}:offsets``) is the next offset to read for each
partition, written in the same script as the state it produced. So a batch is
either wholly applied with its offset or not at all, and a consumer that seeks
to the stored offset on assignment never applies an event twice.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import orjson
import redis

from consumer.logic import (
    Entry,
    SessionRules,
    StateDelta,
    fold,
    trend_landmark,
    trend_weights,
)
from core.errors import InvalidEvent
from core.events import ClickEvent
from core.keyspace import Keyspace

log = logging.getLogger("streamrec.consumer")

_APPLY_LUA = resources.files("consumer").joinpath("apply.lua").read_text()
# Conflicts happen only when a partition changes owner or trending is rescaled
# concurrently; a few rounds settle either.
MAX_CAS_ROUNDS = 8


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """What the store keeps and for how long; the shipped defaults, like SessionRules'."""

    rules: SessionRules = field(default_factory=SessionRules)
    # Half-life of the trending set (the trending reference, the blend's prior and
    # filler, cold users' answers). 365 days was chosen on ml-latest-small's
    # validation part over 7, 30, 90 and 730 (docs/evaluation.md): MovieLens's
    # timeline is sparse. A dense live stream may want hours to days.
    half_life_ms: int = 365 * 24 * 3600 * 1000
    co_top_m: int = 200
    pop_max: int = 200_000
    idle_ttl_s: int = 30 * 24 * 3600


@dataclass
class Snapshot:
    histories: dict[str, list[Entry]]
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


class StateStore:
    def __init__(self, client: redis.Redis, keys: Keyspace, config: StoreConfig) -> None:
        self.client = client
        self.keys = keys
        self.config = config
        self._apply = client.register_script(_APPLY_LUA)

    # -- reads ---------------------------------------------------------------
    def stored_offsets(self, topic: str, partitions: Iterable[int]) -> dict[int, int | None]:
        parts = list(partitions)
        if not parts:
            return {}
        fields = [Keyspace.offset_field(topic, p) for p in parts]
        values = self.client.hmget(self.keys.offsets, fields)
        return {p: None if v is None else int(v) for p, v in zip(parts, values, strict=True)}

    def snapshot(self, topic: str, partitions: Sequence[int], users: Sequence[str]) -> Snapshot:
        """Offsets, trending landmark and the users' histories, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(self.keys.offsets, [Keyspace.offset_field(topic, p) for p in partitions])
        pipe.hget(self.keys.meta, "trend_ref")
        # Pairing only looks at the newest pair_window entries; new entries are
        # pushed in front, so nothing older needs to travel.
        window = self.config.rules.pair_window
        for user in users:
            pipe.lrange(self.keys.hist(user), 0, window - 1)
        offsets_raw, ref_raw, *hists = pipe.execute()
        return Snapshot(
            histories={
                u: [Entry.decode(x) for x in h] for u, h in zip(users, hists, strict=True) if h
            },
            offsets={
                p: None if v is None else int(v)
                for p, v in zip(partitions, offsets_raw, strict=True)
            },
            trend_ref=None if ref_raw is None else int(ref_raw),
        )

    def dump(self) -> dict[str, Any]:
        """The whole namespace as plain data (for tests, fault checks and inspection).

        SCANs the namespace, so it is for small states and tooling, never the hot path.
        """
        ns = self.keys.namespace
        out: dict[str, Any] = {"hist": {}, "co": {}}
        for raw in self.client.scan_iter(match=self.keys.pattern(), count=1000):
            key = _text(raw)
            if key.startswith(f"{ns}:hist:"):
                out["hist"][key[len(ns) + 6 :]] = [
                    Entry.decode(x) for x in self.client.lrange(key, 0, -1)
                ]
            elif key.startswith(f"{ns}:co:"):
                out["co"][key[len(ns) + 4 :]] = _zset(self.client, key)
        out["pop"] = _zset(self.client, self.keys.pop)
        out["trend"] = _zset(self.client, self.keys.trend)
        out["meta"] = {_text(k): _text(v) for k, v in self._hash(self.keys.meta).items()}
        out["offsets"] = {_text(k): int(v) for k, v in self._hash(self.keys.offsets).items()}
        out["stats"] = {_text(k): int(v) for k, v in self._hash(self.keys.stats).items()}
        return out

    def _hash(self, key: str) -> dict[Any, Any]:
        return dict(self.client.hgetall(key))

    # -- writes --------------------------------------------------------------
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
            max_ts = max((e.ts for _, f in todo for _, e in f.events), default=None)
            old_ref = snap.trend_ref
            new_ref, factor = (
                trend_landmark(old_ref, max_ts, self.config.half_life_ms)
                if max_ts is not None
                else (old_ref, None)
            )
            pipe = self.client.pipeline(transaction=False)
            for _, fresh in todo:
                self._queue(
                    pipe,
                    topic,
                    fresh,
                    snap,
                    snap.offsets[fresh.partition],
                    old_ref,
                    new_ref,
                    factor,
                )
            outcomes = pipe.execute()
            pending = []
            for (batch, fresh), outcome in zip(todo, outcomes, strict=True):
                if int(outcome[0]) == 1:
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

    def _queue(
        self,
        pipe: redis.client.Pipeline,
        topic: str,
        batch: PartitionBatch,
        snap: Snapshot,
        expected: int | None,
        old_ref: int | None,
        new_ref: int | None,
        factor: float | None,
    ) -> None:
        cfg = self.config
        delta: StateDelta = fold((e for _, e in batch.events), snap.histories, cfg.rules)
        rows: dict[str, list[str | int]] = defaultdict(list)
        for (a, b), n in delta.co.items():
            rows[a] += (b, n)
        stats: list[str | int] = []
        if delta.events:
            stats += ("events", delta.events, "pairs", delta.pairs)
        for reason, n in Counter(exc.reason for _, exc in batch.rejected).items():
            stats += (f"dlq:{reason}", n)
        weights = trend_weights(delta.trend_ts, new_ref, cfg.half_life_ms) if new_ref else {}
        payload = orjson.dumps(
            {
                # New entries only, oldest first (LPUSH order); the CAS on the
                # offset makes the append happen exactly once.
                "h": [
                    [u, [e.encode().decode() for e in reversed(h[: delta.added[u]])]]
                    for u, h in delta.histories.items()
                ],
                "c": list(rows.items()),
                "p": [x for item, n in delta.pop.items() for x in (item, n)],
                "t": [x for item, w in weights.items() for x in (item, w)],
                "s": stats,
            }
        )
        keys = [self.keys.offsets, self.keys.meta, self.keys.stats, self.keys.pop, self.keys.trend]
        args: list[str | int | bytes] = [
            Keyspace.offset_field(topic, batch.partition),
            "" if expected is None else expected,
            batch.next_offset,
            "" if old_ref is None else old_ref,
            "" if new_ref is None or not delta.events else new_ref,
            "" if factor is None else repr(factor),
            "" if delta.max_ts is None else delta.max_ts,
            cfg.half_life_ms,
            self.keys.namespace,
            f"{cfg.co_top_m} {cfg.pop_max} {cfg.rules.history_len} {cfg.idle_ttl_s}",
            payload,
        ]
        self._apply(keys=keys, args=args, client=pipe)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _zset(client: redis.Redis, key: str) -> dict[str, float]:
    pairs: list[tuple[Any, float]] = client.zrange(key, 0, -1, withscores=True)  # type: ignore[assignment]
    return {_text(m): float(sc) for m, sc in pairs}
