"""A Redis that lost or rolled back its state is never taken for a fresh one (hardening #2).

Real processes throughout: a redis-server without persistence restarted (what
``streamrec stack up`` used to run), a backup restored to an earlier point, a
memory-only broker restarted, each under ``streamrec consume`` children; the
final state is compared with one clean pass of the whole stream.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from test_faults import Rig, assert_same_state, clean_state, click_stream

from consumer.continuity import Finding, check
from core.settings import KafkaSettings, RedisSettings
from producer.client import ensure_topics
from streamrec.local.stack import LocalStack, Service, free_port, redis_service, wait_until

REFUSE = {"STREAMREC_CONSUMER_ON_STATE_LOSS": "refuse"}


# -- the rule ------------------------------------------------------------------------
def test_check_tells_lost_and_behind_from_fresh() -> None:
    # Nothing committed: a fresh deployment, whatever Redis holds.
    assert check({0: None, 1: 40}, {0: None, 1: None}, marked=False) == []
    # Redis at or past what was committed: healthy (it runs ahead of commits).
    assert check({0: 50, 1: 70}, {0: 50, 1: 60}, marked=True) == []
    # Empty and unmarked while offsets were committed: lost.
    assert check({0: None}, {0: 50}, marked=False) == [Finding(0, "lost", 0, 50)]
    # Marked but behind (a restored backup), or some groups empty (a shard lost).
    assert check({0: 20, 1: -1}, {0: 50, 1: 9}, marked=True) == [
        Finding(0, "behind", 20, 50),
        Finding(1, "behind", 0, 9),
    ]
    assert check({0: None}, {0: 50}, marked=True) == [Finding(0, "behind", 0, 50)]


# -- real processes ------------------------------------------------------------------
@pytest.fixture
def volatile(tmp_path: Path) -> Iterator[tuple[Service, RedisSettings]]:
    """A redis-server without persistence: a restart empties it."""
    port = free_port()
    server = redis_service(tmp_path / "redis", port, persist=False)
    server.start()
    yield server, RedisSettings(url=f"redis://127.0.0.1:{port}/0", namespace="loss")
    server.stop()


def make_rig(kafka: KafkaSettings, settings: RedisSettings, tmp_path: Path) -> Rig:
    ensure_topics(kafka)
    return Rig(kafka, settings, tmp_path / "logs")


def restart(server: Service) -> None:
    server.stop()
    server.start()


def stop(rig: Rig, name: str) -> None:
    """SIGTERM: the consumer flushes, commits what every group stored, and exits."""
    rig.children.stop(name, sig=signal.SIGTERM)


def namespace_keys(rig: Rig) -> list[str]:
    return list(rig.client.scan_iter(match=rig.redis.keys.pattern()))


def marker(rig: Rig) -> dict[str, str]:
    return rig.client.hgetall(rig.redis.keys.marker)  # type: ignore[return-value]


def test_redis_restarted_empty_while_stopped_is_rebuilt_from_the_topic(
    kafka_settings: KafkaSettings, volatile: tuple[Service, RedisSettings], tmp_path: Path
) -> None:
    """The issue's reproduction: state gone after a restart, the consumer resumed at
    Kafka's position and applied only what came after. Now it replays the topic."""
    server, settings = volatile
    rig = make_rig(kafka_settings, settings, tmp_path)
    events = click_stream(3000, seed=21)
    try:
        rig.produce(events[:2000])
        rig.start("first")
        rig.wait_applied(2000)
        first_id = marker(rig)["id"]
        stop(rig, "first")
        restart(server)
        assert rig.applied() == 0  # the state is gone
        rig.produce(events[2000:])
        rig.start("second")
        rig.wait_applied(len(events))
        wait_until(lambda: "rebuilding" in rig.log("second"), 10, "the rebuild log line")
        assert_same_state(rig.store.dump(), clean_state(events, settings.url))
        mark = marker(rig)
        assert mark["id"] != first_id and mark["rebuilds"] == "1"
        assert mark["last_rebuild"].startswith("on assignment: partition")
    finally:
        rig.children.stop()


