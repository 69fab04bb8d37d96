"""HTTP routes: fetch, call the pure blend, shape the response. No ranking logic here.

Routes live at module level; what they need arrives through ``Annotated``
dependencies (the app state, the page size), so each signature reads as its
documentation. The bound of ``k`` is a setting (``max_k``): the dependency
enforces it and ``serving.app`` writes it into the OpenAPI schema.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from importlib import resources
from typing import Annotated, Any, Literal, cast

import numpy as np
import orjson
from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import StringConstraints

from core.errors import InvalidEvent
from core.events import ID_PATTERN, MAX_ID_LEN, future_limit_ms, validate
from offline.index import ItemIndex
from serving.auth import require_write_key
from serving.blend import Candidates, Scored, blend
from serving.errors import ApiError
from serving.filters import MAX_VALUES, NO_FILTERS, CategoryRule, FilterError, Filters
from serving.history import Seen
from serving.idempotency import Claim, fingerprint
from serving.items import UserView
from serving.metrics import EXPOSITION_TYPE
from serving.ranker import Moment, extend_pool, ranker_of
from serving.ranker_fast import fast_features
from serving.reader import UserState
from serving.schemas import (
    ERROR_RESPONSES,
    EVENTS_BODY_SCHEMA,
    AcceptedOut,
    CatalogueItem,
    ErrorOut,
    HealthOut,
    ItemCacheOut,
    ItemOut,
    LiveOut,
    MetricsOut,
    RecommendationsOut,
    SearchOut,
    SimilarItem,
    SimilarOut,
    SimilarReason,
)
from serving.scoring import fast_blend
from serving.search import TitleSearch
from serving.settings import MAX_K_LIMIT
from serving.state import STATE_KEY, AppState

router = APIRouter()
PAGE = resources.files("serving").joinpath("page.html").read_text()
MAX_QUERY_LEN = 100
MAX_SEARCH_LIMIT = 50
# GET /bench/fetch/{user_id}: included only when ServingSettings.bench_routes is on.
bench_router = APIRouter()


async def get_state(request: Request) -> AppState:
    # async on purpose: FastAPI runs a plain ``def`` dependency in its thread
    # pool, a thread hop per request (py-spy: ~10% of the API's CPU in
    # threading.Condition) for what is an attribute read.
    return cast(AppState, getattr(request.state, STATE_KEY))


State = Annotated[AppState, Depends(get_state)]


async def page_size(
    state: State,
    k: Annotated[int | None, Query(ge=1, le=MAX_K_LIMIT, description="how many items")] = None,
) -> int:
    """``k``, or the default; above the configured ``max_k`` it is a 422 like any bad value."""
    settings = state.settings
    if k is None:
        return settings.default_k
    if k > settings.max_k:
        raise ApiError(
            422,
            "invalid_request",
            f"query.k: Input should be less than or equal to {settings.max_k}",
        )
    return k


Size = Annotated[int, Depends(page_size)]


# One value of a repeated filter parameter: an item id or a category name, both
# under the id rule (serving.filters checks the same on the fast path).
FilterValue = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_ID_LEN, pattern=ID_PATTERN)
]


# The default of a list parameter (never mutated: Filters.parse copies into sets).
NO_VALUES: list[str] = []


def _values(description: str) -> Any:
    return Query(
        description=description + " (repeat the parameter for several)", max_length=MAX_VALUES
    )


async def request_filters(
    exclude: Annotated[list[FilterValue], _values("item ids never to return")] = NO_VALUES,
    category: Annotated[
        list[FilterValue], _values("only items in at least one of these categories")
    ] = NO_VALUES,
    exclude_category: Annotated[
        list[FilterValue], _values("no item in any of these categories")
    ] = NO_VALUES,
    seen: Annotated[
        Seen | None,
        Query(
            description="what of the user's history is not shown again (default: the "
            "seen setting); negative feedback never is"
        ),
    ] = None,
) -> Filters:
    """The request's business rules (serving.filters), or a 422 naming the bad one."""
    try:
        return Filters.parse(exclude, category, exclude_category, seen)
    except FilterError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None


