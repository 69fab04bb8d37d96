"""Where Redis spends the consumer's write time: INFO commandstats per event.

    STREAMREC_DATA_DIR=../shared/datasets .venv/bin/python -m benchmarks.ingest_profile \
        [--events 40000] [--poll 2000] [--url URL] [--ingest]

Applies ml-latest-small's first events through ``RedisStateWriter.apply`` (every
poll written at once, item state included) into a scratch namespace of the Redis
at ``--url`` (default: ``STREAMREC_REDIS_URL``'s, e.g. ``streamrec stack up``'s),
resets the command statistics first, and prints each command's calls and
microseconds per event, busiest first.

``--ingest``: through the consumer's own loop instead (``consumer.state.Ingest``
with the shipped item delay and the background flush), polls back to back on a
real clock: the consumer's rate without Kafka, so its Python and Redis work
can be compared between versions without the broker's noise.
"""

from __future__ import annotations

import argparse
import time

import redis

from benchmarks.common import table
from consumer.settings import ConsumerSettings
from consumer.state import Ingest, PartitionBatch
from consumer.store import RedisStateWriter
from core.keyspace import Keyspace
from core.settings import RedisSettings
from producer.dataset import resolve_dataset
from producer.movielens import load_ratings, to_events


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=40_000)
    p.add_argument("--poll", type=int, default=2_000)
    p.add_argument("--url", default=None)
    p.add_argument("--ingest", action="store_true", help="through consumer.state.Ingest")
    args = p.parse_args()
    url = args.url or RedisSettings().url
    client = redis.Redis.from_url(url)
    events = list(to_events(load_ratings(resolve_dataset("ml-latest-small"), limit=args.events)))
    keys = Keyspace(f"profile-{int(time.time())}")
    settings = ConsumerSettings()
    store = RedisStateWriter(client, keys, settings.state)
    client.config_resetstat()
    polls = [
        PartitionBatch(0, lo, lo + len(chunk), list(enumerate(chunk, lo)))
        for lo in range(0, len(events), args.poll)
        for chunk in [events[lo : lo + args.poll]]
    ]
    started = time.perf_counter()
    if args.ingest:
        ingest = Ingest(store, "profile", delay_s=settings.item_delay_ms / 1000, background=True)
        for poll in polls:
            ingest.apply([poll])
        ingest.flush()
        ingest.close()
    else:
        for poll in polls:
            store.apply("profile", [poll])
    elapsed = time.perf_counter() - started
    stats = client.info("commandstats")
    n = len(events)
    rows = [
        [
            name.removeprefix("cmdstat_"),
            v["calls"],
            v["calls"] / n,
            v["usec"] / n,
            v["usec_per_call"],
        ]
        for name, v in sorted(stats.items(), key=lambda kv: -kv[1]["usec"])[:10]
    ]
    print(f"{n:,} events in {elapsed:.1f} s: {n / elapsed:,.0f} events/s in-process")
    print(table(["command", "calls", "calls/event", "µs/event", "µs/call"], rows))
    for raw in client.scan_iter(match=keys.pattern(), count=1000):
        client.delete(raw)


if __name__ == "__main__":
    main()
