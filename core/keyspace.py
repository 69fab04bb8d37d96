"""The Redis keyspace: every key streamrec reads or writes, in one place.

All keys start with a namespace (``RedisSettings.namespace``, default ``sr``) so
several deployments or tests can share one server without touching each other.

| key                  | type   | bound                                   | TTL        | written by | read by |
|----------------------|--------|-----------------------------------------|------------|------------|---------|
| {ns}:hist:{user}     | LIST   | newest first, ``history_len`` entries    | idle TTL   | consumer   | consumer, serving |
| {ns}:co:{item}       | ZSET   | neighbour -> co-count, top ``co_top_m``  | none       | consumer   | serving |
| {ns}:pop             | ZSET   | item -> total events, top ``pop_max``    | none       | consumer   | serving |
| {ns}:trend           | ZSET   | item -> forward-decayed score, top ``pop_max`` | none | consumer   | serving |
| {ns}:meta            | HASH   | trend_ref, half_life_ms, clock (event-time ms) | none | consumer   | consumer, tools |
| {ns}:offsets         | HASH   | "{topic}:{partition}" -> next offset to apply | none  | consumer   | consumer |
| {ns}:stats           | HASH   | counters: events, pairs, dlq:{reason}    | none       | consumer   | harness, tools |
| {ns}:idem:{key}      | STRING | one POST /events Idempotency-Key's claim  | the window | serving    | serving |
| {ns}:seq             | STRING | writes that changed item state so far    | none       | consumer   | serving |
| {ns}:changed         | ZSET   | item -> seq of its latest change; the last ``FEED_KEEP`` writes | none | consumer | serving |

The change feed (``seq``, ``changed``) is how the API's item caches stay within
their staleness bound without re-reading every row: see serving/items.py.

History entries are JSON arrays ``[ts_ms, item_id, session_id_or_null]``.

The idle TTL is wall-clock (Redis expiry) and is a memory bound, not part of the
state semantics: sessions themselves are cut on event time (``session_gap_ms``).

Trending uses forward decay (Cormode et al. 2009): an event at time t adds
``2 ** ((t - trend_ref) / half_life)``. Scores only ever grow, so ranking needs
no rewrite as time passes; when ``t - trend_ref`` would overflow the float range
the consumer moves ``trend_ref`` forward and rescales the set in the same
transaction. The decayed count "as of" the stream clock is
``score * 2 ** ((trend_ref - clock) / half_life)``.

Single-node Redis only: a batch's script touches many keys atomically, and its
history and co-occurrence keys are built inside the scripts, which Redis Cluster
allows only within one hash slot. What a backend must do with these keys is
the state contract (consumer/state.py for writes, serving/reader.py for reads).
"""

from __future__ import annotations

from dataclasses import dataclass

# Writes of item state the change feed remembers. A reader further behind than
# this cannot tell what it missed and drops its cache. 100,000 writes is
# minutes to hours of a busy stream (one write per partition batch).
FEED_KEEP = 100_000


@dataclass(frozen=True, slots=True)
class Keyspace:
    namespace: str = "sr"

    def hist(self, user_id: str) -> str:
        return f"{self.namespace}:hist:{user_id}"

    def co(self, item_id: str) -> str:
        return f"{self.namespace}:co:{item_id}"

    @property
    def pop(self) -> str:
        return f"{self.namespace}:pop"

    @property
    def trend(self) -> str:
        return f"{self.namespace}:trend"

    @property
    def meta(self) -> str:
        return f"{self.namespace}:meta"

    def idempotency(self, key: str) -> str:
        return f"{self.namespace}:idem:{key}"

    @property
    def seq(self) -> str:
        return f"{self.namespace}:seq"

    @property
    def changed(self) -> str:
        return f"{self.namespace}:changed"

    @property
    def offsets(self) -> str:
        return f"{self.namespace}:offsets"

    @property
    def stats(self) -> str:
        return f"{self.namespace}:stats"

    @staticmethod
    def offset_field(topic: str, partition: int) -> str:
        return f"{topic}:{partition}"

    def pattern(self) -> str:
        """Glob matching every key of this namespace (for cleanup and inspection)."""
        return f"{self.namespace}:*"