Rules = Annotated[Filters, Depends(request_filters)]
UserId = Annotated[
    str,
    Path(min_length=1, max_length=MAX_ID_LEN, pattern=ID_PATTERN, description="the user's id"),
]
ItemId = Annotated[
    str, Path(min_length=1, max_length=MAX_ID_LEN, pattern=ID_PATTERN, description="an item id")
]
EventsBody = Annotated[Any, Body(description="one click event or a list of them")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=128,
        pattern="^[!-~]+$",
        description="send the batch at most once per key within the window (visible ASCII)",
    ),
]


def _title(index: ItemIndex | None, item_id: str | None) -> str | None:
    if index is None or item_id is None:
        return None
    return index.title(item_id)


def _item(index: ItemIndex | None, s: Scored) -> dict[str, Any]:
    """One ``RecommendedItem`` as plain data (see _recommendations_json)."""
    because = s.reason.because_of
    return {
        "item_id": s.item_id,
        "title": _title(index, s.item_id),
        "score": s.score,
        "reason": {
            "kind": s.reason.kind,
            "because_of": because,
            "because_of_title": _title(index, because),
        },
    }


def _recommendations_json(
    user_id: str, k: int, ranked: list[Scored], sources: Sequence[str], index: ItemIndex | None
) -> Response:
    """A ``RecommendationsOut`` body written by orjson from plain data.

    Building the pydantic models and dumping them cost ~0.15 ms of the ~1.2 ms a
    recommendation took (py-spy, CPU per request); tests validate every body
    against the model, so the two cannot drift.
    """
    body = {
        "user_id": user_id,
        "k": k,
        "items": [_item(index, s) for s in ranked],
        "fallback": not any(s.personalised for s in ranked),
        "sources": list(sources),
        "index_version": None if index is None else index.version,
    }
    return Response(orjson.dumps(body), media_type="application/json")


async def fetch_user(
    state: AppState, user_id: str, size: int, index: ItemIndex | None
) -> UserView | UserState:
    """A recommendation's reads, shared with the benchmark baseline so both make
    exactly the same calls: the user's history from Redis and item arrays from
    the worker's cache (rows it lacks in one more round trip), or, with the
    cache off, everything in one Lua script. asyncio.timeout bounds it in the
    request's own task (wait_for would start a second task per call)."""
    spec = state.settings.read_spec(size)
    async with asyncio.timeout(state.settings.request_timeout_s):
        if state.cached is not None:
            return await state.cached.view(user_id, spec, index)
        return await state.store.user_state(user_id, spec)


def category_rule(filters: Filters, index: ItemIndex | None) -> CategoryRule | None:
    """The request's category rule over the index's catalogue (none loaded: no
    item is in any category)."""
    if not filters.by_category:
        return None
    if index is None:
        return filters.rule(_no_categories, None)
    return filters.rule(index.catalogue.categories, index.version)


def _no_categories(item: str) -> frozenset[str]:
    return frozenset()


def rank(
    state: AppState,
    user: UserView | UserState,
    size: int,
    index: ItemIndex | None,
    filters: Filters = NO_FILTERS,
) -> list[Scored]:
    """The blend: the vectorised one on the cache's arrays, the reference otherwise
    (the two rank alike: tests/test_scoring.py), under the request's rules; then
    the index version's learned ranker re-orders its pool, when it has one and
    the setting allows (serving.ranker)."""
    settings = state.settings
    cfg = settings.blend
    exclude = user.seen(filters.seen or settings.seen, settings.session_gap_ms)
    exclude.update(filters.exclude)
    rule = category_rule(filters, index)
    ranker = ranker_of(index) if index is not None and settings.ranker else None
    # The linear model's rows and the items' first clicks: read by the ranker only.
    linear = (
        index.linear_rows(user.sources, cfg.candidates_per_item)
        if index is not None and ranker is not None
        else {}
    )
    first_seen = index.first_seen if index is not None and ranker is not None else {}
    if isinstance(user, UserView):
        assert state.cached is not None
        items = state.cached.items
        if ranker is None:
            return fast_blend(user.candidates, exclude, size, cfg, items.vocab, rule)
        arrays, vocab = user.candidates, items.vocab
        first = fast_blend(arrays, exclude, ranker.size.pool, cfg, vocab, rule)
        # What the extras read: the sources, the trending head and the linear rows.
        trend = arrays.trending  # its pairs and norms are made once per trending head
        head = Candidates(user.sources, {}, {}, trend.pairs, linear=linear)
        pool = extend_pool(first, head, exclude, cfg, ranker.size, _allows(rule), trend.norms)
        moment = Moment.of(user.clock, user.history, settings.session_gap_ms)
        x = fast_features(arrays, pool, moment, cfg, vocab, items.popularity, linear, first_seen)
        return ranker.order(pool, x, size)
    # Ready-made lists from the index's cache (warmed with the trending head
    # when the index loads); a miss is one batched FAISS search.
    emb = (
        index.similar_many(user.sources, cfg.candidates_per_item)
        if index is not None and user.sources
        else {}
    )
    content = (
        index.content.similar_many(user.sources, cfg.candidates_per_item, cold_only=True)
        if index is not None and cfg.w_content > 0 and user.sources
        else {}
    )
    cands = Candidates(user.sources, user.co, emb, user.trending, user.pop, content)
    if ranker is not None:
        cands = replace(cands, linear=linear, first_seen=first_seen)
        moment = Moment.of(user.clock, user.history, settings.session_gap_ms)
        return ranker.rank(cands, exclude, size, cfg, moment, _allows(rule))
    return blend(cands, exclude, size, cfg, _allows(rule))