def test_redis_restarted_empty_mid_stream_is_rebuilt(
    kafka_settings: KafkaSettings, volatile: tuple[Service, RedisSettings], tmp_path: Path
) -> None:
    server, settings = volatile
    rig = make_rig(kafka_settings, settings, tmp_path)
    events = click_stream(4000, seed=22)
    try:
        rig.produce(events[:2500])
        rig.start("consumer")
        rig.wait_applied(2500)
        restart(server)
        rig.produce(events[2500:])
        rig.wait_applied(len(events), timeout=120)
        wait_until(lambda: "rebuilding" in rig.log("consumer"), 10, "the rebuild log line")
        assert_same_state(rig.store.dump(), clean_state(events, settings.url))
        assert marker(rig)["rebuilds"] == "1"
    finally:
        rig.children.stop()


def test_refuse_stops_with_a_clear_error_and_writes_nothing(
    kafka_settings: KafkaSettings, volatile: tuple[Service, RedisSettings], tmp_path: Path
) -> None:
    server, settings = volatile
    rig = make_rig(kafka_settings, settings, tmp_path)
    try:
        rig.produce(click_stream(1500, seed=23))
        rig.start("first")
        rig.wait_applied(1500)
        stop(rig, "first")
        restart(server)
        proc = rig.start("refusing", extra_env=REFUSE)
        assert proc.wait(timeout=60) == 6
        log = rig.log("refusing")
        assert "holds none of the state consumer group" in log
        assert "STREAMREC_CONSUMER_ON_STATE_LOSS=rebuild" in log  # the way out
        assert "Traceback" not in log
        assert namespace_keys(rig) == []
    finally:
        rig.children.stop()


def test_a_backup_restored_to_an_earlier_point_is_replayed_forward(
    kafka_settings: KafkaSettings, redis_settings: RedisSettings, tmp_path: Path
) -> None:
    """Keys DUMPed after 1,500 events and RESTOREd after 3,000: the store is behind
    what was committed. Refuse says so; rebuild replays from the store's offsets."""
    rig = make_rig(kafka_settings, redis_settings, tmp_path)
    events = click_stream(3000, seed=24)
    raw = redis.Redis.from_url(redis_settings.url)
    try:
        rig.produce(events[:1500])
        rig.start("first")
        rig.wait_applied(1500)
        stop(rig, "first")
        backup = {k: raw.dump(k) for k in raw.scan_iter(match=redis_settings.keys.pattern())}
        rig.produce(events[1500:])
        rig.start("second")
        rig.wait_applied(len(events))
        stop(rig, "second")
        raw.delete(*raw.scan_iter(match=redis_settings.keys.pattern()))
        for key, value in backup.items():
            raw.restore(key, 0, value)
        assert rig.applied() == 1500

        proc = rig.start("refusing", extra_env=REFUSE)
        assert proc.wait(timeout=60) == 6
        assert "holds less state than consumer group" in rig.log("refusing")
        assert rig.applied() == 1500

        rig.start("rebuilding")
        rig.wait_applied(len(events))
        assert "rebuilding" in rig.log("rebuilding")
        assert_same_state(rig.store.dump(), clean_state(events, redis_settings.url))
    finally:
        rig.children.stop()
        raw.close()


def test_a_broker_that_lost_its_log_is_reported_not_ignored(tmp_path: Path) -> None:
    """The reverse: Redis kept its state (AOF) and the memory-only broker restarted."""
    stack = LocalStack(tmp_path / "stack", free_port(), free_port())
    stack.up()
    kafka = KafkaSettings(bootstrap=stack.bootstrap, topic="clicks-l", dlq_topic="clicks-l.dlq")
    settings = RedisSettings(url=stack.redis_url, namespace="lostlog")
    rig = Rig(kafka, settings, tmp_path / "logs")
    try:
        ensure_topics(kafka)
        rig.produce(click_stream(1000, seed=25))
        rig.start("first")
        rig.wait_applied(1000)
        stop(rig, "first")
        broker = stack.services()[1]
        restart(broker)
        ensure_topics(kafka)
        rig.produce(click_stream(10, seed=26))
        proc = rig.start("refusing", extra_env=REFUSE)
        assert proc.wait(timeout=60) == 6
        assert "holds fewer records than Redis has applied" in rig.log("refusing")
        rig.start("warning")
        wait_until(lambda: "taken as applied" in rig.log("warning"), 30, "the lost-log warning")
        assert rig.applied() == 1000
    finally:
        rig.children.stop()
        stack.down()
