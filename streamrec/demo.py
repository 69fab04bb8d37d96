"""The main job end to end on the local stack, with a short printed summary.

Starts what is missing (Redis, the broker), builds the embedding index, runs a
consumer and the API as child processes, replays the dataset, waits until the
consumer has applied every event, shows a user's recommendations with reasons,
probes the API's latency, and stops everything it started. Each run uses its
own topic and Redis namespace, so it never mixes with other data on the stack.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis

from consumer.logic import Entry
from core.errors import ServiceUnavailable
from core.settings import KafkaSettings, PathSettings, RedisSettings
from streamrec.stack import LocalStack, free_port, wait_until

DEFAULT_RATE = 25_000.0  # events/s: ml-latest-small's 100,836 ratings in ~4 s


@dataclass(frozen=True)
class DemoOptions:
    dataset: Path
    limit: int | None = None
    rate: float | None = None
    speed: float | None = None
    requests: int = 2000
    keep_running: bool = False


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    arr = np.asarray(samples_ms)
    return {
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "p99": float(np.percentile(arr, 99)),
        "max": float(arr.max()),
    }


class Children:
    """Child processes started by the demo; each is stopped with SIGTERM, then SIGKILL."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.procs.append((name, proc))
        return proc

    def alive(self) -> bool:
        """True while every child runs; raises with the log tail of one that exited."""
        self.check()
        return True

    def check(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise ServiceUnavailable(f"the {name} exited with code {proc.returncode}:\n{tail}")

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def _stage(title: str) -> Iterator[None]:
    print(f"• {title} ...", end="", flush=True)
    started = time.perf_counter()
    yield
    print(f" done ({time.perf_counter() - started:.1f}s)", flush=True)


def run_demo(opts: DemoOptions) -> int:
    from offline.job import build_index
    from producer.client import ClickProducer, ensure_topics
    from producer.movielens import load_ratings, load_titles, to_events
    from producer.replay import Pacing, replay
    from streamrec.cli import local_ports

    paths = PathSettings()
    base_redis, base_kafka = RedisSettings(), KafkaSettings()
    run_id = uuid.uuid4().hex[:8]
    redis_s = base_redis.model_copy(update={"namespace": f"demo-{run_id}"})
    kafka_s = base_kafka.model_copy(
        update={"topic": f"demo-{run_id}", "dlq_topic": f"demo-{run_id}.dlq"}
    )
    run_dir = paths.state_dir / "demo" / run_id
    artifacts = run_dir / "artifacts"
    rport, kport = local_ports(base_redis, base_kafka)
    stack = LocalStack(paths.state_dir, rport, kport)
    children = Children(run_dir)
    started: list[str] = []
    summary: dict[str, Any] = {"run": run_id}
    client = redis.Redis.from_url(redis_s.url, decode_responses=True)
    try:
        with _stage(f"local stack (redis :{rport}, broker :{kport})"):
            started = [s.name for s in stack.up()]
        with _stage(f"loading {opts.dataset}"):
            df = load_ratings(opts.dataset, limit=opts.limit)
            titles = load_titles(opts.dataset)
        with _stage(f"building the embedding index from {len(df):,} ratings"):
            index = build_index(df, artifacts, titles=titles, source=str(opts.dataset))
        summary["index"] = f"{index.manifest.version} ({index.manifest.item_count:,} items)"

        env = {
            **os.environ,
            "STREAMREC_REDIS_URL": redis_s.url,
            "STREAMREC_REDIS_NAMESPACE": redis_s.namespace,
            "STREAMREC_KAFKA_BOOTSTRAP": kafka_s.bootstrap,
            "STREAMREC_KAFKA_TOPIC": kafka_s.topic,
            "STREAMREC_KAFKA_DLQ_TOPIC": kafka_s.dlq_topic,
            "STREAMREC_ARTIFACTS_DIR": str(artifacts.resolve()),
        }
        api_port = free_port()
        api = f"http://127.0.0.1:{api_port}"
        with _stage("starting the consumer and the API"):
            ensure_topics(kafka_s)
            children.start(
                "consumer",
                [sys.executable, "-m", "streamrec.cli", "consume", "--group", f"demo-{run_id}"],
                env,
            )
            children.start(
                "api",
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "--factory",
                    "serving.app:create_app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(api_port),
                    "--no-access-log",
                ],
                env,
            )
            wait_until(lambda: children.alive() and _healthy(api), 60, "the API")

        pacing = Pacing(speed=opts.speed, rate=None if opts.speed else (opts.rate or DEFAULT_RATE))
        print(
            f"• replaying {len(df):,} events to topic {kafka_s.topic} "
            f"({f'{opts.speed:g}x real time' if opts.speed else f'{pacing.rate:g} events/s'})"
        )
        t0 = time.perf_counter()
        with ClickProducer(kafka_s) as producer:
            sent = replay(to_events(df), producer, pacing, progress=True, total=len(df))
        with _stage("waiting for the consumer to apply every event"):
            stats_key = redis_s.keys.stats

            def applied() -> int:
                children.check()
                stats: dict[str, str] = client.hgetall(stats_key)  # type: ignore[assignment]
                return sum(
                    int(v) for k, v in stats.items() if k == "events" or k.startswith("dlq:")
                )

            wait_until(lambda: applied() >= sent.sent, 300, "the consumer")
        consumed_s = time.perf_counter() - t0
        summary["events"] = {
            "sent": sent.sent,
            "applied": applied(),
            "replay_rate": round(sent.rate),
            "end_to_end_rate": round(sent.sent / consumed_s),
        }

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
        raw_history: list[str] = client.lrange(redis_s.keys.hist(user), 0, 4)  # type: ignore[assignment]
        history = [Entry.decode(x).item for x in raw_history]
        _print_summary(summary, user, history, titles, recs, cold, percentiles(lat), errors)
        return 0
    finally:
        if opts.keep_running:
            print(
                f"left running: API {api if 'api' in locals() else '-'}; stop with "
                "`streamrec stack down` and by killing the consumer/API processes"
            )
        else:
            children.stop()
            if started:
                stack.down()
            else:
                _drop_namespace(client, redis_s)
        client.close()


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _drop_namespace(client: redis.Redis, settings: RedisSettings) -> None:
    with contextlib.suppress(redis.RedisError):
        keys = list(client.scan_iter(match=settings.keys.pattern(), count=1000))
        for lo in range(0, len(keys), 1000):
            client.delete(*keys[lo : lo + 1000])