def _allows(rule: CategoryRule | None) -> Callable[[str], bool] | None:
    return rule.allows if rule is not None else None


@router.get(
    "/recommendations/{user_id}",
    response_model=RecommendationsOut,
    responses=ERROR_RESPONSES,
    summary="What next for this user",
)
async def recommendations(user_id: UserId, state: State, size: Size, rules: Rules) -> Response:
    return await recommend(state, user_id, size, rules)


async def recommend(
    state: AppState, user_id: str, size: int, filters: Filters = NO_FILTERS
) -> Response:
    """The recommendation for a validated request (the route's body, and serving.fastpath's)."""
    index = state.index  # read once: a concurrent swap must not change it mid-request
    user = await fetch_user(state, user_id, size, index)
    ranked = rank(state, user, size, index, filters)
    state.metrics.recommended(len(ranked), any(s.personalised for s in ranked))
    return _recommendations_json(user_id, size, ranked, user.sources, index)


@bench_router.get(
    "/bench/fetch/{user_id}",
    summary="Benchmark baseline: the recommendation's Redis round trip, no scoring",
    include_in_schema=False,
)
async def bench_fetch(user_id: UserId, state: State, size: Size) -> Response:
    return await fetch_only(state, user_id, size)


async def fetch_only(
    state: AppState, user_id: str, size: int, filters: Filters = NO_FILTERS
) -> Response:
    """The recommendation's reads without scoring (the benchmark's baseline).
    ``filters`` only match the fast path's handler shape: the reads are the same."""
    user = await fetch_user(state, user_id, size, state.index)
    return Response(f'{{"sources":{len(user.sources)}}}', media_type="application/json")


@router.get(
    "/items/{item_id}/similar",
    response_model=SimilarOut,
    responses={
        404: {
            "model": ErrorOut,
            "description": "neither co-clicked, nor in the index, nor in its catalogue",
        },
        **ERROR_RESPONSES,
    },
    summary="Items like this one: co-clicked with it, close to it in the embedding, "
    "or alike in categories and tags when nobody has clicked it yet",
)
async def similar(item_id: ItemId, state: State, size: Size, rules: Rules) -> SimilarOut:
    """The blend with the item as the one source: its co-occurrence row (fresh from
    Redis, so an item the index has never seen answers as soon as anyone clicked
    it with something) and its embedding neighbours, each item with its reason."""
    index = state.index
    cfg = state.settings.blend
    async with asyncio.timeout(state.settings.request_timeout_s):
        rows, pop = await state.store.rows([item_id], cfg.candidates_per_item)
    members, counts = rows[0]
    co = list(zip(members, counts.tolist(), strict=True))
    in_index = index is not None and item_id in index
    content: dict[str, list[tuple[str, float]]] = {}
    if not co and not in_index:
        if index is None:
            raise ApiError(
                503,
                "index_unavailable",
                "no embedding index is loaded, and the item has no co-clicks",
            )
        if item_id not in index.catalogue:
            raise ApiError(
                404,
                "item_not_found",
                f"item {item_id!r} is neither co-clicked, nor in the index, nor in its catalogue",
            )
        # Nobody has clicked it yet: items alike in categories and tags stand in.
        content = {item_id: index.content.similar(item_id, cfg.candidates_per_item)}
        cfg = cfg.model_copy(update={"w_content": 1.0})
    elif index is not None and cfg.w_content > 0:
        near = index.content.similar(item_id, cfg.candidates_per_item, cold_only=True)
        content = {item_id: near}
    emb = {item_id: index.similar(item_id, cfg.candidates_per_item)} if index and in_index else {}
    rule = category_rule(rules, index)
    ranked = blend(
        Candidates([item_id], {item_id: co}, emb, [], pop, content),
        {item_id, *rules.exclude},
        size,
        cfg,
        rule.allows if rule is not None else None,
    )
    return SimilarOut(
        item_id=item_id,
        title=_title(index, item_id),
        items=[
            SimilarItem(
                item_id=s.item_id,
                title=_title(index, s.item_id),
                score=s.score,
                reason=cast(SimilarReason, s.reason.kind),
            )
            for s in ranked
        ],
        index_version=None if index is None else index.version,
    )


