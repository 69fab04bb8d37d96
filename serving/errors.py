"""Every error leaves the API as ``{"error": {"code": ..., "message": ...}}``.

Mapping (the API edge of core/errors.py's tree)::

    RequestValidationError                      422 invalid_request
    ApiError (raised by routes)                 its own status and code
    Starlette HTTPException (404 route, 405)    its status, not_found / method_not_allowed
    ServiceUnavailable, redis ConnectionError,  503 unavailable, Retry-After: 1
      redis TimeoutError, TimeoutError
    anything else                               500 internal, detail only in the log

Each error is counted by code in the metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import ServiceUnavailable
from serving.state import STATE_KEY, AppState

log = logging.getLogger(__name__)

# Seconds a client should wait before retrying a 503: Redis restarts and broker
# reconnects settle in about that long, and it keeps retry storms spread out.
RETRY_AFTER_S = 1


class ApiError(Exception):
    """An expected failure a route reports to the client (not found, index missing, ...)."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def app_state(scope: Scope) -> AppState | None:
    state = scope.get("state")
    if isinstance(state, dict):
        found = state.get(STATE_KEY)
        if isinstance(found, AppState):
            return found
    return None


def error_response(
    scope: Scope,
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    state = app_state(scope)
    if state is not None:
        state.metrics.error(code)
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(request.scope, 422, "invalid_request", _validation_message(exc))


async def _on_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(request.scope, exc.status, exc.code, exc.message, exc.headers)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return error_response(
        request.scope, exc.status_code, code, str(exc.detail), dict(exc.headers or {})
    )


# What a backing service failing looks like; each becomes a 503 with Retry-After.
UNAVAILABLE: tuple[type[Exception], ...] = (
    ServiceUnavailable,
    RedisConnectionError,
    RedisTimeoutError,
    TimeoutError,
)


def unavailable_response(scope: Scope, exc: Exception) -> JSONResponse:
    """The 503 for an exception in UNAVAILABLE (the handler's, and the fast path's)."""
    # The message names the dependency, never the host or the trace: the log has those.
    path = scope.get("path")
    state = app_state(scope)
    if state is not None:
        state.metrics.backend_error("kafka" if isinstance(exc, ServiceUnavailable) else "redis")
    if isinstance(exc, ServiceUnavailable):
        log.warning("service unavailable on %s: %s", path, exc)
        message = "a backing service is unavailable; retry shortly"
    else:
        log.warning("redis unavailable on %s: %r", path, exc)
        message = "redis is unavailable or too slow; retry shortly"
    return error_response(scope, 503, "unavailable", message, {"Retry-After": str(RETRY_AFTER_S)})


async def _on_unavailable(request: Request, exc: Exception) -> JSONResponse:
    return unavailable_response(request.scope, exc)


def install_handlers(app: FastAPI) -> None:
    """The exception handlers. The app adds :class:`GuardMiddleware` itself, last,
    so that it is the outermost middleware and sees every request."""
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    for exc_type in UNAVAILABLE:
        app.add_exception_handler(exc_type, _on_unavailable)


class GuardMiddleware:
    """Counts every request (route template, method, status, latency; serving.metrics)
    and turns any unhandled exception into a JSON 500.

    Pure ASGI rather than ``@app.middleware("http")``: it adds no extra task or
    body streaming per request, and it sits inside Starlette's ServerErrorMiddleware,
    so the client gets our JSON shape instead of a plain-text 500. It is the
    outermost of the app's own middleware, so shed requests are counted too.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        status = 500
        t0 = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise  # too late for a clean response; let the server close the connection
            response = error_response(scope, 500, "internal", "internal error")
            await response(scope, receive, send)
        finally:
            state = app_state(scope)
            if state is not None:
                state.metrics.request(
                    scope.get("method", "?"), _route_name(scope), status, time.perf_counter() - t0
                )


def _route_name(scope: Scope) -> str:
    """The route template that matched (or would have: a shed request is never routed)."""
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    if path is None:
        app: Any = scope.get("app")
        for candidate in getattr(getattr(app, "router", None), "routes", ()):
            match, _ = candidate.matches(scope)
            if match == Match.FULL:
                path = getattr(candidate, "path", None)
                break
    # Unmatched paths share one label so random URLs cannot grow the metric's series.
    return path or "unmatched"
