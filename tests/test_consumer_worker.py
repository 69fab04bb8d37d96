"""Producer -> real broker -> consumer worker -> real Redis."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from consumer.logic import fold
from consumer.settings import ConsumerSettings
from consumer.state import StoreConfig
from consumer.worker import Worker
from core.events import ClickEvent
from core.settings import KafkaSettings, RedisSettings
from producer.client import ClickProducer, ensure_topics
from streamrec.local.stack import wait_until

T0 = 1_600_000_000_000
MIN = 60_000


def settings_for(kafka: KafkaSettings, redis_settings: RedisSettings) -> ConsumerSettings:
    return ConsumerSettings(
        kafka=kafka,
        redis=redis_settings,
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        batch_size=50,
        poll_timeout_ms=100,
        # Undecayed counts, so they compare with fold's exactly.
        state=StoreConfig(co_half_life_ms=None),
    )


def stored_events(worker: Worker) -> int:
    """Events whose item state is written (it follows the histories by up to item_delay_ms)."""
    return int(worker.redis.hget(worker.store.keys.stats, "events") or 0)


@contextmanager
def running(settings: ConsumerSettings) -> Iterator[Worker]:
    worker = Worker(settings)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop.set()
        thread.join(timeout=20)
        assert not thread.is_alive(), "worker did not stop"


def hand_made_stream() -> list[ClickEvent]:
    events = []
    for u in range(6):
        for k in range(15):
            gap = 45 * MIN if k == 8 else MIN  # one session break per user
            ts = T0 + u * 1000 + k * MIN + (gap if k >= 8 else 0)
            events.append(ClickEvent(f"user{u}", f"m{(u + k * k) % 9}", ts))
    return sorted(events, key=lambda e: e.ts)


def test_stream_through_broker_matches_pure_logic(
    kafka_settings: KafkaSettings, redis_settings: RedisSettings
) -> None:
    ensure_topics(kafka_settings)
    events = hand_made_stream()
    with ClickProducer(kafka_settings) as producer:
        for e in events:
            producer.send(e)
        producer.flush()
    settings = settings_for(kafka_settings, redis_settings)
    with running(settings) as worker:
        wait_until(lambda: stored_events(worker) >= len(events), 30, "all events applied")
        state = worker.store.dump()
    want = fold(events, {}, settings.state.rules)
    assert state["hist"] == want.histories
    assert state["pop"] == {k: float(v) for k, v in want.pop.items()}
    co = {(a, b): n for a, row in state["co"].items() for b, n in row.items()}
    assert co == {k: float(v) for k, v in want.co.items()}
    assert state["stats"]["events"] == len(events)


BAD_MESSAGES: list[tuple[bytes, str]] = [
    (b"not json at all", "not_json"),
    (bytes(range(256)), "not_json"),
    (b"", "not_json"),
    (b"[1, 2, 3]", "not_an_object"),
    (b'"just a string"', "not_an_object"),
    (b'{"item_id": "i", "ts": 1600000000000}', "missing_field"),
    (b'{"user_id": "", "item_id": "i", "ts": 1600000000000}', "empty_field"),
    (b'{"user_id": 7, "item_id": "i", "ts": 1600000000000}', "wrong_type"),
    (b'{"user_id": "u", "item_id": "i", "ts": "yesterday"}', "wrong_type"),
    (b'{"user_id": "u", "item_id": "i", "ts": 1600000000}', "ts_out_of_range"),
    (b'{"user_id": "u", "item_id": "i", "ts": 99999999999999999}', "ts_out_of_range"),
    (b'{"user_id": "u", "item_id": "i", "ts": true}', "wrong_type"),
    # Dated 2100: within the contract's range, but far past the wall clock.
    (b'{"user_id": "u", "item_id": "i", "ts": 4102444800000}', "ts_in_future"),
    (b'{"user_id": "u", "item_id": "i", "ts": 1600000000000, "weight": "x"}', "wrong_type"),
    (orjson.dumps({"user_id": "u" * 500, "item_id": "i", "ts": T0}), "too_long"),
    (b'{"user_id": "u", "item_id": "' + b"x" * 5000 + b'", "ts": 1}', "oversized"),
]


def test_malformed_events_go_to_the_dead_letter_topic(
    kafka_settings: KafkaSettings, redis_settings: RedisSettings
) -> None:
    ensure_topics(kafka_settings)
    good_before = ClickEvent("u-good", "a", T0)
    good_after = ClickEvent("u-good", "b", T0 + MIN)
    with ClickProducer(kafka_settings) as producer:
        producer.send(good_before)
        for raw, _ in BAD_MESSAGES:
            producer.send_raw(raw, key=b"u-good")
        producer.send(good_after)
        producer.flush()
    settings = settings_for(kafka_settings, redis_settings)
    with running(settings) as worker:
        wait_until(lambda: stored_events(worker) >= 2, 30, "the good events")
        state = worker.store.dump()
    # The stream went on past the bad messages: both good events paired up
    # (adjacent clicks weigh pair_window = 10 under linear_pair_weights), and
    # b came after a, so row a (what follows a) gets forward_weight times that.
    rules = settings.state.rules
    w = float(rules.pair_window if rules.linear_pair_weights else 1)
    assert state["co"] == {"a": {"b": w * rules.forward_weight}, "b": {"a": w}}
    dlq = KafkaConsumer(
        bootstrap_servers=kafka_settings.bootstrap,
        enable_auto_commit=False,
        consumer_timeout_ms=5000,
    )
    parts = dlq.partitions_for_topic(kafka_settings.dlq_topic) or {0}
    tps = [TopicPartition(kafka_settings.dlq_topic, p) for p in parts]
    dlq.assign(tps)
    dlq.seek_to_beginning(*tps)
    letters: list[dict[str, Any]] = []
    deadline = time.monotonic() + 15
    while len(letters) < len(BAD_MESSAGES) and time.monotonic() < deadline:
        for recs in dlq.poll(timeout_ms=500).values():
            letters += [orjson.loads(r.value) for r in recs]
    dlq.close()
    assert sorted(d["reason"] for d in letters) == sorted(r for _, r in BAD_MESSAGES)
    for letter in letters:
        assert letter["source"]["topic"] == kafka_settings.topic
        assert letter["source"]["offset"] >= 1
        assert letter["detail"] or letter["reason"] in {"missing_field", "empty_field"}
    counted = {k[4:]: v for k, v in state["stats"].items() if k.startswith("dlq:")}
    assert sum(counted.values()) == len(BAD_MESSAGES)


def test_restart_resumes_from_redis_offsets_without_double_counting(
    kafka_settings: KafkaSettings, redis_settings: RedisSettings
) -> None:
    ensure_topics(kafka_settings)
    events = hand_made_stream()
    half = len(events) // 2
    settings = settings_for(kafka_settings, redis_settings)
    with ClickProducer(kafka_settings) as producer:
        for e in events[:half]:
            producer.send(e)
        producer.flush()
        with running(settings) as worker:
            wait_until(lambda: stored_events(worker) >= half, 30, "first half")
        for e in events[half:]:
            producer.send(e)
        producer.flush()
    # A new group id: Kafka has no committed offsets for it, so only Redis's
    # stored offsets stop it from re-reading (and re-counting) the first half.
    fresh = settings.model_copy(update={"group_id": f"g-{uuid.uuid4().hex[:8]}"})
    with running(fresh) as worker:
        wait_until(lambda: stored_events(worker) >= len(events), 30, "second half")
        state = worker.store.dump()
        assert worker.stats.skipped == 0
    assert state["stats"]["events"] == len(events)
    want = fold(events, {}, settings.state.rules)
    assert state["pop"] == {k: float(v) for k, v in want.pop.items()}


@pytest.mark.parametrize("n_bad", [0])
def test_worker_stops_promptly_when_asked(
    kafka_settings: KafkaSettings, redis_settings: RedisSettings, n_bad: int
) -> None:
    settings = settings_for(kafka_settings, redis_settings)
    worker = Worker(settings)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    time.sleep(0.5)
    started = time.monotonic()
    worker.stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert time.monotonic() - started < 5
