"""Replay a stream of click events into Kafka, as fast as possible or paced.

Pacing is a pure schedule (``Pacing.due_time``), so the arithmetic is tested
without a clock; ``replay`` only sleeps until each event's due time. The
consumer runs on event time, so the pace changes how fast state is built, never
what state is built.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from core.events import ClickEvent
from producer.client import ClickProducer
from producer.progress import Progress

# Sleep only when at least this far ahead of schedule: time.sleep has ~0.1 ms of
# overhead and jitter, and sleeping in sub-millisecond slices would cost more
# than it keeps; being up to 1 ms early is invisible at any practical rate.
MIN_SLEEP_S = 0.001


@dataclass(frozen=True)
class Pacing:
    """How fast to replay: ``speed`` x real time by event timestamps, or ``rate`` events/s.

    Neither set means as fast as the producer goes.
    """

    speed: float | None = None
    rate: float | None = None

    def __post_init__(self) -> None:
        if self.speed is not None and self.rate is not None:
            raise ValueError("give speed or rate, not both")
        for name in ("speed", "rate"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")

    @property
    def paced(self) -> bool:
        return self.speed is not None or self.rate is not None

    def due_time(self, event_ts_ms: int, first_ts_ms: int, index: int) -> float:
        """Seconds after the start at which event ``index`` (0-based) is due."""
        if self.speed is not None:
            # Event-time gap in seconds, compressed by the speed-up.
            return (event_ts_ms - first_ts_ms) / 1000.0 / self.speed
        if self.rate is not None:
            return index / self.rate
        return 0.0


@dataclass
class ReplaySummary:
    sent: int
    seconds: float
    first_ts: int | None
    last_ts: int | None
    # Events the broker did not acknowledge (counted from the send futures).
    failed: int = 0

    @property
    def rate(self) -> float:
        """Events sent per wall-clock second."""
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
            "rate": round(self.rate, 1),
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
        }


def replay(
    events: Iterable[ClickEvent],
    producer: ClickProducer,
    pacing: Pacing = Pacing(),  # frozen, so one shared default instance is safe
    *,
    limit: int | None = None,
    progress: bool = False,
    total: int | None = None,
    stop: threading.Event | None = None,
    on_sent: Callable[[ClickEvent], None] | None = None,
) -> ReplaySummary:
    """Send ``events`` in order at the given pace, flush, and report what was sent.

    Stops after ``limit`` events or as soon as ``stop`` is set (also mid-sleep).
    ``on_sent`` is called after each event is queued (not yet acknowledged).
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if limit is not None:
        total = limit if total is None else min(total, limit)
    bar = Progress("replay", total) if progress else None
    failures = [0]

    def failed(_exc: BaseException) -> None:
        # Only the producer's I/O thread writes this; we read it after flush().
        failures[0] += 1

    sent = 0
    first_ts: int | None = None
    last_ts: int | None = None
    start = time.monotonic()
    try:
        for index, event in enumerate(events):
            if limit is not None and index >= limit:
                break
            if stop is not None and stop.is_set():
                break
            if first_ts is None:
                first_ts = event.ts
            if pacing.paced:
                ahead = pacing.due_time(event.ts, first_ts, index) - (time.monotonic() - start)
                if ahead > MIN_SLEEP_S:
                    # Event.wait returns as soon as stop is set: a long gap in a
                    # speed-paced replay does not delay shutdown.
                    if stop is not None:
                        if stop.wait(ahead):
                            break
                    else:
                        time.sleep(ahead)
            producer.send(event).add_errback(failed)
            sent += 1
            last_ts = event.ts
            if on_sent is not None:
                on_sent(event)
            if bar is not None:
                bar.update(sent)
        producer.flush()
    finally:
        if bar is not None:
            bar.close(sent)
    return ReplaySummary(sent, time.monotonic() - start, first_ts, last_ts, failures[0])
