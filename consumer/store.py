"""The Redis backend of the writer contract (consumer.state): one script per group write.

Each group (a hash tag of ``core/keyspace.py``) stores the offsets of the
events whose effects it holds (``{tag}:offsets``), written by the same script as
those effects, so a group either has an event's effect with its offset or has
neither. ``consumer.state.Ingest`` builds the writes and keeps exactly-once on
top of this; the same code runs on one Redis node and on a Redis Cluster
(writes are pipelined, per node on a cluster).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from importlib import resources
from typing import Any

import orjson
import redis
from redis.cluster import RedisCluster

from consumer.logic import Entry
from consumer.state import GroupWrite, Offsets, StateWriter, StoreConfig, dump_offsets, rows_at
from core.keyspace import FEED_KEEP, ROW_REF, Keyspace

_APPLY_LUA = resources.files("consumer").joinpath("apply.lua").read_text()


class RedisStateWriter(StateWriter):
    """Writes the consumer's state to Redis (``core/keyspace.py`` has the keys)."""

    def __init__(self, client: redis.Redis, keys: Keyspace, config: StoreConfig) -> None:
        self.client = client
        self.keys = keys
        self.config = config
        self._apply = client.register_script(_APPLY_LUA)
        c = config
        self._limits = (
            f"{c.co_top_m} {c.co_slack} {c.pop_max} {c.rules.history_len} "
            f"{c.rules.pair_window} {c.idle_ttl_s} {FEED_KEEP} {c.row_idle_ttl_s}"
        )

    # -- reads ---------------------------------------------------------------
    def positions(self, topic: str, partitions: Sequence[int]) -> dict[str, Offsets]:
        tags = self.keys.tags()
        fields = [Keyspace.offset_field(topic, p) for p in partitions]
        pipe = self.client.pipeline(transaction=False)
        for tag in tags:
            pipe.hmget(Keyspace.offsets(tag), fields)
        return {
            tag: {p: None if v is None else int(v) for p, v in zip(partitions, row, strict=True)}
            for tag, row in zip(tags, pipe.execute(), strict=True)
        }

    def marker(self) -> dict[str, str]:
        """The store's marker (``consumer/continuity.py``); empty when it has none."""
        return {_text(k): _text(v) for k, v in self._hash(self.keys.marker).items()}

    def mark(self, fields: dict[str, str], *, rebuild: str | None = None) -> None:
        """Write the marker's fields (a rebuild also counts itself and says why)."""
        pipe = self.client.pipeline(transaction=False)
        mapping: dict[Any, Any] = dict(fields)
        pipe.hset(self.keys.marker, mapping=mapping)
        if rebuild is not None:
            pipe.hincrby(self.keys.marker, "rebuilds", 1)
            pipe.hset(self.keys.marker, "last_rebuild", rebuild)
        pipe.execute()

    def histories(self, users: Sequence[str], n: int | None) -> dict[str, list[Entry]]:
        pipe = self.client.pipeline(transaction=False)
        for user in users:
            pipe.lrange(self.keys.hist(user), 0, -1 if n is None else n - 1)
        return {
            u: [Entry.decode(x) for x in h] for u, h in zip(users, pipe.execute(), strict=True) if h
        }

    def dump(self) -> dict[str, Any]:
        """The whole namespace as plain data: ``hist`` user -> [Entry] newest first
        (the newest ``history_len``), ``co`` item -> {neighbour: count} (decayed
        counts as of the stream clock, ``consumer.state.rows_at``), ``pop``/``trend``
        item -> score, ``meta`` field -> int, ``offsets`` "topic:partition" -> the
        offset every group has reached, ``stats`` counter -> int.

        SCANs the namespace, so it is for small states and tooling, never the hot path.
        """
        out: dict[str, Any] = {"hist": {}, "co": {}}
        cap = self.config.rules.history_len
        offsets: dict[str, dict[str, int]] = {}
        raw_rows: dict[str, dict[str, Any]] = {}
        for raw in self.client.scan_iter(match=self.keys.pattern(), count=1000):
            key = _text(raw)
            tag, _, rest = key.partition("}:")
            if rest.startswith("hist:"):
                entries = self.client.lrange(key, 0, cap - 1)
                out["hist"][rest[5:]] = [Entry.decode(x) for x in entries]
            elif rest.startswith("co:"):
                raw_rows[rest[3:]] = {_text(k): _text(v) for k, v in self._hash(key).items()}
            elif rest == "offsets":
                offsets[tag + "}"] = {_text(k): int(v) for k, v in self._hash(key).items()}
        out["meta"] = {_text(k): int(v) for k, v in self._hash(self.keys.meta).items()}
        rows = {
            item: (None if (ref := row.pop(ROW_REF, None)) is None else float(ref), row)
            for item, row in raw_rows.items()
        }
        out["co"] = rows_at(rows, out["meta"].get("clock"), self.config.co_half_life_ms)
        out["pop"] = _zset(self.client, self.keys.pop)
        out["trend"] = _zset(self.client, self.keys.trend)
        out["offsets"] = dump_offsets(offsets, self.keys)
        out["stats"] = {_text(k): int(v) for k, v in self._hash(self.keys.stats).items()}
        return out

    def history_ttl(self, user: str) -> int | None:
        """Seconds until the user's history expires (None: no history or no expiry)."""
        ttl = int(self.client.ttl(self.keys.hist(user)))
        return ttl if ttl >= 0 else None

    def _hash(self, key: str) -> dict[Any, Any]:
        return dict(self.client.hgetall(key))

    # -- writes --------------------------------------------------------------
    def write(self, writes: Sequence[GroupWrite]) -> list[bool]:
        """Every write in one pipelined round trip: on a single node as few script
        calls as the size bound allows (SCRIPT_WORK), on a cluster one call per
        group, pipelined per node."""
        if not writes:
            return []
        docs = [self._doc(w) for w in writes]
        if not isinstance(self.client, RedisCluster):
            replies = self._run(self.client, _chunks(docs, writes))
            return [int(x) == 1 for reply in replies for x in reply]
        # redis-py's cluster pipeline refuses scripts, so each node gets a plain
        # pipeline of the groups whose slots it serves. A slot that moved answers
        # MOVED: the error reaches Ingest, which reads positions again, and the
        # client's next call refreshes its slot map.
        by_node: dict[str, list[int]] = defaultdict(list)
        nodes = {}
        for i, w in enumerate(writes):
            node = self.client.get_node_from_key(Keyspace.offsets(w.tag))
            by_node[node.name].append(i)
            nodes[node.name] = node
        out: list[bool] = [False] * len(writes)
        for name, idx in by_node.items():
            node = self.client.get_redis_connection(nodes[name])
            for i, reply in zip(idx, self._run(node, [[docs[i]] for i in idx]), strict=True):
                out[i] = int(reply[0]) == 1
        return out

    def _run(self, client: redis.Redis, calls: list[list[dict[str, Any]]]) -> list[Any]:
        """One script call per list of documents, pipelined in one round trip.

        EVALSHA straight away: redis-py's registered scripts would ask SCRIPT EXISTS
        first, a round trip per pipeline. A server that lacks the script (restarted,
        or SCRIPT FLUSH) refuses those calls without running them; they are sent
        again once the script is loaded."""
        payloads = [(Keyspace.offsets(docs[0]["g"]), orjson.dumps(docs)) for docs in calls]
        replies: list[Any] = [None] * len(payloads)
        todo = list(range(len(payloads)))
        for attempt in range(2):
            pipe = client.pipeline(transaction=False)
            for i in todo:
                key, payload = payloads[i]
                pipe.evalsha(self._apply.sha, 1, key, payload, self._limits)
            missing = []
            for i, reply in zip(todo, pipe.execute(raise_on_error=False), strict=True):
                if isinstance(reply, redis.exceptions.NoScriptError) and attempt == 0:
                    missing.append(i)
                elif isinstance(reply, Exception):
                    raise reply
                else:
                    replies[i] = reply
            if not missing:
                break
            client.script_load(_APPLY_LUA)
            todo = missing
        return replies

    def _doc(self, w: GroupWrite) -> dict[str, Any]:
        cfg = self.config
        doc: dict[str, Any] = {
            "g": w.tag,
            "o": [
                [name, "" if expected is None else str(expected), str(nxt)]
                for name, expected, nxt in w.offset_fields()
            ],
        }
        if w.histories:
            doc["h"] = [[u, [e.encode().decode() for e in new]] for u, new in w.histories]
            doc["k"] = {str(p): off for p, off in w.keep_from.items()}
        if w.rows:
            # [[item, [neighbour, ...], [increment, ...]], ...]: arrays, so the script
            # neither walks a table to list them nor formats a number it stores.
            doc["c"] = [[item, list(row), list(row.values())] for item, row in w.rows.items()]
            if w.co_ref is not None and cfg.co_half_life_ms is not None:
                doc["cr"], doc["chl"] = w.co_ref, cfg.co_half_life_ms
        if w.pop:
            doc["p"] = [x for item, n in w.pop.items() for x in (item, n)]
        if w.trend:
            doc["t"] = [x for item, v in w.trend.items() for x in (item, repr(v))]
        if w.trend_ref is not None and (w.trend or w.pop):
            doc["tr"], doc["thl"] = w.trend_ref, cfg.half_life_ms
        if w.stats:
            doc["s"] = [x for name, n in w.stats.items() for x in (name, n)]
        if w.clock is not None:
            doc["clock"] = w.clock
        return doc


# How much one script call may carry on a single node (pairs, entries, items):
# Redis runs a script to its end before anything else, so a flush is cut into
# calls of a few milliseconds each and the API's reads slip in between.
SCRIPT_WORK = 4000


def _work(w: GroupWrite) -> int:
    return (
        sum(len(row) for row in w.rows.values())
        + sum(len(new) for _, new in w.histories)
        + len(w.pop)
        + 1
    )


def _chunks(docs: list[dict[str, Any]], writes: Sequence[GroupWrite]) -> list[list[dict[str, Any]]]:
    """The documents cut into calls of about SCRIPT_WORK each, in order."""
    calls: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    load = 0
    for doc, w in zip(docs, writes, strict=True):
        work = _work(w)
        if current and load + work > SCRIPT_WORK:
            calls.append(current)
            current, load = [], 0
        current.append(doc)
        load += work
    if current:
        calls.append(current)
    return calls


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _zset(client: redis.Redis, key: str) -> dict[str, float]:
    pairs: list[tuple[Any, float]] = client.zrange(key, 0, -1, withscores=True)  # type: ignore[assignment]
    return {_text(m): float(sc) for m, sc in pairs}
