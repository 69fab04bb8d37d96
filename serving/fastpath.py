"""GET /recommendations/{user_id} answered beside FastAPI's router, not through it.

Measured with ``benchmarks/serving_bench.py`` and the API's own CPU time
(docs/loadtest.md): FastAPI's routing, request objects and dependency solving
cost about as much CPU per request as everything the recommendation itself
does. This ASGI layer answers the one hot route, for requests the route would
accept, by calling the route's own code (``serving.routes.recommend``; and,
when the benchmark routes are on, the bare fetch the benchmark compares it
with, so both are dispatched alike).
The query may hold ``k`` and the filter parameters (serving.filters), parsed
by the same code as the route's. Anything else (an id, a ``k`` or a filter the
route would reject, another query parameter, another method) goes on to
FastAPI, so validation and error bodies have one source; tests/test_fastpath.py
holds both paths to the same answers.
It sits inside the load shedding and the error guard, like the route.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl

from fastapi.routing import APIRoute
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from core.events import id_problem
from serving.errors import UNAVAILABLE, app_state, unavailable_response
from serving.filters import NO_FILTERS, FilterError, Filters
from serving.state import AppState

# k=<a number without leading zeros>; whether it is within max_k is checked
# against the settings. The common query (k alone) is matched without parsing.
_K = re.compile(rb"k=([1-9][0-9]{0,3})")
_K_VALUE = re.compile(r"[1-9][0-9]{0,3}")
_LISTS = ("exclude", "category", "exclude_category")


Handler = Callable[[AppState, str, int, Filters], Awaitable[Response]]


class FastRecommendations:
    """Answers ``GET {prefix}{user_id}[?k=N]`` with ``handler`` (the route's own body)."""

    def __init__(self, app: ASGIApp, route: APIRoute, prefix: str, handler: Handler) -> None:
        self.app = app
        self.route = route  # set as scope["route"], so per-route counting sees it
        self.prefix = prefix
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path: str = scope["path"]
            state = app_state(scope)
            if path.startswith(self.prefix) and state is not None:
                user_id = path[len(self.prefix) :]
                settings = state.settings
                query = _query(scope["query_string"], settings.default_k, settings.max_k)
                if query is not None and id_problem(user_id) is None:
                    scope["route"] = self.route
                    try:
                        response = await self.handler(state, user_id, *query)
                    except UNAVAILABLE as exc:
                        response = unavailable_response(scope, exc)
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def _query(query: bytes, default_k: int, max_k: int) -> tuple[int, Filters] | None:
    """The page size and filters of a query string answered here, or None (FastAPI
    decides, and answers the error where there is one)."""
    if not query:
        return default_k, NO_FILTERS
    match = _K.fullmatch(query)
    if match is not None:
        size = int(match.group(1))
        return (size, NO_FILTERS) if size <= max_k else None
    # As Starlette reads a query string (latin-1, then percent-decoding as UTF-8).
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    k: int | None = None
    lists: dict[str, list[str]] = {name: [] for name in _LISTS}
    seen: str | None = None
    for name, value in pairs:
        if name in lists:
            lists[name].append(value)
        elif name == "k" and _K_VALUE.fullmatch(value) and k is None:
            k = int(value)
        elif name == "seen" and seen is None:
            seen = value
        else:
            return None  # unknown, repeated k or seen, or a k FastAPI must refuse
    if k is None:
        k = default_k
    elif k > max_k:
        return None
    try:
        return k, Filters.parse(seen=seen, **lists)
    except FilterError:
        return None