def _print_summary(
    summary: dict[str, Any],
    user: str,
    history: list[str],
    titles: dict[str, str],
    recs: dict[str, Any],
    cold: dict[str, Any],
    lat: dict[str, float],
    errors: int,
) -> None:
    ev = summary["events"]
    print()
    print("streamrec demo summary")
    print("----------------------")
    print(f"index            {summary['index']}")
    print(
        f"events           sent {ev['sent']:,}, applied {ev['applied']:,} "
        f"(replay {ev['replay_rate']:,}/s, replay+consume {ev['end_to_end_rate']:,}/s)"
    )
    print(
        f"API latency      p50 {lat['p50']:.2f} ms, p95 {lat['p95']:.2f} ms, "
        f"p99 {lat['p99']:.2f} ms, max {lat['max']:.2f} ms ({errors} errors)"
    )
    print(f"\nuser {user} recently rated:")
    for item in history:
        print(f"    {titles.get(item, item)}")
    print(f"recommendations for user {user}:")
    for it in recs.get("items", []):
        why = it["reason"]
        because = why.get("because_of_title") or why.get("because_of") or ""
        print(
            f"    {it['score']:.3f}  {it.get('title') or it['item_id']}  "
            f"[{why['kind']}{': ' + because if because else ''}]"
        )
    print("a user never seen before gets:")
    for it in cold.get("items", []):
        print(f"    {it.get('title') or it['item_id']}  [{it['reason']['kind']}]")
