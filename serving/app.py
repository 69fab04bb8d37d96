"""The FastAPI application: ``uvicorn --factory serving.app:create_app``.

The lifespan owns every resource (Redis client, index, producer, watcher task)
and yields them as typed state; nothing lives at module level.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core import __version__
from core.events import MAX_TS_MS, future_limit_ms
from serving import index_watch
from serving.errors import GuardMiddleware, install_handlers
from serving.fastpath import FastRecommendations
from serving.ingest import EventSink
from serving.items import CachedStateReader, ItemCache
from serving.limits import ConcurrencyLimitMiddleware
from serving.live import ConsumerLag
from serving.routes import (
    bench_fetch,
    bench_router,
    fetch_only,
    recommend,
    recommendations,
    router,
)
from serving.settings import ServingSettings
from serving.state import STATE_KEY, AppState
from serving.store import RedisStateReader

log = logging.getLogger(__name__)


def _redis_client(settings: ServingSettings) -> aioredis.Redis:
    timeout = settings.request_timeout_s
    # Bounded by the request budget: a hung connect or read must surface as
    # a 503 within request_timeout_s, not after redis-py's 5 s default.
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": timeout,
        "socket_timeout": timeout,
    }
    if not settings.redis.cluster:
        # One quick retry survives a dropped pooled connection (Redis restart)
        # without turning an outage into seconds of backoff per request. (The
        # cluster client retries by itself, re-reading the slot map.)
        options["retry"] = Retry(ExponentialBackoff(cap=0.05, base=0.01), 1)
        options["retry_on_error"] = [RedisConnectionError, RedisTimeoutError]
    client: aioredis.Redis = settings.redis.async_client(**options)
    return client


def settle_heap() -> None:
    """Move everything alive now out of the cyclic GC's reach (``gc.freeze``).

    Measured: a full collection walked ~140k long-lived objects (modules,
    FastAPI's routing, pydantic validators, the index) and took 15-100 ms,
    stalling every request in flight; after the freeze it takes ~0 ms.
    Reference counting still frees frozen objects, so a swapped-out index is
    released as usual unless it sits in a reference cycle.
    """
    gc.collect()
    gc.freeze()


async def refresh_items(state: AppState) -> bool:
    """One item-cache round, bounded like a request; a failure is logged, never fatal."""
    assert state.cached is not None
    items = state.cached.items
    try:
        async with asyncio.timeout(state.settings.request_timeout_s * 2):
            await items.refresh()
        st = items.stats
        state.metrics.item_cache(st.hits, st.misses, items.rows_held, items.refreshed_at)
        return True
    except Exception as exc:  # Redis away: requests get 503s; the next round retries
        items.stats.refresh_failures += 1
        log.warning("item cache refresh failed: %r", exc)
        return False


async def keep_items_fresh(state: AppState) -> None:
    """Refresh the item cache every item_staleness_s, until cancelled."""
    interval = state.settings.item_staleness_s
    while True:
        await asyncio.sleep(interval)
        await refresh_items(state)


def create_app(settings: ServingSettings | None = None) -> FastAPI:
    cfg = settings if settings is not None else ServingSettings()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, AppState]]:
        client = _redis_client(cfg)
        store = RedisStateReader(client, cfg.redis.keys)
        cached = None
        if cfg.item_staleness_s > 0:
            items = ItemCache(
                store,
                cfg.blend,
                row_len=cfg.blend.candidates_per_item,
                trend_len=cfg.trend_head_len,
                max_rows=cfg.item_cache_rows,
                max_vocab=cfg.item_vocab_max,
            )
            cached = CachedStateReader(store, items)
        state = AppState(
            settings=cfg,
            redis=client,
            store=store,
            cached=cached,
            events=EventSink(cfg.kafka),
            lag=ConsumerLag(cfg.kafka, cfg.consumer_group),
        )
        # Start even when Redis is down: /health reports it and requests get
        # 503s until it is back, which beats a crash loop under an orchestrator.
        await index_watch.load_initial(state)
        settle_heap()
        tasks = [asyncio.create_task(index_watch.watch(state), name="index-watch")]
        if cached is not None:
            await refresh_items(state)
            tasks.append(asyncio.create_task(keep_items_fresh(state), name="item-refresh"))
        try:
            yield {STATE_KEY: state}
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            try:
                await state.events.close()
            except Exception:
                log.exception("closing the kafka producer failed")
            if state.lag is not None:
                state.lag.close()
            await client.aclose()

    app = FastAPI(
        title="streamrec",
        summary="Real-time session recommendations from a click stream",
        version=__version__,
        lifespan=lifespan,
    )
    if cfg.fast_path:
        # Added before the guard, so inside it: counted, and a 500 is still JSON.
        app.add_middleware(
            FastRecommendations,
            route=_route(router, recommendations),
            prefix="/recommendations/",
            handler=recommend,
        )
        if cfg.bench_routes:
            app.add_middleware(
                FastRecommendations,
                route=_route(bench_router, bench_fetch),
                prefix="/bench/fetch/",
                handler=fetch_only,
            )
    install_handlers(app)
    # Outside the routing: a shed request costs no routing or validation.
    app.add_middleware(
        ConcurrencyLimitMiddleware,
        max_in_flight=cfg.max_in_flight,
        max_waiting=cfg.max_waiting,
        queue_wait_s=cfg.queue_wait_s,
        max_body_bytes=cfg.max_body_bytes,
        body_timeout_s=cfg.body_timeout_s,
    )
    # Added last, so outermost: every request is counted, shed ones included.
    app.add_middleware(GuardMiddleware)
    app.include_router(router)
    if cfg.bench_routes:
        app.include_router(bench_router)
    _document_limits(app, cfg)
    return app


def _route(of: APIRouter, endpoint: Callable[..., Any]) -> APIRoute:
    """The APIRoute of a module-level route function."""
    return next(r for r in of.routes if isinstance(r, APIRoute) and r.endpoint is endpoint)


def _document_limits(app: FastAPI, cfg: ServingSettings) -> None:
    """Write the configured limits into the schema: ``max_k`` on every ``k`` query
    parameter, ``max_events_per_request`` on the POST /events batch.

    The routes are module-level, so their ``Query`` carries only the hard limit
    (MAX_K_LIMIT); ``serving.routes.page_size`` enforces the configured bound,
    and the schema must say what is enforced, or clients (and schemathesis)
    would send values the API rejects.
    """
    generate = app.openapi
    max_k = cfg.max_k

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for path in schema.get("paths", {}).values():
                for op in path.values():
                    for param in op.get("parameters", []):
                        if param.get("name") == "k" and param.get("in") == "query":
                            for branch in param["schema"].get("anyOf", [param["schema"]]):
                                if branch.get("type") == "integer":
                                    branch["maximum"] = max_k
                            param["description"] = (
                                f"how many items (default {cfg.default_k}, at most {max_k})"
                            )
            content = schema["paths"]["/events"]["post"]["requestBody"]["content"]
            # A copy: the module-level event schema stays as it is.
            body = content["application/json"]["schema"] = copy.deepcopy(
                content["application/json"]["schema"]
            )
            one, batch = body["oneOf"]
            batch["maxItems"] = cfg.max_events_per_request
            batch["items"] = one  # one event schema, so one ts bound to move
            app.openapi_schema = schema
        # The latest ts accepted moves with the clock (ts_in_future): the schema
        # says where it is as of when it is served, so a client that reads it
        # never sends a ts it says is fine and the API refuses.
        event = app.openapi_schema["paths"]["/events"]["post"]["requestBody"]["content"][
            "application/json"
        ]["schema"]["oneOf"][0]
        event["properties"]["ts"]["maximum"] = min(MAX_TS_MS, future_limit_ms(cfg.max_future_ms))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
