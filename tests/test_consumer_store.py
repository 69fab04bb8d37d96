"""RedisStateWriter against a real redis-server: state equals the pure prediction, exactly once."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
import redis

from consumer.logic import SessionRules, fold
from consumer.state import PartitionBatch, StoreConfig
from consumer.store import RedisStateWriter
from core.errors import InvalidEvent
from core.events import ClickEvent
from core.settings import RedisSettings

T0 = 1_600_000_000_000
MIN = 60_000
TOPIC = "clicks"


def make_store(settings: RedisSettings, **cfg: Any) -> RedisStateWriter:
    client = redis.Redis.from_url(settings.url)
    return RedisStateWriter(client, settings.keys, StoreConfig(**{"co_half_life_ms": None, **cfg}))


def stream(n: int, users: int = 5, items: int = 12) -> list[ClickEvent]:
    # Deterministic, with session breaks: every 7th event of a user jumps an hour.
    return [
        ClickEvent(
            f"u{k % users}", f"i{(k * 7 + k // 3) % items}", T0 + k * MIN + (k // 7) * 60 * MIN
        )
        for k in range(n)
    ]


def batches_of(
    events: list[ClickEvent], partitions: int, size: int, start: int = 0
) -> list[list[PartitionBatch]]:
    """Split a stream as Kafka would: by user into partitions, then into polls of `size`."""
    per_part: dict[int, list[tuple[int, ClickEvent]]] = defaultdict(list)
    for e in events:
        p = int(e.user_id[1:]) % partitions
        per_part[p].append((start + len(per_part[p]), e))
    polls = []
    for lo in range(0, max(len(v) for v in per_part.values()), size):
        poll = []
        for p, recs in sorted(per_part.items()):
            chunk = recs[lo : lo + size]
            if chunk:
                poll.append(PartitionBatch(p, chunk[0][0], chunk[-1][0] + 1, list(chunk)))
        polls.append(poll)
    return polls


def expected_state(events: list[ClickEvent], rules: SessionRules) -> dict[str, Any]:
    delta = fold(events, {}, rules)
    co: dict[str, dict[str, float]] = defaultdict(dict)
    for (a, b), n in delta.co.items():
        co[a][b] = float(n)
    return {
        "hist": delta.histories,
        "co": dict(co),
        "pop": {k: float(v) for k, v in delta.pop.items()},
    }


def test_applied_state_equals_pure_prediction(redis_settings: RedisSettings) -> None:
    store = make_store(redis_settings)
    events = stream(300)
    for poll in batches_of(events, partitions=3, size=17):
        store.apply(TOPIC, poll)
    got = store.dump()
    want = expected_state(events, store.config.rules)
    assert got["hist"] == want["hist"]
    assert got["co"] == want["co"]
    assert got["pop"] == want["pop"]
    assert got["stats"]["events"] == 300
    assert sum(got["offsets"].values()) == 300
    assert int(got["meta"]["clock"]) == max(e.ts for e in events)


def test_redelivered_batches_are_skipped(redis_settings: RedisSettings) -> None:
    store = make_store(redis_settings)
    events = stream(120)
    polls = batches_of(events, partitions=2, size=10)
    for poll in polls:
        store.apply(TOPIC, poll)
    before = store.dump()
    # Replay everything again, and an overlapping window (offsets straddling the stored one).
    for poll in polls:
        result = store.apply(TOPIC, poll)
        assert result.applied_events == 0
    assert store.dump() == before


def test_overlapping_redelivery_applies_only_the_new_tail(redis_settings: RedisSettings) -> None:
    store = make_store(redis_settings)
    events = stream(40, users=1)
    recs = [(o, e) for o, e in enumerate(events)]
    store.apply(TOPIC, [PartitionBatch(0, 0, 25, recs[:25])])
    result = store.apply(TOPIC, [PartitionBatch(0, 10, 40, recs[10:])])
    assert (result.applied_events, result.skipped_events) == (15, 15)
    assert store.dump()["pop"] == expected_state(events, store.config.rules)["pop"]


def test_a_poll_interrupted_before_or_between_its_scripts_is_retried_exactly_once(
    redis_settings: RedisSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker retries a whole poll after any error. Before its scripts are sent
    nothing is written; after some partitions' scripts ran, the retry skips those
    and applies the rest; either way every event counts once."""
    store = make_store(redis_settings)
    events = stream(200, users=6)
    polls = batches_of(events, partitions=3, size=40)
    real = store._doc
    calls = 0

    def fail_on_second(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise redis.ConnectionError("lost while preparing a group's write")
        return real(*args)

    # Interrupted before anything was sent.
    monkeypatch.setattr(store, "_doc", fail_on_second)
    with pytest.raises(redis.ConnectionError):
        store.apply(TOPIC, polls[0])
    parts = [b.partition for b in polls[0]]
    assert store.stored_offsets(TOPIC, parts) == dict.fromkeys(parts)
    monkeypatch.setattr(store, "_doc", real)
    retried = store.apply(TOPIC, polls[0])
    assert (retried.applied_events, retried.skipped_events) == (
        sum(len(b.events) for b in polls[0]),
        0,
    )
    # Interrupted after the first partition's script ran (the connection dropped
    # before the others): the retry skips exactly that partition's events.
    first, *rest = polls[1]
    store.apply(TOPIC, [first])
    retried = store.apply(TOPIC, polls[1])
    assert (retried.applied_events, retried.skipped_events) == (
        sum(len(b.events) for b in rest),
        len(first.events),
    )
    for poll in polls[2:]:
        store.apply(TOPIC, poll)
    got, want = store.dump(), expected_state(events, store.config.rules)
    assert (got["hist"], got["co"], got["pop"]) == (want["hist"], want["co"], want["pop"])
    assert got["stats"]["events"] == 200


def test_stale_snapshot_is_detected_and_recomputed(redis_settings: RedisSettings) -> None:
    """Two owners of one partition (a rebalance race): the second write recomputes."""
    a, b = make_store(redis_settings), make_store(redis_settings)
    events = stream(20, users=1)
    recs = list(enumerate(events))
    a.apply(TOPIC, [PartitionBatch(0, 0, 20, recs)])
    # b polled the same records before a's write landed: it must not double count.
    result = b.apply(TOPIC, [PartitionBatch(0, 0, 20, recs)])
    assert result.applied_events == 0
    assert a.dump()["pop"] == expected_state(events, a.config.rules)["pop"]


def test_dead_lettered_records_advance_the_offset_and_are_counted(
    redis_settings: RedisSettings,
) -> None:
    store = make_store(redis_settings)
    good = ClickEvent("u1", "i1", T0)
    batch = PartitionBatch(
        0, 0, 3, [(1, good)], [(0, InvalidEvent("not_json")), (2, InvalidEvent("missing_field"))]
    )
    result = store.apply(TOPIC, [batch])
    assert (result.applied_events, result.rejected) == (1, 2)
    state = store.dump()
    assert state["offsets"] == {f"{TOPIC}:0": 3}
    assert state["stats"]["dlq:not_json"] == 1 and state["stats"]["dlq:missing_field"] == 1


def test_co_rows_keep_the_strongest_top_m(redis_settings: RedisSettings) -> None:
    store = make_store(
        redis_settings, co_top_m=3, rules=SessionRules(gap_ms=10**12, pair_window=1, history_len=5)
    )
    # Alternate a with x1..x5; x1 pairs with a most often, x5 least.
    seq = []
    for n, reps in enumerate([5, 4, 3, 2, 1], start=1):
        for _ in range(reps):
            seq += ["a", f"x{n}"]
    events = [ClickEvent("u", item, T0 + k) for k, item in enumerate(seq)]
    store.apply(TOPIC, [PartitionBatch(0, 0, len(events), list(enumerate(events)))])
    row = store.dump()["co"]["a"]
    assert len(row) == 3
    assert set(row) == {"x1", "x2", "x3"}


def test_trending_rescale_keeps_decayed_counts(redis_settings: RedisSettings) -> None:
    hl = 1000
    store = make_store(redis_settings, half_life_ms=hl)
    first = ClickEvent("u", "old", 10**12)
    later = ClickEvent("v", "new", 10**12 + 600 * hl)  # two landmark epochs (256 hl) on
    store.apply(TOPIC, [PartitionBatch(0, 0, 1, [(0, first)])])
    store.apply(TOPIC, [PartitionBatch(1, 0, 1, [(0, later)])])
    state = store.dump()
    assert int(state["meta"]["trend_ref"]) == 10**12 + 512 * hl
    assert state["trend"]["new"] == pytest.approx(2.0**88)
    assert state["trend"]["old"] == pytest.approx(2.0**-512)
