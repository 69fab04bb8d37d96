"""Producer against the real Tansu broker: topics, keyed sends, replay, pacing."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from core.errors import ServiceUnavailable
from core.events import ClickEvent, decode
from core.settings import KafkaSettings
from producer import ClickProducer, Pacing, ensure_topics, replay
from streamrec.local.stack import free_port

BASE_TS = 1_600_000_000_000


def make_events(n: int, users: int = 37) -> list[ClickEvent]:
    """n events over `users` users, ts strictly increasing per user (1 s apart overall)."""
    return [
        ClickEvent(f"u{i % users}", f"i{(i * 7) % 101}", BASE_TS + i * 1000, "rating", i % 5 + 0.5)
        for i in range(n)
    ]


def consume_all(kafka: KafkaSettings, expected: int, timeout_s: float = 20.0) -> list[tuple]:
    """(partition, offset, key, value) of every message on kafka.topic, read from the start."""
    consumer = KafkaConsumer(
        bootstrap_servers=kafka.bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    try:
        consumer.assign([TopicPartition(kafka.topic, p) for p in range(kafka.partitions)])
        out: list[tuple] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < expected and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500).items():
                out.extend((tp.partition, r.offset, r.key, r.value) for r in records)
        # One more short poll: anything beyond `expected` would be a duplicate.
        for tp, records in consumer.poll(timeout_ms=300).items():
            out.extend((tp.partition, r.offset, r.key, r.value) for r in records)
        return out
    finally:
        consumer.close()


def test_ensure_topics_creates_both_and_is_idempotent(kafka_settings: KafkaSettings) -> None:
    ensure_topics(kafka_settings, timeout_s=15)
    ensure_topics(kafka_settings, timeout_s=15)  # second call: already there, no error
    admin = KafkaAdminClient(bootstrap_servers=kafka_settings.bootstrap)
    try:
        topics = {
            t["name"]: len(t["partitions"])
            for t in admin.describe_topics([kafka_settings.topic, kafka_settings.dlq_topic])
        }
    finally:
        admin.close()
    assert topics == {kafka_settings.topic: kafka_settings.partitions, kafka_settings.dlq_topic: 1}


def test_replay_500_events_arrive_keyed_ordered_and_decodable(
    kafka_settings: KafkaSettings,
) -> None:
    ensure_topics(kafka_settings, timeout_s=15)
    events = make_events(500)
    seen: list[ClickEvent] = []
    with ClickProducer(kafka_settings) as producer:
        summary = replay(events, producer, on_sent=seen.append)
    assert summary.sent == 500 and summary.failed == 0
    assert (summary.first_ts, summary.last_ts) == (events[0].ts, events[-1].ts)
    assert seen == events

    records = consume_all(kafka_settings, 500)
    assert len(records) == 500
    decoded = [decode(value) for _, _, _, value in records]
    assert sorted(decoded, key=lambda e: e.ts) == events

    partitions_of: dict[str, set[int]] = defaultdict(set)
    per_user: dict[str, list[tuple[int, int]]] = defaultdict(list)  # (offset, ts)
    for (partition, offset, key, _), event in zip(records, decoded, strict=True):
        assert key == event.user_id.encode()
        partitions_of[event.user_id].add(partition)
        per_user[event.user_id].append((offset, event.ts))
    assert all(len(parts) == 1 for parts in partitions_of.values())
    # More than one partition in use, or the key would not be doing anything.
    assert len({p for parts in partitions_of.values() for p in parts}) > 1
    for rows in per_user.values():
        by_offset = [ts for _, ts in sorted(rows)]
        assert by_offset == sorted(by_offset)


def test_send_raw_puts_bytes_on_the_topic_unchanged(kafka_settings: KafkaSettings) -> None:
    ensure_topics(kafka_settings, timeout_s=15)
    with ClickProducer(kafka_settings) as producer:
        metadata = producer.send_raw(b"not json{", key=b"k").get(timeout=10)
        producer.send_raw(b"{}")
        producer.flush()
    assert metadata.topic == kafka_settings.topic
    values = sorted(value for *_, value in consume_all(kafka_settings, 2))
    assert values == [b"not json{", b"{}"]


def test_rate_paced_replay_takes_at_least_the_schedule(kafka_settings: KafkaSettings) -> None:
    ensure_topics(kafka_settings, timeout_s=15)
    with ClickProducer(kafka_settings) as producer:
        started = time.monotonic()
        summary = replay(make_events(50), producer, Pacing(rate=200))
        elapsed = time.monotonic() - started
    # Event 49 is due at 49/200 = 0.245 s: the replay cannot finish before that.
    assert summary.sent == 50
    assert elapsed >= 0.2 and summary.seconds >= 0.2


def test_replay_limit_and_stop(kafka_settings: KafkaSettings) -> None:
    ensure_topics(kafka_settings, timeout_s=15)
    events = make_events(100)
    stop = threading.Event()

    def halt_after_ten(event: ClickEvent) -> None:
        if event is events[9]:
            stop.set()

    with ClickProducer(kafka_settings) as producer:
        assert replay(events, producer, limit=7).sent == 7
        summary = replay(events, producer, stop=stop, on_sent=halt_after_ten)
        assert (summary.sent, summary.last_ts) == (10, events[9].ts)

        # At 0.5 events/s event 1 is due at 2 s; a stop at 0.2 s must end the
        # sleep there rather than after it.
        stop.clear()
        timer = threading.Timer(0.2, stop.set)
        started = time.monotonic()
        timer.start()
        summary = replay(events, producer, Pacing(rate=0.5), stop=stop)
        elapsed = time.monotonic() - started
        timer.join()
    assert summary.sent == 1
    assert elapsed < 1.5


def test_ensure_topics_with_nothing_listening_fails_fast() -> None:
    kafka = KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}", topic="t", dlq_topic="t.dlq")
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as err:
        ensure_topics(kafka)
    assert time.monotonic() - started < 5
    assert "streamrec stack up" in err.value.hint
    assert err.value.retriable
    with pytest.raises(ServiceUnavailable):
        ClickProducer(kafka)
