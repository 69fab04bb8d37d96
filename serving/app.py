"""The FastAPI application: ``uvicorn --factory serving.app:create_app``.

The lifespan owns every resource (Redis client, index, producer, watcher task)
and yields them as typed state; nothing lives at module level.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from serving import index_watch
from serving.errors import install_handlers
from serving.ingest import EventSink
from serving.routes import make_router
from serving.settings import ServingSettings
from serving.state import STATE_KEY, AppState
from serving.store import StateStore

log = logging.getLogger(__name__)


def _redis_client(settings: ServingSettings) -> aioredis.Redis:
    timeout = settings.request_timeout_s
    return aioredis.Redis.from_url(
        settings.redis.url,
        decode_responses=True,
        # Bounded by the request budget: a hung connect or read must surface as
        # a 503 within request_timeout_s, not after redis-py's 5 s default.
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        # One quick retry survives a dropped pooled connection (Redis restart)
        # without turning an outage into seconds of backoff per request.
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), 1),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


def create_app(settings: ServingSettings | None = None) -> FastAPI:
    cfg = settings if settings is not None else ServingSettings()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, AppState]]:
        client = _redis_client(cfg)
        state = AppState(
            settings=cfg,
            redis=client,
            store=StateStore(client, cfg.redis.keys, history_len=cfg.history_len),
            events=EventSink(cfg.kafka),
        )
        # Start even when Redis is down: /health reports it and requests get
        # 503s until it is back, which beats a crash loop under an orchestrator.
        await index_watch.load_initial(state)
        watcher = asyncio.create_task(index_watch.watch(state), name="index-watch")
        try:
            yield {STATE_KEY: state}
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            try:
                await state.events.close()
            except Exception:
                log.exception("closing the kafka producer failed")
            await client.aclose()

    app = FastAPI(
        title="streamrec",
        summary="Real-time session recommendations from a click stream",
        version="0.1.0",
        lifespan=lifespan,
    )
    install_handlers(app)
    app.include_router(make_router(cfg))
    return app
