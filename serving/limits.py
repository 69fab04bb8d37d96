"""Load shedding: a bounded number of requests in flight, a bounded, short wait for the rest.

Beyond capacity an unbounded server queues: every request still gets an answer,
each one later than the last, until clients time out and retry into a queue that
only grows. This middleware keeps the queue small and the wait short instead:

- up to ``max_in_flight`` requests run at once;
- up to ``max_waiting`` more wait at most ``queue_wait_s`` for a slot;
- anything else is answered at once with 503 ``overloaded`` and ``Retry-After``,
  which costs microseconds, so the server stays responsive while it sheds.

Probes (``/health``, ``/metrics``, ``/stats``) bypass the limit: an orchestrator must be able
to tell "busy" from "dead" exactly when the service is busiest.

Pure ASGI, like serving.errors.GuardMiddleware, so it adds no task per request.
Counters live on the event loop thread only, so no locking is needed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.errors import RETRY_AFTER_S, error_response

EXEMPT_PATHS: frozenset[str] = frozenset({"/health", "/metrics", "/stats"})


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
    """The slot pool around the app, and the body read before a slot is taken.

    A request body is read whole, within ``body_timeout_s`` and at most
    ``max_body_bytes``, *before* the request may take a slot: a client that
    announces a body and sends it slowly, or not at all, holds only its own
    connection, never a slot that others' requests need (408 when it runs out
    of time, 413 when the body is too large: announced, or counted while
    reading, never buffered past the limit).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_in_flight: int,
        max_waiting: int,
        queue_wait_s: float,
        max_body_bytes: int,
        body_timeout_s: float,
        exempt: Collection[str] = EXEMPT_PATHS,
    ) -> None:
        self.app = app
        self.limiter = InFlightLimiter(max_in_flight, max_waiting)
        self.queue_wait_s = queue_wait_s
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.exempt = frozenset(exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.exempt:
            await self.app(scope, receive, send)
            return
        if _may_have_body(scope):
            body = await self._read_body(scope, receive, send)
            if body is None:
                return  # answered (408/413), or the client went away
            receive = _replay(body, receive)
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

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or None after answering 408/413 (or on a disconnect)."""
        limit = self.max_body_bytes
        announced = _content_length(scope)
        if announced is not None and announced > limit:
            await _too_large(scope, receive, send, limit)
            return None
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.body_timeout_s):
                while size <= limit:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        break
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            response = error_response(
                scope,
                408,
                "body_timeout",
                f"the request body did not arrive within {self.body_timeout_s:g} s",
                {"Connection": "close"},
            )
            await response(scope, receive, send)
            return None
        # Over the limit: answered outside the time bound, so it cannot also time out.
        await _too_large(scope, receive, send, limit)
        return None


def _may_have_body(scope: Scope) -> bool:
    if scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
        return _content_length(scope) not in (None, 0)
    return True


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    response = error_response(
        scope,
        413,
        "body_too_large",
        f"the request body is larger than {limit:,} bytes",
        {"Connection": "close"},
    )
    await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body already read, then the real channel."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
