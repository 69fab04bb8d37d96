"""Faults with real processes: kill -9 mid-stream, Redis restart, broker restart, a consumer lost.

Each test streams a deterministic click stream through the real broker into
`streamrec consume` child processes, injects a fault, and compares the final
Redis state with one clean in-process pass of the same stream through the same
store code. Co-occurrence pruning is switched off (a huge top-M) because which
weak neighbour is pruned depends on batch boundaries; every other part of the
state must match exactly (decayed co counts and trending up to float rounding
of sums).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from consumer.logic import decayed_count
from consumer.settings import ConsumerSettings
from consumer.state import PartitionBatch, StoreConfig
from consumer.store import RedisStateWriter
from core.events import ClickEvent
from core.settings import KafkaSettings, RedisSettings, settings_env
from producer.client import ClickProducer, ensure_topics
from streamrec.local.cluster import LocalCluster, cluster_state, free_cluster_ports
from streamrec.local.harness import Children, process_env
from streamrec.local.stack import LocalStack, broker_service, free_port, redis_service, wait_until

T0 = 1_600_000_000_000
NO_PRUNING = 10**9
# What the `streamrec consume` children run with: pruning off, many batches
# (more places to die in), short retries.
CHILD_SETTINGS = ConsumerSettings(
    state=StoreConfig(co_top_m=NO_PRUNING), batch_size=200, retry_max_s=0.5
)


def click_stream(n: int, seed: int = 7, users: int = 60, items: int = 250) -> list[ClickEvent]:
    """Deterministic clicks: popular items skewed, sessions broken by occasional long gaps."""
    rng = np.random.default_rng(seed)
    gaps = np.where(rng.random(n) < 0.05, 3_600_000, rng.integers(1_000, 90_000, n))
    ts = T0 + np.cumsum(gaps)
    item_ids = np.minimum(rng.zipf(1.3, n), items)
    return [ClickEvent(f"u{rng.integers(users)}", f"i{item_ids[k]}", int(ts[k])) for k in range(n)]


def consumer_config() -> StoreConfig:
    """What the `streamrec consume` children run with: their settings, pruning off."""
    return CHILD_SETTINGS.state


def clean_state(events: list[ClickEvent], where: str | RedisSettings) -> dict[str, Any]:
    """One clean in-process pass of ``events`` into a scratch namespace of the same Redis."""
    base = where if isinstance(where, RedisSettings) else RedisSettings(url=where)
    settings = base.model_copy(update={"namespace": f"clean-{uuid.uuid4().hex[:8]}"})
    client = settings.client()
    store = RedisStateWriter(client, settings.keys, consumer_config())
    for lo in range(0, len(events), 1000):
        chunk = list(enumerate(events[lo : lo + 1000], start=lo))
        store.apply("clean", [PartitionBatch(0, lo, lo + len(chunk), chunk)])
    state = store.dump()
    keys = list(client.scan_iter(match=settings.keys.pattern()))
    client.delete(*keys)
    client.close()
    return state


def assert_same_state(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["hist"] == want["hist"]
    # Co counts decay: float sums, in another order after a fault; equal up to rounding.
    assert got["co"].keys() == want["co"].keys()
    for item, row in want["co"].items():
        assert got["co"][item] == pytest.approx(row, rel=1e-9), item
    assert got["pop"] == want["pop"]
    # Raw trending scores are relative to a landmark that depends on where the
    # first batch ended; the decayed counts as of the stream clock are the state.
    assert got["meta"]["clock"] == want["meta"]["clock"]
    assert got["trend"].keys() == want["trend"].keys()
    for item, score in want["trend"].items():
        assert decayed(got, got["trend"][item]) == pytest.approx(decayed(want, score), rel=1e-9)
    assert got["stats"]["events"] == want["stats"]["events"]
    assert got["stats"]["pairs"] == want["stats"]["pairs"]


def decayed(state: dict[str, Any], score: float) -> float:
    meta = state["meta"]
    return decayed_count(
        score, int(meta["trend_ref"]), int(meta["clock"]), int(meta["half_life_ms"])
    )


class Rig:
    """A topic, a namespace and consumer processes pointed at them."""

    def __init__(self, kafka: KafkaSettings, redis_settings: RedisSettings, log_dir: Path) -> None:
        self.kafka, self.redis = kafka, redis_settings
        self.group = f"g-{uuid.uuid4().hex[:8]}"
        self.children = Children(log_dir)
        self.client = redis_settings.client(decode_responses=True, socket_timeout=2)
        self.store = RedisStateWriter(
            redis_settings.client(), redis_settings.keys, consumer_config()
        )

    def env(self) -> dict[str, str]:
        return {
            **process_env(self.kafka, self.redis),
            **settings_env(CHILD_SETTINGS, ["state", "batch_size", "retry_max_s"]),
        }

    def start(self, name: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "streamrec.cli", "consume", "--group", self.group]
        return self.children.start(name, argv, {**self.env(), **(extra_env or {})})

    def applied(self) -> int:
        try:
            return int(self.client.hget(self.redis.keys.stats, "events") or 0)
        except (redis.ConnectionError, redis.exceptions.ClusterError):
            return -1

    def wait_applied(self, n: int, timeout: float = 90) -> None:
        wait_until(lambda: self.applied() >= n, timeout, f"{n} events applied")

    def produce(self, events: list[ClickEvent]) -> None:
        with ClickProducer(self.kafka) as producer:
            for e in events:
                producer.send(e)
            producer.flush()

    def log(self, name: str) -> str:
        return (self.children.log_dir / f"{name}.log").read_text(errors="replace")


@pytest.fixture(params=["redis", pytest.param("cluster", marks=pytest.mark.cluster)])
def rig(
    request: pytest.FixtureRequest, kafka_settings: KafkaSettings, tmp_path: Path
) -> Iterator[Rig]:
    """A rig on one Redis node, and on the local 3-master Redis Cluster."""
    fixture = "cluster_settings" if request.param == "cluster" else "redis_settings"
    settings: RedisSettings = request.getfixturevalue(fixture)
    ensure_topics(kafka_settings)
    r = Rig(kafka_settings, settings, tmp_path / "logs")
    yield r
    r.children.stop()
    r.client.close()


def kill_nine_rounds(rig: Rig, events: list[ClickEvent], kills: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rig.produce(events)
    points = sorted(rng.integers(len(events) // 10, len(events) * 9 // 10, size=kills))
    for k, point in enumerate(points):
        proc = rig.start(f"consumer-{k}")
        wait_until(lambda p=point: rig.applied() >= p, 90, f"{point} applied before kill {k}")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    rig.start("consumer-final")
    rig.wait_applied(len(events))
    time.sleep(0.5)  # anything still in flight would show up as extra counts now


def test_kill_nine_mid_stream_equals_a_clean_pass(rig: Rig) -> None:
    events = click_stream(3000)
    kill_nine_rounds(rig, events, kills=2, seed=1)
    assert_same_state(rig.store.dump(), clean_state(events, rig.redis))


@pytest.mark.slow
def test_kill_nine_many_times_over_twenty_thousand_events(rig: Rig) -> None:
    events = click_stream(20_000, seed=3)
    kill_nine_rounds(rig, events, kills=6, seed=2)
    assert_same_state(rig.store.dump(), clean_state(events, rig.redis))


def test_sigterm_finishes_the_batch_and_exits_cleanly(rig: Rig) -> None:
    events = click_stream(1500)
    rig.produce(events)
    proc = rig.start("consumer")
    wait_until(lambda: rig.applied() > 0, 60, "first events")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert "stopped:" in rig.log("consumer")
    rig.start("consumer-2")
    rig.wait_applied(len(events))
    assert_same_state(rig.store.dump(), clean_state(events, rig.redis))


def test_a_stopped_group_member_hands_its_partitions_over(rig: Rig) -> None:
    events = click_stream(4000, seed=5)
    first = rig.start("consumer-a")
    rig.start("consumer-b")
    rig.produce(events[:2000])
    rig.wait_applied(1000)
    first.send_signal(signal.SIGKILL)  # the harshest way to leave a group
    first.wait()
    rig.produce(events[2000:])
    rig.wait_applied(len(events), timeout=120)
    time.sleep(0.5)
    assert_same_state(rig.store.dump(), clean_state(events, rig.redis))


def test_redis_restart_mid_stream(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    """redis-server with AOF persistence goes away and comes back; the consumer waits it out."""
    ensure_topics(kafka_settings)
    port = free_port()
    server = redis_service(tmp_path / "redis", port, persist=True)
    server.start()
    settings = RedisSettings(url=f"redis://127.0.0.1:{port}/0", namespace="restart")
    rig = Rig(kafka_settings, settings, tmp_path / "logs")
    try:
        events = click_stream(4000, seed=11)
        rig.produce(events[:2000])
        rig.start("consumer")
        rig.wait_applied(1000)
        server.stop()
        rig.produce(events[2000:])
        wait_until(lambda: "waiting for Redis" in rig.log("consumer"), 30, "the retry log line")
        server.start()
        rig.wait_applied(len(events))
        time.sleep(0.5)
        assert_same_state(rig.store.dump(), clean_state(events, settings.url))
    finally:
        rig.children.stop()
        server.stop()


@pytest.mark.cluster
def test_a_cluster_master_restarted_mid_stream(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    """One of three masters (AOF on) goes away and comes back; the consumer waits it out."""
    ensure_topics(kafka_settings)
    cluster = LocalCluster(tmp_path / "cluster", free_cluster_ports())
    cluster.up()
    settings = RedisSettings(url=cluster.url, namespace="restart", cluster=True)
    rig = Rig(kafka_settings, settings, tmp_path / "logs")
    try:
        events = click_stream(4000, seed=17)
        rig.produce(events[:2000])
        rig.start("consumer")
        rig.wait_applied(1000)
        victim = cluster.nodes()[1]
        victim.stop()
        rig.produce(events[2000:])
        wait_until(lambda: "waiting for Redis" in rig.log("consumer"), 60, "the retry log line")
        victim.start()
        wait_until(lambda: cluster_state(victim.port) == "ok", 30, "the cluster to be ok again")
        rig.wait_applied(len(events), timeout=120)
        time.sleep(0.5)
        assert_same_state(rig.store.dump(), clean_state(events, settings))
    finally:
        rig.children.stop()
        cluster.down()


def test_broker_restart_and_full_replay_applies_nothing_twice(tmp_path: Path) -> None:
    """The broker is memory-only: after a restart the producer replays the whole stream.

    Replayed records get the same partitions and offsets, so the consumer's
    Redis offsets skip everything already applied and apply only the rest.
    """
    stack = LocalStack(tmp_path / "stack", free_port(), free_port())
    stack.up()
    broker = broker_service(tmp_path / "stack", stack.kafka_port)
    kafka = KafkaSettings(bootstrap=stack.bootstrap, topic="clicks-r", dlq_topic="clicks-r.dlq")
    settings = RedisSettings(url=stack.redis_url, namespace="replay")
    rig = Rig(kafka, settings, tmp_path / "logs")
    try:
        ensure_topics(kafka)
        events = click_stream(4000, seed=13)
        rig.produce(events[:2500])
        rig.start("consumer")
        rig.wait_applied(2500)
        broker.stop()
        broker.start()
        ensure_topics(kafka)
        rig.produce(events)  # everything again, from the first event
        rig.wait_applied(len(events), timeout=120)
        time.sleep(1.0)
        assert rig.applied() == len(events)
        assert_same_state(rig.store.dump(), clean_state(events, settings.url))
    finally:
        rig.children.stop()
        stack.down()