@router.get(
    "/items",
    response_model=SearchOut,
    responses=ERROR_RESPONSES,
    summary="Search the catalogue's titles (case and accents ignored, words as prefixes)",
)
async def search_items(
    state: State,
    q: Annotated[
        str,
        Query(
            min_length=1,
            max_length=MAX_QUERY_LEN,
            description="words to find in titles, in any order, each a prefix of a title word",
        ),
    ],
    limit: Annotated[int, Query(ge=1, le=MAX_SEARCH_LIMIT)] = 10,
) -> SearchOut:
    index = state.index
    if index is None:
        raise ApiError(
            503, "index_unavailable", "no embedding index, and so no catalogue, is loaded"
        )
    held = state.search
    if held is None or held[0] != index.version:
        # Once per index version; ~10 ms for ml-latest-small, off the event loop.
        held = state.search = (index.version, await asyncio.to_thread(TitleSearch, index.titles))
    hits = held[1].search(q, limit)
    return SearchOut(
        query=q,
        items=[CatalogueItem(item_id=i, title=t) for i, t in hits],
        index_version=index.version,
    )


@router.get(
    "/items/{item_id}",
    response_model=ItemOut,
    responses={
        404: {"model": ErrorOut, "description": "not in the index, never clicked"},
        **ERROR_RESPONSES,
    },
    summary="One item: its title and how often it was clicked",
)
async def item(item_id: ItemId, state: State) -> ItemOut:
    index = state.index
    async with asyncio.timeout(state.settings.request_timeout_s):
        pop = (await state.store.popularity_of([item_id])).get(item_id)
    in_index = index is not None and item_id in index
    if not in_index and pop is None:
        raise ApiError(
            404, "item_not_found", f"item {item_id!r} is neither in the index nor clicked"
        )
    return ItemOut(item_id=item_id, title=_title(index, item_id), in_index=in_index, popularity=pop)


@router.get("/live", response_model=LiveOut, summary="Throughput, consumer lag and latency now")
async def live(state: State) -> LiveOut:
    async with asyncio.timeout(state.settings.request_timeout_s):
        applied = await state.store.applied_events()
    lag = None if state.lag is None else await state.lag.read()
    recent = state.metrics.recent
    p50 = p99 = None
    if recent:
        p50, p99 = (float(v) * 1000 for v in np.percentile(np.fromiter(recent, float), [50, 99]))
    return LiveOut(
        events_applied=applied,
        events_per_s=state.throughput.rate(applied),
        lag=lag,
        p50_ms=p50,
        p99_ms=p99,
    )


@router.get("/", include_in_schema=False)
async def page() -> HTMLResponse:
    """The page a person can try: search, similar items, a user's session and
    recommendations, clicks that change them, and a live panel (serving/page.html)."""
    return HTMLResponse(PAGE)


@router.get(
    "/health",
    response_model=HealthOut,
    responses={503: {"model": HealthOut, "description": "Redis unreachable"}},
    summary="Liveness of Redis and the embedding index",
)
async def health(state: State, response: Response) -> HealthOut:
    try:
        redis_ok = await asyncio.wait_for(state.store.ping(), state.settings.request_timeout_s)
    except Exception:
        # Any failure to answer PING within the bound means "unreachable";
        # health must report, never raise.
        redis_ok = False
    index = state.index
    status: Literal["ok", "degraded", "down"]
    if not redis_ok:
        status = "down"
        response.status_code = 503
        response.headers["Retry-After"] = "1"
    else:
        status = "ok" if index is not None else "degraded"
    return HealthOut(
        status=status,
        redis="ok" if redis_ok else "unreachable",
        index_version=None if index is None else index.version,
        index_items=0 if index is None else len(index),
    )


