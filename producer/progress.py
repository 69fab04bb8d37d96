"""A tiny dependency-free progress line for stderr (replay and dataset download).

It redraws one line in place with ``\\r``, at most ``max_hz`` times a second, so
that a loop sending tens of thousands of events a second spends its time
sending, not formatting: at 30k events/s and 5 redraws/s, one redraw per 6,000
events. When the stream is not a terminal (a CI log, a file) it writes a plain
line every ``LOG_EVERY_S`` instead, so logs hold a few lines, not thousands
of carriage returns.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

MAX_HZ = 5.0
LOG_EVERY_S = 10.0


def is_terminal(stream: TextIO) -> bool:
    """True when ``stream`` is an interactive terminal (redraw in place), else a log."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def _count(n: float, unit: str) -> str:
    if unit == "B":
        return f"{n / 1_048_576:,.1f} MiB"
    return f"{n:,.0f}"


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """``label  count/total  rate/s  ETA``; ``update`` is cheap when not redrawing."""

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        unit: str = "events",
        stream: TextIO | None = None,
        max_hz: float = MAX_HZ,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self._tty = is_terminal(self.stream)
        self._interval = 1.0 / max_hz if self._tty else LOG_EVERY_S
        self._start = time.monotonic()
        self._next_draw = self._start  # draw on the first update
        self._count = 0
        self._width = 0

    def update(self, count: int) -> None:
        """Record the running total; redraw if the last redraw is old enough."""
        self._count = count
        now = time.monotonic()
        if now >= self._next_draw:
            self._next_draw = now + self._interval
            self._draw(now)

    def close(self, count: int | None = None) -> None:
        """Draw the final figures (with ``count`` as the last total) and end the line."""
        if count is not None:
            self._count = count
        self._draw(time.monotonic())
        if self._tty:
            self.stream.write("\n")
        self.stream.flush()

    def line(self, now: float) -> str:
        elapsed = max(now - self._start, 1e-9)
        rate = self._count / elapsed
        done = _count(self._count, self.unit)
        parts = [self.label]
        if self.total:
            pct = 100.0 * self._count / self.total
            parts.append(f"{done}/{_count(self.total, self.unit)} ({pct:5.1f}%)")
        else:
            parts.append(done)
        per_s = f"{_count(rate, self.unit)}/s" if self.unit == "B" else f"{rate:,.0f} {self.unit}/s"
        parts.append(per_s)
        if self.total and rate > 0 and self._count < self.total:
            parts.append(f"ETA {_eta((self.total - self._count) / rate)}")
        return "  ".join(parts)

    def _draw(self, now: float) -> None:
        text = self.line(now)
        if not self._tty:
            self.stream.write(text + "\n")
            self.stream.flush()
            return
        # Pad over the remains of a longer previous line.
        pad = " " * max(self._width - len(text), 0)
        self._width = len(text)
        self.stream.write(f"\r{text}{pad}")
        self.stream.flush()
