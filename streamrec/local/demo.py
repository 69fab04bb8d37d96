"""The main job end to end on the local stack, with a short printed summary.

Starts what is missing (Redis, the broker), builds the embedding index, runs a
consumer and the API as child processes, replays the dataset, waits until the
consumer has applied every event, shows a user's recommendations with reasons,
probes the API's latency, and stops everything it started. The run has its own
topic and Redis namespace (streamrec.local.harness), so it never mixes with other data.
"""

from __future__ import annotations

import contextlib
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from consumer.logic import Entry
from core.catalogue import Catalogue
from producer.sources import Interactions
from streamrec.loadtest.stats import latency_summary
from streamrec.local.harness import LiveRun

DEFAULT_RATE = 25_000.0  # events/s: ml-latest-small's 100,836 ratings in ~4 s


@dataclass(frozen=True)
class DemoOptions:
    rate: float | None = None
    speed: float | None = None
    requests: int = 2000
    keep_running: bool = False
    keep_serving: bool = False  # wait for Ctrl-C after the summary, then clean up


@contextlib.contextmanager
def _stage(title: str) -> Iterator[None]:
    print(f"• {title} ...", end="", flush=True)
    started = time.perf_counter()
    yield
    print(f" done ({time.perf_counter() - started:.1f}s)", flush=True)


def run_demo(opts: DemoOptions, data: Interactions) -> int:
    """The demo over ``data`` (producer.sources.load_interactions)."""
    from evaluation.ranker import build_index
    from producer.client import ClickProducer
    from producer.frame import to_events
    from producer.replay import Pacing, replay

    df = data.frame
    run = LiveRun(keep_running=opts.keep_running)
    with _stage(f"local stack (redis :{run.stack.redis_port}, broker :{run.stack.kafka_port})"):
        run.__enter__()
    try:
        with _stage(f"building the embedding index from {len(df):,} events of {data.source}"):
            index = build_index(df, run.artifacts, catalogue=data.catalogue, source=data.source)
        with _stage("starting the consumer and the API"):
            consumer_metrics = run.start_consumer()
            api = run.start_api()

        pacing = Pacing(speed=opts.speed, rate=None if opts.speed else (opts.rate or DEFAULT_RATE))
        pace = f"{opts.speed:g}x real time" if opts.speed else f"{pacing.rate:g} events/s"
        print(f"• replaying {len(df):,} events to topic {run.kafka.topic} ({pace})")
        t0 = time.perf_counter()
        with ClickProducer(run.kafka) as producer:
            sent = replay(to_events(df), producer, pacing, progress=True, total=len(df))
        with _stage("waiting for the consumer to apply every event"):
            run.wait_applied(sent.sent)
        total_s = time.perf_counter() - t0

        user = str(df["user_id"].iloc[-1])
        with httpx.Client(base_url=api, timeout=5) as http:
            recs = http.get(f"/recommendations/{user}", params={"k": 5}).json()
            cold = http.get("/recommendations/never-seen-user", params={"k": 3}).json()
            users = df["user_id"].unique().tolist()
            rnd = random.Random(7)
            lat: list[float] = []
            errors = 0
            with _stage(f"latency probe: {opts.requests} sequential GET /recommendations"):
                for _ in range(opts.requests):
                    t = time.perf_counter()
                    r = http.get(f"/recommendations/{rnd.choice(users)}", params={"k": 10})
                    lat.append((time.perf_counter() - t) * 1000)
                    errors += int(r.status_code != 200)
        assert run.client is not None
        raw_history: list[str] = run.client.lrange(run.redis.keys.hist(user), 0, 4)  # type: ignore[assignment]
        _print_summary(
            DemoSummary(
                index=f"{index.manifest.version} ({index.manifest.item_count:,} items)",
                sent=sent.sent,
                applied=run.applied(),
                replay_rate=sent.rate,
                end_to_end_rate=sent.sent / total_s,
                user=user,
                history=[Entry.decode(x).item for x in raw_history],
                recs=recs,
                cold=cold,
                latency=latency_summary(lat),
                errors=errors,
            ),
            data.catalogue,
        )
        print(f"\ntry it: {api}/  (search a title, pick user {user}, click an item)")
        print(f"metrics: {api}/metrics (API), {consumer_metrics} (consumer)")
        if opts.keep_running:
            print(
                f"\nleft running: API {api}, Redis namespace {run.redis.namespace}, "
                f"topic {run.kafka.topic}; logs in {run.dir}"
            )
        elif opts.keep_serving:
            print("serving until Ctrl-C (or SIGTERM); then everything stops and is cleaned up")
            _wait_for_a_signal()
        return 0
    finally:
        run.__exit__(None, None, None)


def _wait_for_a_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} ms"


@dataclass(frozen=True)
class DemoSummary:
    """What the demo measured and showed, for the printed summary."""

    index: str
    sent: int
    applied: int
    replay_rate: float
    end_to_end_rate: float
    user: str
    history: list[str]  # the user's newest items
    recs: dict[str, Any]  # the API's answer for the user
    cold: dict[str, Any]  # ... and for a user never seen
    latency: dict[str, float | None]
    errors: int


def _print_summary(s: DemoSummary, catalogue: Catalogue) -> None:
    lat = s.latency
    print()
    print("streamrec demo summary")
    print("----------------------")
    print(f"index            {s.index}")
    print(
        f"events           sent {s.sent:,}, applied {s.applied:,} "
        f"(replay {s.replay_rate:,.0f}/s; "
        f"replay until all applied {s.end_to_end_rate:,.0f}/s)"
    )
    print(
        f"API latency      p50 {_ms(lat['p50'])}, p95 {_ms(lat['p95'])}, "
        f"p99 {_ms(lat['p99'])}, max {_ms(lat['max'])} ({s.errors} errors)"
    )
    print(f"\nuser {s.user} recently clicked:")
    for item in s.history:
        print(f"    {catalogue.title(item) or item}")
    print(f"recommendations for user {s.user}:")
    for it in s.recs.get("items", []):
        why = it["reason"]
        because = why.get("because_of_title") or why.get("because_of") or ""
        print(
            f"    {it['score']:.3f}  {it.get('title') or it['item_id']}  "
            f"[{why['kind']}{': ' + because if because else ''}]"
        )
    print("a user never seen before gets:")
    for it in s.cold.get("items", []):
        print(f"    {it.get('title') or it['item_id']}  [{it['reason']['kind']}]")
