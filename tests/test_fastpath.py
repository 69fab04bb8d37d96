"""serving.fastpath answers GET /recommendations exactly as the FastAPI route does."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from test_serving_api import make_index, seed, settings_for

from core.settings import RedisSettings
from offline.index import publish
from serving.app import create_app

# Requests the fast path answers, and requests it must hand to FastAPI unchanged.
PATHS = [
    "/recommendations/u1",
    "/recommendations/u1?k=3",
    "/recommendations/u1?k=100",
    "/recommendations/nobody?k=1",
    "/recommendations/%C3%A9l%C3%A8ve?k=2",  # a non-ASCII id
    "/recommendations/a%20b",  # a space
    "/recommendations/" + "x" * 128,
    "/recommendations/" + "x" * 129,  # too long: 422 from the route
    "/recommendations/u1?k=0",
    "/recommendations/u1?k=101",  # above max_k
    "/recommendations/u1?k=010",  # not canonical: the route parses it
    "/recommendations/u1?k=abc",
    "/recommendations/u1?k=3&extra=1",
    "/recommendations/u1?k=3&k=4",
    "/recommendations/u1?k=3&exclude=4",  # rules (serving/filters.py): answered here
    "/recommendations/u1?seen=none&exclude=4&exclude=5",
    "/recommendations/u1?category=x&exclude_category=y",
    "/recommendations/u1?seen=bad",  # ... and their errors, by the route
    "/recommendations/u1?exclude=",
    "/recommendations/",  # no id: 404
    "/recommendations/a%2Fb",  # an encoded slash
    "/recommendations/u1/more",
    "/bench/fetch/u1?k=3",  # the benchmark's baseline, dispatched the same way
    "/bench/fetch/u1?k=0",
]


def answers(settings: object, fast: bool) -> list[tuple[int, str, str]]:
    app = create_app(settings.model_copy(update={"fast_path": fast}))  # type: ignore[attr-defined]
    with TestClient(app) as c:
        out = []
        for path in PATHS:
            resp = c.get(path)
            out.append((resp.status_code, resp.headers.get("content-type", ""), resp.text))
        metrics = c.get("/stats").json()
    out.append((0, "requests", str(sorted(metrics["requests"].items()))))
    out.append((0, "counters", str([metrics[k] for k in ("recommendations", "fallbacks")])))
    return out


@pytest.mark.parametrize("staleness", [1.0, 0.0])
def test_fast_path_answers_like_the_route(
    redis_client: redis.Redis, redis_settings: RedisSettings, tmp_path: Path, staleness: float
) -> None:
    seed(redis_client, redis_settings)
    publish(make_index(), tmp_path)
    settings = settings_for(redis_settings, tmp_path).model_copy(
        update={"item_staleness_s": staleness, "bench_routes": True}
    )
    fast, slow = answers(settings, True), answers(settings, False)
    assert fast == slow
    assert sum(status == 200 for status, _, _ in fast) >= 7  # both answered real requests


def test_fast_path_maps_a_redis_outage_to_the_same_503(
    redis_settings: RedisSettings, tmp_path: Path
) -> None:
    dead = RedisSettings(url="redis://127.0.0.1:1/0", namespace=redis_settings.namespace)
    settings = settings_for(dead, tmp_path).model_copy(update={"request_timeout_s": 0.2})
    for fast in (True, False):
        with TestClient(create_app(settings.model_copy(update={"fast_path": fast}))) as c:
            resp = c.get("/recommendations/u1?k=3")
            assert resp.status_code == 503, fast
            assert resp.headers["retry-after"] == "1"
            assert resp.json()["error"]["code"] == "unavailable"
