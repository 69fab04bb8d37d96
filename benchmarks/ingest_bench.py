"""Ingest throughput: raw Kafka consume+decode vs the streamrec consumer, 1 and 2 processes.

    .venv/bin/python -m benchmarks.ingest_bench [--events N] [--out docs/bench/ingest.json]

All three read the same topic in one run on the local stack:
  (a) kafka-python consuming and orjson-decoding every message, no processing;
  (b) one `streamrec consume` process applying everything to Redis;
  (c) two `streamrec consume` processes in one group;
  (d) one `streamrec consume` process against a local 3-master Redis Cluster.
Consumer rates are timed from the first applied event to the last (group join and
process start are excluded), read from the consumer's own counters in Redis.
Then the memory part applies ml-latest-small ten times over, with distinct user
ids each pass, through the consumer's store, and reports Redis bytes per event.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import redis
from kafka import KafkaConsumer, TopicPartition

from benchmarks.common import machine, table, write_json
from consumer.settings import ConsumerSettings
from consumer.state import PartitionBatch
from consumer.store import RedisStateWriter
from core.events import ClickEvent
from producer.client import ClickProducer
from producer.dataset import resolve_dataset
from producer.movielens import load_ratings, to_events
from streamrec.local.cluster import LocalCluster, free_cluster_ports
from streamrec.local.harness import LiveRun


def raw_rate(run: LiveRun, n: int) -> float:
    consumer = KafkaConsumer(
        bootstrap_servers=run.kafka.bootstrap,
        enable_auto_commit=False,
        fetch_max_bytes=32 * 1024 * 1024,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    tps = [TopicPartition(run.kafka.topic, p) for p in range(run.kafka.partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    seen = 0
    started = None
    timed_from = 0
    while seen < n:
        polled = consumer.poll(timeout_ms=1000, max_records=2000)
        for records in polled.values():
            for rec in records:
                orjson.loads(rec.value)
            seen += len(records)
        if polled and started is None:
            # The clock starts after the first batch (connecting and the first
            # fetch excluded), so that batch's records are not counted either.
            started, timed_from = time.perf_counter(), seen
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    if seen <= timed_from or elapsed <= 0:
        raise SystemExit(f"--events {n} fits in one poll; use more events to time the consumer")
    return (seen - timed_from) / elapsed


def consumer_rate(
    run: LiveRun, n: int, processes: int, tag: str, cluster: LocalCluster | None = None
) -> float:
    namespace = f"{run.redis.namespace}-{tag}"
    settings = run.redis.model_copy(update={"namespace": namespace})
    env = {"STREAMREC_REDIS_NAMESPACE": namespace}
    if cluster is not None:
        settings = settings.model_copy(update={"url": cluster.url, "cluster": True})
        env.update({"STREAMREC_REDIS_URL": cluster.url, "STREAMREC_REDIS_CLUSTER": "true"})
    client = settings.client(decode_responses=True)
    stats_key = settings.keys.stats
    for i in range(processes):
        run.children.start(
            f"consumer-{tag}-{i}",
            [*_consume_argv(), "--group", f"bench-{run.run_id}-{tag}"],
            {**run.env, **env},
        )
    first_t = first_n = None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        run.children.check()
        done = int(client.hget(stats_key, "events") or 0)
        now = time.perf_counter()
        if done and first_t is None:
            first_t, first_n = now, done
        if done >= n:
            break
        time.sleep(0.02)
    else:
        raise TimeoutError(f"{tag}: consumers did not finish")
    for i in range(processes):
        run.children.stop(f"consumer-{tag}-{i}")
    client.close()
    assert first_t is not None and first_n is not None
    return (n - first_n) / (now - first_t)


def _consume_argv() -> list[str]:
    import sys

    return [sys.executable, "-m", "streamrec.cli", "--log-level", "WARNING", "consume"]


def memory_growth(run: LiveRun, events: list[ClickEvent], passes: int) -> list[dict[str, Any]]:
    """Redis memory after each pass of the dataset with distinct user ids per pass."""
    client = redis.Redis.from_url(run.redis.url)
    settings = ConsumerSettings(
        redis=run.redis.model_copy(update={"namespace": f"{run.redis.namespace}-mem"})
    )
    store = RedisStateWriter(client, settings.redis.keys, settings.state)
    base = int(client.info("memory")["used_memory"])
    rows = []
    offset = 0
    for p in range(passes):
        batch_events = [
            ClickEvent(f"{e.user_id}~{p}", e.item_id, e.ts, e.type, e.weight) for e in events
        ]
        for lo in range(0, len(batch_events), 5000):
            chunk = batch_events[lo : lo + 5000]
            recs = list(enumerate(chunk, start=offset))
            store.apply("mem", [PartitionBatch(0, offset, offset + len(chunk), recs)])
            offset += len(chunk)
        used = int(client.info("memory")["used_memory"]) - base
        rows.append(
            {"pass": p + 1, "events": offset, "bytes": used, "bytes_per_event": used / offset}
        )
        print(
            f"  pass {p + 1}: {offset:,} events, {used / 1e6:,.1f} MB, "
            f"{used / offset:,.0f} B/event",
            flush=True,
        )
    client.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_836)
    parser.add_argument("--passes", type=int, default=10, help="memory passes (0 to skip)")
    parser.add_argument("--out", type=Path, default=Path("docs/bench/ingest.json"))
    args = parser.parse_args()

    df = load_ratings(resolve_dataset("ml-latest-small"), limit=args.events)
    events = list(to_events(df))
    n = len(events)
    with LiveRun() as run:
        print(f"producing {n:,} events to {run.kafka.topic} ({run.kafka.partitions} partitions)")
        with ClickProducer(run.kafka) as producer:
            for e in events:
                producer.send(e)
            producer.flush()
        print("(a) raw consume + decode ...", flush=True)
        # ~1 s per pass: the median of three steadies it.
        a = statistics.median(raw_rate(run, n) for _ in range(3))
        print("(b) one consumer process ...", flush=True)
        b = consumer_rate(run, n, 1, "one")
        print("(c) two consumer processes ...", flush=True)
        c = consumer_rate(run, n, 2, "two")
        print("(d) one consumer process, local 3-master Redis Cluster ...", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            cluster = LocalCluster(Path(tmp), free_cluster_ports())
            cluster.up()
            try:
                d = consumer_rate(run, n, 1, "cluster", cluster)
            finally:
                cluster.down()
        memory = []
        if args.passes:
            print(f"memory: {args.passes} passes with distinct user ids", flush=True)
            memory = memory_growth(run, events, args.passes)

    rows = [
        ["(a) kafka-python consume + orjson decode", a, 1.0],
        ["(b) streamrec consumer, 1 process", b, b / a],
        ["(c) streamrec consumer, 2 processes", c, c / a],
        ["(d) streamrec consumer, 1 process, 3-master cluster", d, d / a],
    ]
    print()
    print(table(["measure", "events/s", "ratio to (a)"], rows))
    print(
        f"\n(b)/(a) = {b / a:.2f} (target >= 0.5); (c)/(b) = {c / b:.2f} (target >= 1.6); "
        f"(d)/(b) = {d / b:.2f} (target >= 0.8)"
    )
    if memory:
        print()
        print(
            table(
                ["pass", "events", "Redis MB", "bytes/event"],
                [[m["pass"], m["events"], m["bytes"] / 1e6, m["bytes_per_event"]] for m in memory],
            )
        )
    write_json(
        args.out,
        {
            "events": n,
            "rates": {"raw": a, "one_process": b, "two_processes": c, "one_on_cluster": d},
            "ratios": {"one_over_raw": b / a, "two_over_one": c / b, "cluster_over_one": d / b},
            "memory": memory,
            "machine": machine(),
        },
    )
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
