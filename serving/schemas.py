"""Response bodies as pydantic models, so /docs documents exactly what is returned."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from core.events import ID_PATTERN, MAX_ID_LEN, MAX_TS_MS, MAX_TYPE_LEN, MAX_WEIGHT, MIN_TS_MS


class ErrorDetail(BaseModel):
    code: str = Field(examples=["invalid_request"])
    message: str


class ErrorOut(BaseModel):
    error: ErrorDetail


class ReasonOut(BaseModel):
    kind: Literal["co_clicked", "similar", "same_category", "trending"] = Field(
        description="the largest term: co_clicked (clicked in the same sessions as "
        "because_of), similar (close to it in the embedding), same_category (alike in "
        "categories and tags, for an item too new for the others), trending"
    )
    because_of: str | None = Field(description="the history item that led here, if any")
    because_of_title: str | None = None


class RecommendedItem(BaseModel):
    item_id: str
    title: str | None = None
    score: float
    reason: ReasonOut


class RecommendationsOut(BaseModel):
    user_id: str
    k: int
    items: list[RecommendedItem]
    fallback: bool = Field(
        description="true when no personalised candidate made the list (cold or unknown user)"
    )
    sources: list[str] = Field(description="recent history items the list was built from")
    index_version: str | None = Field(description="embedding index used; null if none loaded")


SimilarReason = Literal["co_clicked", "similar", "same_category"]


class SimilarItem(BaseModel):
    item_id: str
    title: str | None = None
    score: float = Field(
        description="the blend's score with the item as the one source: its co-occurrence "
        "row normalised by its largest count (weight w_co), plus the embedding cosine "
        "(weight w_emb); for an item with neither, the content cosine of its "
        "categories and tags"
    )
    reason: SimilarReason = Field(
        description="the larger term: co_clicked (clicked in the same sessions), "
        "similar (close in the embedding) or same_category (alike in categories and "
        "tags: the item has no clicks and is not in the index yet)"
    )


class SimilarOut(BaseModel):
    item_id: str
    title: str | None = None
    items: list[SimilarItem]
    index_version: str | None = Field(description="embedding index used; null if none loaded")


class CatalogueItem(BaseModel):
    item_id: str
    title: str | None = None


class SearchOut(BaseModel):
    query: str
    items: list[CatalogueItem] = Field(description="best first")
    index_version: str | None = Field(description="the index whose catalogue was searched")


class ItemOut(CatalogueItem):
    in_index: bool = Field(description="the embedding index has this item")
    popularity: float | None = Field(description="events seen for it (null: none counted)")


class LiveOut(BaseModel):
    events_applied: int = Field(description="events the consumer has applied (Redis)")
    events_per_s: float | None = Field(
        description="applied per second since this worker's previous answer (null: first)"
    )
    lag: int | None = Field(
        description="events on the topic past what the consumer group committed (null: "
        "the broker did not answer)"
    )
    p50_ms: float | None = Field(description="this worker's last recommendation latencies")
    p99_ms: float | None = None


class HealthOut(BaseModel):
    status: Literal["ok", "degraded", "down"] = Field(
        description="ok; degraded = no embedding index; down = Redis unreachable (503)"
    )
    redis: Literal["ok", "unreachable"]
    index_version: str | None
    index_items: int


class AcceptedOut(BaseModel):
    accepted: int
    replayed: bool = Field(
        default=False,
        description="true: this Idempotency-Key's batch was accepted before; nothing was sent now",
    )


class ItemCacheOut(BaseModel):
    hits: int = Field(description="source rows a request found in the worker's item cache")
    misses: int = Field(description="source rows read from Redis in the request")
    refreshes: int
    refresh_failures: int
    rows_refreshed: int
    resets: int
    evictions: int
    rows: int = Field(description="rows held now")
    staleness_s: float | None = Field(description="seconds since the last good refresh")


class MetricsOut(BaseModel):
    pid: int = Field(description="the worker process that answered; each counts on its own")
    requests: dict[str, int]
    errors: dict[str, int]
    recommendations: int
    fallbacks: int
    items_served: int
    events_accepted: int
    index_swaps: int
    index_load_failures: int
    item_cache: ItemCacheOut | None = Field(
        default=None, description="this worker's item cache (null: item_staleness_s = 0)"
    )


# The event body is documented here but parsed by core.events.validate, the one
# implementation of the wire contract, so its reasons reach the client verbatim.
# Every bound here is core.events' own constant, so the schema says what
# validate() enforces (serving.app writes the configured batch limit in).
_ID_SCHEMA: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_ID_LEN,
    "pattern": ID_PATTERN,
    "description": "not only blanks, no '/', no U+FFFD (the one id rule, core/events.py)",
}
CLICK_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["user_id", "item_id", "ts"],
    "properties": {
        "user_id": _ID_SCHEMA,
        "item_id": _ID_SCHEMA,
        "ts": {
            "type": "integer",
            "minimum": MIN_TS_MS,
            "maximum": MAX_TS_MS,
            "description": "epoch milliseconds, UTC (1.6e12, a number with no fraction, is one)",
        },
        "type": {"type": "string", "minLength": 1, "maxLength": MAX_TYPE_LEN, "default": "click"},
        # Optional fields may also be null, meaning absent (as the API takes them).
        "weight": {"type": ["number", "null"], "minimum": -MAX_WEIGHT, "maximum": MAX_WEIGHT},
        "session_id": {"anyOf": [_ID_SCHEMA, {"type": "null"}]},
    },
}
EVENTS_BODY_SCHEMA: dict[str, Any] = {
    "oneOf": [
        CLICK_EVENT_SCHEMA,
        {"type": "array", "items": CLICK_EVENT_SCHEMA, "minItems": 1},
    ]
}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    # Answered by the HTTP protocol itself (serving.protocol), before any route.
    400: {"model": ErrorOut, "description": "not a parseable HTTP request"},
    431: {"model": ErrorOut, "description": "request head over the size bound"},
    422: {"model": ErrorOut, "description": "invalid request"},
    503: {"model": ErrorOut, "description": "a backing service is unavailable; see Retry-After"},
    500: {"model": ErrorOut, "description": "internal error"},
}
