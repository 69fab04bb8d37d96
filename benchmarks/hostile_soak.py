"""Hostile soak: normal lookups and events, then the same load mixed with hostile inputs.

Loopback only, bounded in time. An isolated live stack (streamrec.local.harness.LiveRun:
its own topic and Redis namespace, a consumer and the API as child processes,
write auth on), ml-latest-small's first ``--warmup`` share replayed and applied
and an index built from it. After ``--settle`` seconds of normal load (the API's
caches warm up; not compared), ``--duration`` seconds of each of:

1. **baseline**, half before the hostile phase and half after it (so drift of
   the machine shows rather than biases the ratio): open-loop
   ``GET /recommendations/{user}`` at ``--rps`` for users of the warm-up, and
   ``POST /events`` (authorised, batches of 10 of the dataset's next events)
   at ``--eps`` events/s;
2. **hostile**: the same, plus, all at once: four connections that announce a
   4 MiB body and send one byte (re-opened whenever the server gives up on
   them), a body of 6 MiB announced,
   events dated years ahead, lone surrogates, 400-digit weights, writes without
   or with a wrong key, 1 MB headers and heads that never end, bytes that are not
   HTTP, undecodable and over-long ids, deep nesting, NaN, and batches retried
   with the same Idempotency-Key.

Reported per phase: 5xx answers (goal 0), the normal lookups' p50/p99 from their
scheduled time (goal: hostile p99 at most twice the baseline's), normal lookups
not answered 200, and at the end events accepted (202, a retried key counted
once) against events the consumer applied (goal equal).

    .venv/bin/python -m benchmarks.hostile_soak --data-dir ../shared/datasets \
        --out docs/bench/hostile_soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.common import machine, table, write_json

WRITE_KEY = "soak-write-key-0123456789"
AUTH = {"Authorization": f"Bearer {WRITE_KEY}"}
BATCH = 10


@dataclass
class Tally:
    """What one phase saw."""

    lookups: int = 0
    lookup_not_200: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    server_errors: int = 0
    events_accepted: int = 0
    event_posts_failed: int = 0
    hostile: dict[str, dict[str, int]] = field(default_factory=dict)
    hostile_accepted: int = 0  # hostile requests answered 202 (goal 0)
    normal: dict[str, int] = field(default_factory=dict)  # normal answers by status (code)

    def accepted(self, resp: httpx.Response) -> None:
        """A 202 of POST /events: what it says it sent (a replayed key sent nothing)."""
        body = resp.json()
        if not body.get("replayed"):
            self.events_accepted += int(body["accepted"])

    def answered(self, what: str, resp: httpx.Response | None, status: int | str) -> None:
        """A normal request's answer, by status and, for errors, the error code."""
        label = f"{what} {status}"
        if resp is not None and isinstance(status, int) and status >= 400:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                label += f" {resp.json()['error']['code']}"
        self.normal[label] = self.normal.get(label, 0) + 1
        if isinstance(status, int) and status >= 500:
            self.server_errors += 1

    def saw(self, kind: str, status: int | str) -> None:
        if isinstance(status, int) and status >= 500:
            self.server_errors += 1
        by = self.hostile.setdefault(kind, {})
        by[str(status)] = by.get(str(status), 0) + 1

    def summary(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies_ms)
        return {
            "lookups": self.lookups,
            "lookups_not_200": self.lookup_not_200,
            "lookup_p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
            "lookup_p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
            "server_errors_5xx": self.server_errors,
            "events_accepted": self.events_accepted,
            "event_posts_failed": self.event_posts_failed,
            "hostile": self.hostile,
            "hostile_accepted": self.hostile_accepted,
            "normal_answers": self.normal,
        }


