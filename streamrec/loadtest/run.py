"""The load test: replay clicks (MovieLens or a click log) through Kafka while open-loop
lookups hit the API.

One run, on an isolated live stack (streamrec.local.harness.LiveRun):

1. The first ``warmup`` share of the events (timestamp order) builds the
   embedding index and is replayed unpaced, so the measured phase starts with
   real state; the consumer must apply all of it before the clock starts.
2. For ``duration_s`` the rest is replayed at the chosen pace while a separate
   process (streamrec.loadtest.http) fires ``rps`` lookups a second for users
   active in the last ``active_window`` events, a prober measures freshness,
   and a sampler records consumer lag.
3. Results: JSON, Markdown and PNGs under ``out_dir``, and a console summary.

Everything is bounded: the measured phase by time and request count, every
wait by a timeout; only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from consumer.settings import ConsumerSettings
from core.settings import env_name
from producer.replay import Pacing
from producer.sources import Interactions
from streamrec.loadtest.http import LoadPlan, LoadProcess
from streamrec.loadtest.probes import Counter, FreshnessProber, LagSample, sample_lag
from streamrec.loadtest.report import (
    Observed,
    Phase,
    summarise,
    summary_lines,
    write_json,
    write_markdown,
    write_plots,
)
from streamrec.loadtest.stats import EventTimeline, NextClicks, open_loop_schedule
from streamrec.local.harness import LiveRun

# Seconds between telling the load process when to start and that start: it must
# spawn and import (numpy, orjson) first, ~1 s on a busy 2-core machine.
START_DELAY_S = 2.5
LAG_EVERY_S = 0.25


@dataclass(frozen=True)
class LoadTestOptions:
    out_dir: Path
    warmup: float = 0.5  # share of the events used for the index and the initial state
    rate: float | None = 2000.0  # replay events/s in the measured phase ...
    speed: float | None = None  # ... or this multiple of real (event) time
    rps: float = 500.0
    duration_s: float = 30.0
    max_requests: int = 200_000
    k: int = 10
    workers: int = 1
    connections: int = 64
    active_window: int = 2000  # lookups pick users among the last N events' users
    request_timeout_s: float = 2.0
    freshness_every_s: float = 0.25
    freshness_timeout_s: float = 2.0
    api_env: dict[str, str] = field(default_factory=dict)
    consumer_env: dict[str, str] = field(default_factory=dict)
    progress: bool = True
    command: str = "streamrec loadtest"


def due_times(ts_ms: np.ndarray, pacing: Pacing) -> np.ndarray:
    """producer.replay.Pacing.due_time for a whole array (the replay's exact schedule)."""
    if len(ts_ms) == 0:
        return np.zeros(0)
    if pacing.speed is not None:
        return (ts_ms - ts_ms[0]) / 1000.0 / pacing.speed
    if pacing.rate is not None:
        return np.arange(len(ts_ms), dtype=np.float64) / pacing.rate
    return np.zeros(len(ts_ms))


def split(df: pd.DataFrame, warmup: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    if not 0 < warmup < 1:
        raise ValueError(f"warmup must be in (0, 1), got {warmup}")
    cut = int(len(df) * warmup)
    return df.iloc[:cut].reset_index(drop=True), df.iloc[cut:].reset_index(drop=True)


class _Status:
    """One status line: redrawn in place on a terminal, a plain line every 10 s in a log."""

    def __init__(self, enabled: bool, duration_s: float) -> None:
        from producer.progress import LOG_EVERY_S, is_terminal

        self.enabled = enabled
        self.duration_s = duration_s
        self._tty = is_terminal(sys.stderr)
        self._every = 0.0 if self._tty else LOG_EVERY_S
        self._next = 0.0

    def draw(
        self, now: float, sent: int, lag: LagSample | None, fresh: int, *, final: bool = False
    ) -> None:
        if not self.enabled or (now < self._next and not final):
            return
        self._next = now + self._every
        done = min(max(now / self.duration_s, 0.0), 1.0)
        bar = "#" * int(done * 30)
        lag_txt = f"lag {lag.lag:,}" if lag else "lag ?"
        text = (
            f"[{bar:<30}] {now:5.1f}/{self.duration_s:.0f}s  events {sent:,}  "
            f"{lag_txt}  freshness probes {fresh}"
        )
        sys.stderr.write(f"\r{text}   " if self._tty else text + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self._tty:
            sys.stderr.write("\n")


def run_loadtest(opts: LoadTestOptions, data: Interactions) -> dict[str, Any]:
    """One load test over ``data`` (producer.sources.load_interactions)."""
    from evaluation.ranker import build_index
    from producer.client import ClickProducer
    from producer.frame import to_events
    from producer.replay import replay

    pacing = Pacing(speed=opts.speed, rate=None if opts.speed else opts.rate)
    warm, rest = split(data.frame, opts.warmup)
    due = due_times(rest["ts"].to_numpy(), pacing)
    keep = int(np.searchsorted(due, opts.duration_s, side="right"))
    rest, due = rest.iloc[:keep], due[:keep]
    timeline = EventTimeline(
        due, rest["user_id"].tolist(), rest["item_id"].tolist(), rest["ts"].tolist()
    )
    opts.out_dir.mkdir(parents=True, exist_ok=True)

    with LiveRun() as run:
        _say(opts, f"index from {len(warm):,} warm-up events")
        build_index(warm, run.artifacts, catalogue=data.catalogue, source="loadtest")
        run.start_consumer(extra_env=opts.consumer_env)
        _say(opts, f"warm-up: replaying {len(warm):,} events unpaced")
        with ClickProducer(run.kafka) as producer:
            replay(to_events(warm), producer, Pacing())
        run.wait_applied(len(warm), timeout=300)
        # The API starts on live state, as after a deploy, and so warms its
        # neighbour cache with the trending items (ServingSettings.warm_items).
        api = run.start_api(workers=opts.workers, extra_env=opts.api_env)
        port = int(api.rsplit(":", 1)[1])

        schedule = open_loop_schedule(opts.rps, opts.duration_s, opts.max_requests)
        plan = LoadPlan(
            port=port,
            path_template=f"/recommendations/{{user}}?k={opts.k}",
            schedule=schedule.tolist(),
            users=warm["user_id"].unique().tolist(),
            timeline_due=due.tolist(),
            timeline_users=timeline.users,
            active_window=opts.active_window,
            connections=opts.connections,
            duration_s=opts.duration_s,
            timeout_s=opts.request_timeout_s,
        )
        t0 = time.time() + START_DELAY_S
        load = LoadProcess(plan, t0)
        fresh, lag, sent = _measure(opts, run, rest, pacing, t0)
        records = load.join()
        final_applied = _wait_caught_up(run, len(warm) + sent.value + len(fresh.samples), 30.0)
        metrics = httpx.get(f"{api}/stats", timeout=5).json()

    config = {
        "command": opts.command,
        "dataset": data.source,
        "limit": data.limit,
        "warmup_events": len(warm),
        "ingest": f"{opts.speed:g}x real time" if opts.speed else f"{opts.rate:g} events/s",
        "rps": opts.rps,
        "duration_s": opts.duration_s,
        "max_requests": opts.max_requests,
        "k": opts.k,
        "workers": opts.workers,
        "connections": opts.connections,
        "api_env": opts.api_env,
        "consumer_env": opts.consumer_env,
    }
    summary = summarise(
        Observed(records, fresh.samples, lag, NextClicks(timeline)),
        Phase(opts.duration_s, opts.k, config, _session_gap_ms(opts.consumer_env)),
        extra={
            "events_sent": sent.value,
            "events_rate": sent.value / opts.duration_s,
            "events_applied_after": final_applied - len(warm),
            "server_metrics": metrics,
            "freshness_samples": [asdict(s) for s in fresh.samples],
        },
    )
    write_json(opts.out_dir / "results.json", summary)
    write_plots(opts.out_dir, records, lag)
    write_markdown(opts.out_dir / "summary.md", summary, opts.command)
    if opts.progress:
        print("\nstreamrec load test summary\n---------------------------")
        print("\n".join(summary_lines(summary)))
        print(f"results in {opts.out_dir}/ (results.json, summary.md, *.png)")
    return summary


def _session_gap_ms(consumer_env: dict[str, str]) -> int:
    """The session gap the consumer under test runs with (its env overrides included)."""
    raw = consumer_env.get(env_name(ConsumerSettings, "state", "rules", "gap_ms"))
    return int(raw) if raw is not None else ConsumerSettings().state.rules.gap_ms


def _measure(
    opts: LoadTestOptions,
    run: LiveRun,
    rest: pd.DataFrame,
    pacing: Pacing,
    t0: float,
) -> tuple[FreshnessProber, list[LagSample], Counter]:
    from producer.client import ClickProducer
    from producer.frame import to_events
    from producer.replay import replay

    stop = threading.Event()
    sent = Counter()
    lag: list[LagSample] = []
    status = _Status(opts.progress, opts.duration_s)
    with ClickProducer(run.kafka) as producer, ClickProducer(run.kafka) as probe_producer:
        assert run.client is not None
        prober = FreshnessProber(
            run.api_url,
            run.client,
            run.redis.keys,
            probe_producer,
            sent,
            t0,
            run.run_id,
            every_s=opts.freshness_every_s,
            timeout_s=opts.freshness_timeout_s,
        )

        def on_sent(event: Any) -> None:
            sent.value += 1
            sent.last_ts = event.ts

        def replay_job() -> None:
            stop.wait(max(t0 - time.time(), 0))
            if not stop.is_set():
                replay(to_events(rest), producer, pacing, stop=stop, on_sent=on_sent)

        base = run.applied()
        threads = [
            threading.Thread(target=replay_job, name="replay"),
            threading.Thread(target=prober.run, args=(stop, opts.duration_s), name="freshness"),
            threading.Thread(
                target=sample_lag,
                args=(
                    lambda: sent.value + len(prober.samples),
                    lambda: run.applied() - base,
                    t0,
                    stop,
                    opts.duration_s,
                    LAG_EVERY_S,
                    lag,
                ),
                name="lag",
            ),
        ]
        for t in threads:
            t.start()
        try:
            end = t0 + opts.duration_s
            while time.time() < end:
                last = lag[-1] if lag else None
                status.draw(time.time() - t0, sent.value, last, len(prober.samples))
                run.children.check()
                time.sleep(0.25)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=opts.freshness_timeout_s + 10)
            last = lag[-1] if lag else None
            status.draw(time.time() - t0, sent.value, last, len(prober.samples), final=True)
            status.close()
    return prober, lag, sent


def _wait_caught_up(run: LiveRun, target: int, bound_s: float) -> int:
    """Give the consumer up to ``bound_s`` to apply everything; return what it applied."""
    deadline = time.monotonic() + bound_s
    applied = run.applied()
    while applied < target and time.monotonic() < deadline:
        time.sleep(0.1)
        applied = run.applied()
    return applied


def _say(opts: LoadTestOptions, text: str) -> None:
    if opts.progress:
        print(f"• {text}", flush=True)
