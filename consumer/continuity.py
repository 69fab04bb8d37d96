"""Telling a lost or rolled-back Redis from a fresh deployment, and what to do then.

Every group stores the offsets of the events whose effects it holds
(``consumer/state.py``), so Redis alone says where each partition resumes. What
Redis alone cannot say is whether "nothing stored" means "nothing happened yet"
or "everything was lost": a restart without persistence, a ``FLUSHALL``, a new
server behind the same address, or a failed-over master without its data all
look like a fresh deployment. Two witnesses outside the state tell them apart:

- **Kafka's committed offsets** of the consumer group. The worker commits only
  what every group has stored (``Ingest.durable_offsets``), and stored offsets
  only grow, so in a healthy store every partition's stored offset is at or past
  its committed one. A partition whose stored offset is behind its committed
  offset (or missing while one is committed) lost state.
- **The store's marker** (``{ns:p}:store``: an id, when it was created, its
  rebuilds). The consumer writes it when it first finds a store with nothing in
  it and nothing committed, and notes each rebuild in it. A store that holds
  nothing and no marker lost everything ("lost"); one that keeps its marker but
  holds less than was committed was restored to an earlier point, or a
  Cluster shard lost its data ("behind"). The API's item cache keys what it
  holds on the marker's id, so it starts afresh when the store underneath is a
  different one, however far a rebuild has gone.

What the consumer does on a finding is a setting
(``STREAMREC_CONSUMER_ON_STATE_LOSS``): ``rebuild`` (the default) replays each
such partition from the earliest offset the topic still holds, and the
exactly-once rules make the result equal one clean pass over what is retained;
``refuse`` stops with :class:`core.errors.StateLost` before anything is written,
for operators who would rather restore a backup. Either way it is logged: it
never goes on silently. What a rebuild cannot bring back is what the topic no
longer retains (docs/operations.md, "When Redis loses its state").
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from consumer.state import Offsets
from core.errors import StateLost

Policy = Literal["rebuild", "refuse"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One partition whose state in Redis is behind what the consumer group committed."""

    partition: int
    kind: Literal["lost", "behind"]
    stored: int  # the offset Redis resumes from (0: nothing stored)
    committed: int  # the consumer group's committed offset

    def __str__(self) -> str:
        return (
            f"partition {self.partition}: Redis resumes at {self.stored}, "
            f"the group committed {self.committed} ({self.committed - self.stored} events)"
        )


def check(resume: Offsets, committed: Mapping[int, int | None], marked: bool) -> list[Finding]:
    """The partitions whose stored state is behind the group's committed offsets.

    ``resume`` is ``Ingest.resume_offsets`` (None: no group holds anything; -1:
    some groups do and some do not), ``committed`` the group's committed offset per
    partition (None: never committed), ``marked`` whether the store has its marker.
    """
    found = []
    for p, c in sorted(committed.items()):
        if not c:
            continue  # nothing committed: nothing to be behind of
        r = resume.get(p)
        stored = 0 if r is None or r < 0 else r
        if stored >= c:
            continue
        kind: Literal["lost", "behind"] = "lost" if r is None and not marked else "behind"
        found.append(Finding(p, kind, stored, c))
    return found


def refusal(topic: str, group: str, findings: list[Finding]) -> StateLost:
    kinds = {f.kind for f in findings}
    what = "holds none of the state" if kinds == {"lost"} else "holds less state than"
    return StateLost(
        f"Redis {what} consumer group {group!r} committed on {topic}: "
        + "; ".join(map(str, findings))
        + ". It was restarted without persistence, flushed, replaced, or restored to an "
        "earlier point. Refusing to go on (STREAMREC_CONSUMER_ON_STATE_LOSS=refuse).",
        hint="restore Redis from a backup, or set STREAMREC_CONSUMER_ON_STATE_LOSS=rebuild "
        "to replay the topic from its earliest retained offset",
    )


def new_id() -> str:
    """A marker id: it names one lineage of the store, and every rebuild starts a new one."""
    return uuid.uuid4().hex


def new_marker(group: str, topic: str) -> dict[str, str]:
    """The fields of a store's marker when it is first written."""
    return {
        "id": new_id(),
        "created_ms": str(int(time.time() * 1000)),
        "group": group,
        "topic": topic,
        "rebuilds": "0",
    }