@router.head("/health", include_in_schema=False)
async def health_head(state: State, response: Response) -> Response:
    """HEAD /health: the GET's status and headers (the server sends no body)."""
    body = await health(state, response)
    return Response(
        body.model_dump_json(),
        status_code=response.status_code or 200,
        headers={k: v for k, v in response.headers.items() if k.lower() == "retry-after"},
        media_type="application/json",
    )


@router.post(
    "/events",
    status_code=202,
    response_model=AcceptedOut,
    dependencies=[Depends(require_write_key)],
    responses={
        **ERROR_RESPONSES,  # first: this route's own 400 describes it better
        400: {"model": ErrorOut, "description": "the body is not JSON (or not UTF-8)"},
        408: {"model": ErrorOut, "description": "the body did not arrive within the timeout"},
        413: {"model": ErrorOut, "description": "the body is over the size limit"},
        401: {"model": ErrorOut, "description": "API keys are configured and none was given"},
        409: {
            "model": ErrorOut,
            "description": "this Idempotency-Key is still sending, or was used for another batch",
        },
    },
    summary="Publish click events to the stream",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": EVENTS_BODY_SCHEMA}},
        }
    },
)
async def post_events(
    body: EventsBody, state: State, idempotency_key: IdempotencyKey = None
) -> AcceptedOut:
    raw = body if isinstance(body, list) else [body]
    max_events = state.settings.max_events_per_request
    if not raw:
        raise ApiError(422, "invalid_event", "the list of events is empty")
    if len(raw) > max_events:
        raise ApiError(
            422,
            "too_many_events",
            f"{len(raw)} events in one request; the limit is {max_events}",
        )
    # Validate and encode all before sending any: a batch is accepted whole or
    # not at all (a lone surrogate in event 2 used to fail after event 1 was sent).
    messages: list[tuple[bytes, bytes]] = []
    latest = future_limit_ms(state.settings.max_future_ms)
    for i, obj in enumerate(raw):
        try:
            event = validate(obj, latest_ms=latest)
            messages.append((event.user_id.encode(), event.to_wire()))
        except InvalidEvent as exc:
            raise ApiError(422, "invalid_event", f"event {i}: {exc}") from None
    if idempotency_key is None:
        accepted = await state.events.send(messages)
    else:
        claim = Claim(
            state.redis,
            state.settings.redis.keys.idempotency(idempotency_key),
            fingerprint(messages),
            state.settings.idempotency_window_s,
        )
        held = await claim.take()
        if held is not None:
            return _replay(held, claim.batch)
        try:
            accepted = await state.events.send(messages)
        except BaseException:
            await claim.drop()  # not sent: the client's retry must send
            raise
        await claim.done(accepted)
    state.metrics.events(accepted)
    return AcceptedOut(accepted=accepted)


def _replay(held: str, batch: str) -> AcceptedOut:
    """The answer to a repeat of a claimed Idempotency-Key."""
    state, _, rest = held.partition(":")
    held_batch, _, accepted = rest.partition(":")
    if held_batch != batch:
        raise ApiError(
            409, "idempotency_key_reused", "this Idempotency-Key was used for another batch"
        )
    if state != "done":
        raise ApiError(409, "in_progress", "a request with this Idempotency-Key is still sending")
    return AcceptedOut(accepted=int(accepted), replayed=True)


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics (every worker's)",
    responses={200: {"content": {EXPOSITION_TYPE: {}}, "description": "the text format"}},
)
async def metrics(state: State) -> Response:
    return Response(state.metrics.exposition(), media_type=EXPOSITION_TYPE)


@router.get("/stats", response_model=MetricsOut, summary="This worker's counters since start")
async def stats(state: State) -> MetricsOut:
    items = None
    if state.cached is not None:
        cache = state.cached.items
        staleness = cache.staleness_s()
        items = ItemCacheOut(
            **asdict(cache.stats),
            rows=cache.rows_held,
            staleness_s=None if staleness is None else round(staleness, 3),
        )
    return MetricsOut(**state.metrics.snapshot(), item_cache=items)
