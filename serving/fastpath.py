"""GET /recommendations/{user_id} answered beside FastAPI's router, not through it.

Measured with ``benchmarks/serving_bench.py`` and the API's own CPU time
(docs/loadtest.md): FastAPI's routing, request objects and dependency solving
cost about as much CPU per request as everything the recommendation itself
does. This ASGI layer answers the one hot route, for requests the route would
accept, by calling the route's own code (``serving.routes.recommend``; and,
when the benchmark routes are on, the bare fetch the benchmark compares it
with, so both are dispatched alike).
Anything else (an id or a ``k`` the route would reject, another query
parameter, another method) goes on to FastAPI, so validation and error bodies
have one source; tests/test_fastpath.py holds both paths to the same answers.
It sits inside the load shedding and the error guard, like the route.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from fastapi.routing import APIRoute
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from core.events import id_problem
from serving.errors import UNAVAILABLE, app_state, unavailable_response
from serving.state import AppState

# The one query string answered here: nothing, or k=<a number without leading
# zeros>; whether it is within max_k is checked against the settings.
_K = re.compile(rb"k=([1-9][0-9]{0,3})")


Handler = Callable[[AppState, str, int], Awaitable[Response]]


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
                k = _page(scope["query_string"], state.settings.default_k, state.settings.max_k)
                if k is not None and id_problem(user_id) is None:
                    scope["route"] = self.route
                    try:
                        response = await self.handler(state, user_id, k)
                    except UNAVAILABLE as exc:
                        response = unavailable_response(scope, exc)
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def _page(query: bytes, default_k: int, max_k: int) -> int | None:
    """The page size of a query string answered here, or None (FastAPI decides)."""
    if not query:
        return default_k
    match = _K.fullmatch(query)
    if match is None:
        return None
    k = int(match.group(1))
    return k if k <= max_k else None
