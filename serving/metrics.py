"""In-process counters behind GET /metrics.

Plain counters on the app state rather than a metrics library: the service is
one process per worker, and each worker answers with its own JSON snapshot. Updates
run on the event loop thread only, so no locking is needed.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Metrics:
    requests: Counter[str] = field(default_factory=Counter)  # by route template
    errors: Counter[str] = field(default_factory=Counter)  # by error code
    recommendations: int = 0  # responses served by /recommendations
    fallbacks: int = 0  # ...of which had no personalised item (cold user)
    items_served: int = 0
    events_accepted: int = 0
    index_swaps: int = 0
    index_load_failures: int = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            # Each uvicorn worker process keeps its own counters; the pid says whose.
            "pid": os.getpid(),
            "requests": dict(self.requests),
            "errors": dict(self.errors),
            "recommendations": self.recommendations,
            "fallbacks": self.fallbacks,
            "items_served": self.items_served,
            "events_accepted": self.events_accepted,
            "index_swaps": self.index_swaps,
            "index_load_failures": self.index_load_failures,
        }
