"""The load test's background measurements: freshness probes and the lag sampler.

Each runs in its own thread with a stop event and a hard time bound, and only
appends to its own list; the orchestrator reads the lists after joining.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import redis

from core.events import ClickEvent
from core.keyspace import Keyspace
from producer.client import ClickProducer


@dataclass
class FreshnessSample:
    """A probe click: when it was produced (s from the start) and how long until it showed."""

    at: float
    user: str
    item: str
    ts: int  # the click's event time: the replay's newest when it was sent
    ms: float | None  # None: not reflected within the probe's timeout
    in_sources: bool = False  # the answer also listed it among the user's sources


@dataclass
class Counter:
    """A count written by one thread and read by others (an int store is atomic in CPython)."""

    value: int = 0
    last_ts: int = 0


@dataclass
class FreshnessProber:
    """Every ``every_s``: a new probe user clicks a distinctive item; time how long
    until ``/recommendations/{user}`` answers from state that holds the click.

    Each probe is its own user (``probe-<tag>-<n>``) with one click, so it pairs
    with nothing: real users' sessions, their co-occurrence rows and the online
    hit rates stay free of synthetic clicks (the item does join popularity and
    trending, once). Users are keyed to partitions, so probes land on every
    partition like the replay's users do.

    The API reads Redis on every request, with no cache in between, so the click
    is reflected once the consumer has written it to the user's history. Polling
    the API every few milliseconds would add hundreds of req/s of its own load,
    so the prober watches the user's history in Redis (one cheap LRANGE per
    ``poll_s``; 5 ms is the resolution, against a 100 ms target) and then sends
    one API request; the time is taken when a 200 arrives. That answer should
    list the item as the user's only source (``in_sources``).
    """

    api_url: str
    redis_client: redis.Redis
    keys: Keyspace
    producer: ClickProducer
    clock: Counter  # the replay's progress; its last_ts dates the probe on event time
    t0: float  # wall-clock (time.time) start shared with the replay and the load
    tag: str
    every_s: float = 0.25
    poll_s: float = 0.005
    timeout_s: float = 2.0
    samples: list[FreshnessSample] = field(default_factory=list)

    def run(self, stop: threading.Event, until_s: float) -> None:
        # Probes start with the replay: until its first event there is no event
        # time to date them with, and a wall-clock stamp (years after a MovieLens
        # replay) would put the probe items on top of the trending set.
        while not self.clock.last_ts:
            if stop.wait(self.poll_s) or time.time() - self.t0 >= until_s:
                return
        n = 0
        with httpx.Client(base_url=self.api_url, timeout=self.timeout_s) as http:
            while not stop.is_set():
                if time.time() - self.t0 >= until_s:
                    return
                n += 1
                user, item = f"probe-{self.tag}-{n}", f"fresh-{self.tag}-{n}"
                self.samples.append(self._probe(http, user, item, stop))
                stop.wait(self.every_s)

    def _probe(
        self, http: httpx.Client, user: str, item: str, stop: threading.Event
    ) -> FreshnessSample:
        # Dated at the replay's current event time, like any other event in the
        # stream (trending and the stream clock run on event time).
        ts = self.clock.last_ts
        hist = self.keys.hist(user)
        needle = f'"{item}"'  # history entries are JSON [ts, item, session]
        started = time.time()
        self.producer.send(ClickEvent(user, item, ts, "click"))
        deadline = started + self.timeout_s
        while time.time() < deadline and not stop.is_set():
            head = self.redis_client.lrange(hist, 0, 0)
            if head and needle in str(head[0]):
                try:
                    resp = http.get(f"/recommendations/{user}", params={"k": 1})
                    if resp.status_code == 200:
                        ms = (time.time() - started) * 1000
                        shown = item in resp.json().get("sources", ())
                        return FreshnessSample(started - self.t0, user, item, ts, ms, shown)
                except httpx.HTTPError:
                    pass  # counted as not reflected if it never answers in time
            time.sleep(self.poll_s)
        return FreshnessSample(started - self.t0, user, item, ts, None)


@dataclass
class LagSample:
    at: float
    produced: int
    applied: int

    @property
    def lag(self) -> int:
        return max(self.produced - self.applied, 0)


def sample_lag(
    produced: Callable[[], int],
    applied: Callable[[], int],
    t0: float,
    stop: threading.Event,
    until_s: float,
    every_s: float,
    out: list[LagSample],
) -> None:
    """Append (time, produced, applied) every ``every_s`` until ``until_s`` or ``stop``."""
    while not stop.is_set():
        now = time.time() - t0
        if now >= until_s:
            return
        if now >= 0:
            out.append(LagSample(now, produced(), applied()))
        stop.wait(every_s)
