"""The Redis backend of the writer contract (consumer.state): one script per partition batch.

The offset stored in Redis (``{ns}:offsets``) is the next offset to read for each
partition, written in the same script as the state it produced. So a batch is
either wholly applied with its offset or not at all, and a consumer that seeks
to the stored offset on assignment never applies an event twice.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any

import orjson
import redis

from consumer.logic import Entry
from consumer.state import PartitionWrite, Snapshot, StateWriter, StoreConfig
from core.keyspace import FEED_KEEP, Keyspace

_APPLY_LUA = resources.files("consumer").joinpath("apply.lua").read_text()


class RedisStateWriter(StateWriter):
    """Writes the consumer's state to one Redis node (``core/keyspace.py`` has the keys)."""

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
        """The whole namespace as plain data: ``hist`` user -> [Entry] newest first, ``co``
        item -> {neighbour: count}, ``pop``/``trend`` item -> score, ``meta`` field -> int,
        ``offsets`` "topic:partition" -> next offset, ``stats`` counter -> int.

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
        out["meta"] = {_text(k): int(v) for k, v in self._hash(self.keys.meta).items()}
        out["offsets"] = {_text(k): int(v) for k, v in self._hash(self.keys.offsets).items()}
        out["stats"] = {_text(k): int(v) for k, v in self._hash(self.keys.stats).items()}
        return out

    def history_ttl(self, user: str) -> int | None:
        """Seconds until the user's history expires (None: no history or no expiry)."""
        ttl = int(self.client.ttl(self.keys.hist(user)))
        return ttl if ttl >= 0 else None

    def _hash(self, key: str) -> dict[Any, Any]:
        return dict(self.client.hgetall(key))

    # -- writes --------------------------------------------------------------
    def write(self, writes: Sequence[PartitionWrite]) -> list[bool]:
        """One script per partition, all in one pipelined round trip."""
        pipe = self.client.pipeline(transaction=False)
        for w in writes:
            self._queue(pipe, w)
        return [int(outcome[0]) == 1 for outcome in pipe.execute()]

    def _queue(self, pipe: redis.client.Pipeline, w: PartitionWrite) -> None:
        cfg = self.config
        delta = w.delta
        rows: dict[str, list[str | int]] = defaultdict(list)
        for (a, b), n in delta.co.items():
            rows[a] += (b, n)
        payload = orjson.dumps(
            {
                # New entries only, oldest first (LPUSH order); the CAS on the
                # offset makes the append happen exactly once.
                "h": [[u, [e.encode().decode() for e in new]] for u, new in w.new_entries()],
                "c": list(rows.items()),
                "p": [x for item, n in delta.pop.items() for x in (item, n)],
                "t": [
                    x for item, v in w.trend_increments(cfg.half_life_ms).items() for x in (item, v)
                ],
                "s": [x for name, n in w.stats().items() for x in (name, n)],
            }
        )
        ks = self.keys
        keys = [ks.offsets, ks.meta, ks.stats, ks.pop, ks.trend, ks.seq, ks.changed]
        mark = w.landmark
        args: list[str | int | bytes] = [
            Keyspace.offset_field(w.topic, w.partition),
            "" if w.expected_offset is None else w.expected_offset,
            w.next_offset,
            "" if mark.expected is None else mark.expected,
            "" if mark.new is None else mark.new,
            "" if mark.factor is None else repr(mark.factor),
            "" if delta.max_ts is None else delta.max_ts,
            cfg.half_life_ms,
            self.keys.namespace,
            f"{cfg.co_top_m} {cfg.pop_max} {cfg.rules.history_len} {cfg.idle_ttl_s} {FEED_KEEP}",
            payload,
        ]
        self._apply(keys=keys, args=args, client=pipe)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _zset(client: redis.Redis, key: str) -> dict[str, float]:
    pairs: list[tuple[Any, float]] = client.zrange(key, 0, -1, withscores=True)  # type: ignore[assignment]
    return {_text(m): float(sc) for m, sc in pairs}
