"""Load shedding: a bounded number of requests in flight, a bounded, short wait for the rest.

Beyond capacity an unbounded server queues: every request still gets an answer,
each one later than the last, until clients time out and retry into a queue that
only grows. This middleware keeps the queue small and the wait short instead:

- up to ``max_in_flight`` requests run at once;
- up to ``max_waiting`` more wait at most ``queue_wait_s`` for a slot;
- anything else is answered at once with 503 ``overloaded`` and ``Retry-After``,
  which costs microseconds, so the server stays responsive while it sheds.

Probes (``/health``, ``/metrics``) bypass the limit: an orchestrator must be able
to tell "busy" from "dead" exactly when the service is busiest.

Pure ASGI, like serving.errors.GuardMiddleware, so it adds no task per request.
Counters live on the event loop thread only, so no locking is needed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Collection

from starlette.types import ASGIApp, Receive, Scope, Send

from serving.errors import RETRY_AFTER_S, error_response

EXEMPT_PATHS: frozenset[str] = frozenset({"/health", "/metrics"})


class InFlightLimiter:
    """A FIFO slot pool: ``try_enter`` admits or queues; waiters are woken in order."""

    def __init__(self, max_in_flight: int, max_waiting: int) -> None:
        if max_in_flight < 1 or max_waiting < 0:
            raise ValueError("max_in_flight must be >= 1 and max_waiting >= 0")
        self.max_in_flight = max_in_flight
        self.max_waiting = max_waiting
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self, timeout_s: float) -> bool:
        """Take a slot within ``timeout_s``; False (no slot held) when full or timed out."""
        if self.in_flight < self.max_in_flight and not self._waiters:
            self.in_flight += 1
            return True
        if len(self._waiters) >= self.max_waiting or timeout_s <= 0:
            return False
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            # shield: a timeout must not cancel fut itself, so _abandon can see
            # whether a slot was handed over in the same tick.
            await asyncio.wait_for(asyncio.shield(fut), timeout_s)
        except TimeoutError:
            self._abandon(fut)
            return False
        except asyncio.CancelledError:
            self._abandon(fut)
            raise
        return True  # release() handed its slot over: in_flight is unchanged

    def _abandon(self, fut: asyncio.Future[None]) -> None:
        if fut.done() and not fut.cancelled():
            self.release()  # a slot arrived as we gave up: pass it on, never leak it
        else:
            fut.cancel()
            self._waiters.remove(fut)

    def release(self) -> None:
        # Hand the slot straight to the oldest live waiter, so a newcomer cannot
        # overtake requests that have waited longer.
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.in_flight -= 1


class ConcurrencyLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_in_flight: int,
        max_waiting: int,
        queue_wait_s: float,
        exempt: Collection[str] = EXEMPT_PATHS,
    ) -> None:
        self.app = app
        self.limiter = InFlightLimiter(max_in_flight, max_waiting)
        self.queue_wait_s = queue_wait_s
        self.exempt = frozenset(exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.exempt:
            await self.app(scope, receive, send)
            return
        if not await self.limiter.acquire(self.queue_wait_s):
            response = error_response(
                scope,
                503,
                "overloaded",
                "the server is at capacity; retry shortly",
                {"Retry-After": str(RETRY_AFTER_S)},
            )
            await response(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.limiter.release()
