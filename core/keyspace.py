"""The Redis keyspace: every key streamrec reads or writes, in one place.

Keys are grouped by hash tag (the part in braces), so that what must change
atomically lives in one Redis Cluster hash slot, and the same keys work on a
single node (where every key is "local"). A namespace (``RedisSettings.namespace``,
default ``sr``) starts every tag, so deployments and tests can share a server.

Three kinds of group, each holding the offsets of the events whose effects it
holds (``{tag}:offsets``, "{topic}:{partition}" -> next offset), written in the
same script as those effects:

| group            | tag           | keys                                              |
|------------------|---------------|---------------------------------------------------|
| user group u     | {ns:u<u>}     | hist:{user} LIST, newest first                    |
| row group r      | {ns:r<r>}     | co:{item} HASH neighbour -> count; seq, changed   |
| the item group   | {ns:p}        | pop ZSET, trend ZSET, meta HASH, stats HASH; seq, changed |

A user belongs to user group ``crc32(user) % user_groups``, an item's
co-occurrence row to row group ``crc32(item) % row_groups``. Popularity and
trending stay one sorted set each: the consumer writes them once per flush
(aggregated), not once per event, so one slot carries them at any scale.

| key                    | bound                                            | TTL      | read by |
|------------------------|--------------------------------------------------|----------|---------|
| {ns:u<u>}:hist:{user}  | ``history_len`` entries, plus those newer than the item state (see below) | idle TTL | consumer, serving |
| {ns:r<r>}:co:{item}    | top ``co_top_m`` neighbours (+ a quarter of slack between prunes); field ``/ref`` = the row's decay landmark | row idle TTL (90 d) | serving |
| {ns:p}:pop             | item -> all-time events, top ``pop_max``          | none     | serving |
| {ns:p}:trend           | item -> forward-decayed score, top ``pop_max``    | none     | serving |
| {ns:p}:meta            | trend_ref, half_life_ms, clock (largest event time) | none   | tools   |
| {ns:p}:stats           | events, pairs, dlq:{reason}                       | none     | harness, tools |
| {ns:p}:store           | the store's marker: id, created_ms, rebuilds, last rebuild (``consumer/continuity.py``) | none | consumer, serving |
| {tag}:seq, {tag}:changed | the change feed of a row group or the item group: item -> seq of its latest change, last ``FEED_KEEP`` writes | none | serving |
| {ns:i:{key}}           | one POST /events Idempotency-Key's claim          | window   | serving |

History entries are JSON arrays ``[ts_ms, item_id, session_id_or_null,
partition, offset]``: the position lets a consumer that replays after a crash
strip what the history already holds and pair each event with what came
before it. For the same reason a history keeps, beyond ``history_len``, the
entries newer than the oldest item-state offset of their partition (at most the
item flush delay's worth) plus ``pair_window`` before them; readers read the
newest ``history_len``.

The idle TTLs (a history's, 30 days; a co row's, 90 days, refreshed whenever a
click writes it) are wall-clock (Redis expiry) and are memory bounds, not part
of the state semantics: sessions themselves are cut on event time
(``session_gap_ms``). So the item keys are bounded by the items clicked within
the row TTL, whatever ids writers send; popularity and trending by ``pop_max``;
the change feeds by ``FEED_KEEP``.

Decay is forward decay (Cormode et al. 2009) against a landmark ``ref``: an
event at t adds ``w * 2 ** ((t - ref) / half_life)``, so stored scores only
grow and ranking needs no rewrite as time passes. Landmarks are epochs of the
event time (``consumer.logic.landmark``), the same for every writer; a key
stored against an older landmark is rescaled when it is next written. Trending
keeps its landmark in meta ``trend_ref``; a co row in its own ``/ref`` field.
What a backend must do with these keys is the state contract (consumer/state.py
for writes, serving/reader.py for reads).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

# Writes of item state a change feed remembers. A reader further behind than
# this cannot tell what it missed and drops its cache.
FEED_KEEP = 100_000
# The field of a co row that holds its decay landmark: "/" is never in an item id.
ROW_REF = "/ref"
USER_GROUPS = 64
ROW_GROUPS = 32
# Redis keeps a small hash as a listpack, which it scans field by field: on
# co rows of ~50-250 members that made each field update ~1.7 µs instead of
# ~0.2 µs (benchmarks/ingest_profile.py). Redis should hold larger hashes as
# hashtables: `hash-max-listpack-entries` at most this (Redis's own default is
# 128, some distributions ship 512). The local stack and docker-compose set it;
# the consumer warns at start when a server has more.
HASH_LISTPACK_ENTRIES = 32


def _bucket(text: str, n: int) -> int:
    return zlib.crc32(text.encode("utf-8")) % n if n > 1 else 0


@dataclass(frozen=True, slots=True)
class Keyspace:
    namespace: str = "sr"
    user_groups: int = USER_GROUPS
    row_groups: int = ROW_GROUPS

    # -- groups ----------------------------------------------------------------
    def user_tag(self, user_id: str) -> str:
        return f"{{{self.namespace}:u{_bucket(user_id, self.user_groups)}}}"

    def row_tag(self, item_id: str) -> str:
        return f"{{{self.namespace}:r{_bucket(item_id, self.row_groups)}}}"

    @property
    def item_tag(self) -> str:
        return f"{{{self.namespace}:p}}"

    def user_tags(self) -> list[str]:
        return [f"{{{self.namespace}:u{g}}}" for g in range(self.user_groups)]

    def row_tags(self) -> list[str]:
        return [f"{{{self.namespace}:r{g}}}" for g in range(self.row_groups)]

    def tags(self) -> list[str]:
        """Every group's tag: user groups, row groups, then the item group."""
        return [*self.user_tags(), *self.row_tags(), self.item_tag]

    # -- keys --------------------------------------------------------------------
    def hist(self, user_id: str) -> str:
        return f"{self.user_tag(user_id)}:hist:{user_id}"

    def co(self, item_id: str) -> str:
        return f"{self.row_tag(item_id)}:co:{item_id}"

    @staticmethod
    def offsets(tag: str) -> str:
        return f"{tag}:offsets"

    @staticmethod
    def seq(tag: str) -> str:
        return f"{tag}:seq"

    @staticmethod
    def changed(tag: str) -> str:
        return f"{tag}:changed"

    @property
    def pop(self) -> str:
        return f"{self.item_tag}:pop"

    @property
    def trend(self) -> str:
        return f"{self.item_tag}:trend"

    @property
    def meta(self) -> str:
        return f"{self.item_tag}:meta"

    @property
    def stats(self) -> str:
        return f"{self.item_tag}:stats"

    @property
    def marker(self) -> str:
        return f"{self.item_tag}:store"

    def idempotency(self, key: str) -> str:
        return f"{{{self.namespace}:i:{key}}}"

    @staticmethod
    def offset_field(topic: str, partition: int) -> str:
        return f"{topic}:{partition}"

    def feeds(self) -> list[str]:
        """The groups that keep a change feed: the row groups, then the item group."""
        return [*self.row_tags(), self.item_tag]

    def pattern(self) -> str:
        """Glob matching every key of this namespace (for cleanup and inspection)."""
        return f"{{{self.namespace}:*"