# -- the normal load ---------------------------------------------------------------
async def lookups(api: str, users: list[str], rps: float, seconds: float, tally: Tally) -> None:
    """Open loop: request n is due at n / rps; latency counts from that time."""
    rng = random.Random(1)
    async with httpx.AsyncClient(
        base_url=api, timeout=2.0, limits=httpx.Limits(max_connections=64)
    ) as client:
        start = time.perf_counter()
        tasks = []

        async def one(due: float, user: str) -> None:
            resp = None
            try:
                resp = await client.get(f"/recommendations/{user}", params={"k": 10})
                status: int | str = resp.status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            tally.lookups += 1
            tally.latencies_ms.append((time.perf_counter() - due) * 1000)
            if status != 200:
                tally.lookup_not_200 += 1
            tally.answered("GET", resp, status)

        for n in itertools.count():
            due = start + n / rps
            if due - start >= seconds:
                break
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(one(due, rng.choice(users))))
        await asyncio.gather(*tasks)


async def events(
    api: str, stream: list[dict[str, Any]], eps: float, seconds: float, tally: Tally
) -> None:
    """Authorised batches of the dataset's next events, at eps events/s."""
    async with httpx.AsyncClient(base_url=api, timeout=5.0, headers=AUTH) as client:
        start = time.perf_counter()
        for n in itertools.count():
            due = start + n * BATCH / eps
            if due - start >= seconds or not stream:
                break
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            batch = [stream.pop() for _ in range(min(BATCH, len(stream)))]
            resp = None
            try:
                resp = await client.post("/events", json=batch)
                status: int | str = resp.status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            tally.answered("POST", resp, status)
            if resp is not None and status == 202:
                tally.accepted(resp)
            else:
                tally.event_posts_failed += 1


