"""Run the offline job on a schedule (``streamrec build-index --every 1h``).

Each run publishes a new index version (``offline.index.publish`` prunes the
old ones); the API's index watcher swaps to it without a restart. A run that
fails is logged and the schedule goes on: the version already published stays
current, so a broker outage or a bad window costs freshness, not service.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

log = logging.getLogger("streamrec.offline")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(text: str) -> float:
    """Seconds in ``"90s"``, ``"30m"``, ``"1h"``, ``"7d"`` or ``"1h30m"``; ValueError otherwise."""
    spec = text.strip().lower()
    pos, total = 0, 0.0
    for match in _DURATION.finditer(spec):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(spec) or pos == 0 or total <= 0:
        raise ValueError(f"{text!r} is not a duration such as 90s, 30m, 1h, 7d or 1h30m")
    return total


def run_every(
    period_s: float,
    job: Callable[[], object],
    stop: threading.Event,
    *,
    runs: int | None = None,
) -> int:
    """Run ``job`` now and then every ``period_s`` (measured start to start) until
    ``stop`` is set or ``runs`` runs are done; return how many failed."""
    failures = done = 0
    while not stop.is_set():
        started = time.monotonic()
        try:
            job()
        except Exception:  # a failed build must not end the schedule
            failures += 1
            log.exception("scheduled build failed; the current index stays in place")
        done += 1
        if runs is not None and done >= runs:
            break
        stop.wait(max(0.0, period_s - (time.monotonic() - started)))
    return failures