# -- the hostile load --------------------------------------------------------------
async def raw(port: int, data: bytes, timeout: float = 5.0) -> int | str:
    """Send bytes, read the status line of the answer."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
    except (OSError, TimeoutError) as exc:
        return type(exc).__name__
    try:
        try:
            writer.write(data)
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # answered and closed before it read everything
        line = await asyncio.wait_for(reader.readline(), timeout)
        parts = line.split(b" ", 2)
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else "closed"
    except (TimeoutError, ConnectionError, OSError):
        return "no answer"
    finally:
        writer.close()


async def silent_bodies(port: int, seconds: float, tally: Tally) -> None:
    """Defect 1: four connections that announce a body within the limit (4 MiB) and
    send one byte of it, re-opened whenever the server gives up on them."""
    head = (
        b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 4194304\r\n\r\n{"
    )
    stop = time.perf_counter() + seconds

    async def hold() -> None:
        while time.perf_counter() < stop:
            status = await raw(port, head, timeout=max(0.1, stop - time.perf_counter()))
            tally.saw("silent 4 MiB body", status)

    await asyncio.gather(*(hold() for _ in range(4)))


def hostile_requests(ts: int) -> list[tuple[str, Any]]:
    """(kind, a coroutine factory taking (client, port)) for one round of the mix."""
    future = int(time.time() * 1000) + 10 * 365 * 86_400_000  # past the wall clock

    def post(body: Any, headers: dict[str, str] | None = None, content: bytes | None = None):
        async def go(client: httpx.AsyncClient, port: int) -> int:
            h = {**AUTH, "Content-Type": "application/json", **(headers or {})}
            data = content if content is not None else json.dumps(body).encode()
            return (await client.post("/events", content=data, headers=h)).status_code

        return go

    def get(path: str, headers: dict[str, str] | None = None):
        async def go(client: httpx.AsyncClient, port: int) -> int:
            return (await client.get(path, headers=headers)).status_code

        return go

    def send(data: bytes):
        async def go(client: httpx.AsyncClient, port: int) -> int | str:
            return await raw(port, data)

        return go

    ev = {"user_id": "hostile", "item_id": "1", "ts": ts}
    return [
        (
            "body of 6 MiB announced",
            send(
                b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 6291456\r\n\r\n[" + b" " * 1024
            ),
        ),
        ("event dated 10 years ahead", post([{**ev, "ts": future}])),
        (
            "lone surrogate in event 2",
            post(
                None,
                content=b'[{"user_id":"a","item_id":"1","ts":%d},'
                b'{"user_id":"a","item_id":"\\ud800","ts":%d}]' % (ts, ts),
            ),
        ),
        (
            "400-digit weight",
            post(
                None,
                content=b'{"user_id":"a","item_id":"1","ts":%d,"weight":%s}' % (ts, b"9" * 400),
            ),
        ),
        (
            "4,000-digit ts",
            post(None, content=b'{"user_id":"a","item_id":"1","ts":%s}' % (b"9" * 4000)),
        ),
        (
            "NaN weight",
            post(None, content=b'{"user_id":"a","item_id":"1","ts":%d,"weight":NaN}' % ts),
        ),
        ("deep nesting", post(None, content=b"[" * 5000 + b"]" * 5000)),
        ("no write key", post([ev], headers={"Authorization": ""})),
        ("wrong write key", post([ev], headers={"Authorization": "Bearer " + "x" * 24})),
        ("user id with /", post([{**ev, "user_id": "a/b"}])),
        ("undecodable path", get("/recommendations/%FF%FE")),
        ("over-long id", get("/recommendations/" + "x" * 5000)),
        ("k out of range", get("/recommendations/1?k=100000")),
        ("1 MB header", get("/health", headers={"X-Pad": "a" * (1024 * 1024)})),
        ("head that never ends", send(b"GET /health HTTP/1.1\r\nX-Pad: " + b"a" * 65536)),
        ("not HTTP", send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64)),
    ]


async def hostile(api: str, port: int, seconds: float, ts: int, tally: Tally) -> None:
    """One hostile request every 50 ms, cycling through the mix; plus retried keys."""
    mix = hostile_requests(ts)
    stop = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=api, timeout=5.0) as client:
        for n in itertools.count():
            if time.perf_counter() >= stop:
                break
            kind, go = mix[n % len(mix)]
            try:
                status = await go(client, port)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            tally.saw(kind, status)
            if status == 202:  # a hostile input taken in would show in accepted = applied
                tally.hostile_accepted += 1
            if n % len(mix) == 0:  # a batch sent twice under one key: accepted once
                key = uuid.uuid4().hex
                batch = [{"user_id": f"retry-{key[:8]}", "item_id": "1", "ts": ts}]
                for _ in range(2):
                    resp = await client.post(
                        "/events", json=batch, headers={**AUTH, "Idempotency-Key": key}
                    )
                    tally.saw("batch retried with its Idempotency-Key", resp.status_code)
                    if resp.status_code == 202:
                        tally.accepted(resp)
            await asyncio.sleep(0.05)


async def phase(
    api: str,
    users: list[str],
    stream: list[dict[str, Any]],
    args: argparse.Namespace,
    seconds: float,
    with_hostile: bool,
    ts: int,
) -> Tally:
    tally = Tally()
    port = int(api.rsplit(":", 1)[1])
    jobs = [
        lookups(api, users, args.rps, seconds, tally),
        events(api, stream, args.eps, seconds, tally),
    ]
    if with_hostile:
        jobs += [silent_bodies(port, seconds, tally), hostile(api, port, seconds, ts, tally)]
    await asyncio.gather(*jobs)
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--warmup", type=float, default=0.3)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per phase")
    parser.add_argument(
        "--settle", type=float, default=15.0, help="seconds of normal load first, not compared"
    )
    parser.add_argument("--rps", type=float, default=100.0)
    parser.add_argument("--eps", type=float, default=200.0)
    parser.add_argument("--out", type=Path, default=Path("docs/bench/hostile_soak.json"))
    args = parser.parse_args()

    from offline.job import build_index
    from producer.client import ClickProducer
    from producer.dataset import resolve_dataset
    from producer.movielens import load_ratings, load_titles, to_events
    from producer.replay import Pacing, replay
    from streamrec.loadtest.run import split
    from streamrec.local.harness import LiveRun

    dataset = resolve_dataset("ml-latest-small", data_dir=args.data_dir, download=False)
    df = load_ratings(dataset)
    warm, rest = split(df, args.warmup)
    users = sorted({str(u) for u in warm["user_id"].tolist()})
    stream = [
        {"user_id": str(u), "item_id": str(i), "ts": int(t)}
        for u, i, t in zip(rest["user_id"], rest["item_id"], rest["ts"], strict=True)
    ][::-1]  # popped from the end: in time order
    ts = int(rest["ts"].iloc[0])
    with LiveRun() as run:
        print(f"index and warm-up from {len(warm):,} events", flush=True)
        build_index(warm, run.artifacts, titles=load_titles(dataset), source="soak")
        run.start_consumer()
        with ClickProducer(run.kafka) as producer:
            replay(to_events(warm), producer, Pacing())
        run.wait_applied(len(warm), timeout=300)
        api = run.start_api(extra_env={"STREAMREC_SERVING_WRITE_KEYS": WRITE_KEY})
        results = {}
        # The baseline is measured on both sides of the hostile phase, so drift
        # of the machine or of the API's warm-up shows instead of biasing the ratio.
        phases = [
            ("warm-up (not compared)", args.settle, False),
            ("baseline before", args.duration / 2, False),
            ("hostile", args.duration, True),
            ("baseline after", args.duration / 2, False),
        ]
        tallies = {}
        for name, seconds, with_hostile in phases:
            print(f"{name}: {seconds:.0f} s", flush=True)
            tallies[name] = asyncio.run(phase(api, users, stream, args, seconds, with_hostile, ts))
            results[name] = tallies[name].summary()
        both = Tally(
            lookups=sum(tallies[n].lookups for n in ("baseline before", "baseline after")),
            latencies_ms=[
                *tallies["baseline before"].latencies_ms,
                *tallies["baseline after"].latencies_ms,
            ],
        )
        baseline_p99 = both.summary()["lookup_p99_ms"]
        accepted = sum(r["events_accepted"] for r in results.values())
        target = len(warm) + accepted
        deadline = time.monotonic() + 120
        while run.applied() < target and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2.0)  # anything applied twice would show up now
        applied = run.applied() - len(warm)
        assert run.client is not None
        stats: dict[str, str] = run.client.hgetall(run.redis.keys.stats)  # type: ignore[assignment]

    host = results["hostile"]
    five_xx = sum(r["server_errors_5xx"] for r in results.values())
    ratio = host["lookup_p99_ms"] / baseline_p99 if host["lookup_p99_ms"] and baseline_p99 else None
    rows = [
        [
            name,
            r["lookups"],
            r["lookups_not_200"],
            r["lookup_p50_ms"],
            r["lookup_p99_ms"],
            r["server_errors_5xx"],
            r["events_accepted"],
        ]
        for name, r in results.items()
    ]
    print(
        table(["phase", "lookups", "not 200", "p50 ms", "p99 ms", "5xx", "events accepted"], rows)
    )
    print(f"\nbaseline p99 (before and after together): {baseline_p99:.1f} ms")
    print(f"hostile p99 / baseline p99: {ratio:.2f} (goal <= 2)" if ratio else "")
    print(f"events accepted {accepted:,}, applied {applied:,} (goal equal)")
    print(f"hostile requests answered 202: {host['hostile_accepted']} (goal 0)")
    for name, r in results.items():
        print(f"normal answers, {name}: {r['normal_answers']}")
    print("\nhostile inputs, answers by status:")
    for kind, by in host["hostile"].items():
        print(f"  {kind}: {by}")
    write_json(
        args.out,
        {
            "machine": machine(),
            "options": {k: str(v) for k, v in vars(args).items()},
            "phases": results,
            "baseline_p99_ms": baseline_p99,
            "p99_ratio": ratio,
            "server_errors_5xx": five_xx,
            "events_accepted": accepted,
            "events_applied": applied,
            "dead_letters": {k: v for k, v in stats.items() if k.startswith("dlq:")},
        },
    )


if __name__ == "__main__":
    main()
