"""The HTTP API end to end: real Redis, a real published index, the lifespan running."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient

from core.settings import KafkaSettings, RedisSettings
from offline.index import ItemIndex, publish
from serving.app import create_app
from serving.blend import BlendConfig
from serving.errors import GuardMiddleware, install_handlers
from serving.schemas import RecommendationsOut
from serving.settings import ServingSettings
from streamrec.local.stack import free_port

# Two clusters on the unit circle: 1-3 near the x axis, 4-6 near the y axis.
VECTORS = np.array(
    [[1.0, 0.0], [1.0, 0.1], [1.0, 0.3], [0.0, 1.0], [0.1, 1.0], [0.3, 1.0]], dtype=np.float32
)
IDS = ["1", "2", "3", "4", "5", "6"]
TITLES = {i: f"Movie {i}" for i in IDS}


def cosine(a: str, b: str) -> float:
    va, vb = VECTORS[IDS.index(a)], VECTORS[IDS.index(b)]
    return float(va @ vb / np.linalg.norm(va) / np.linalg.norm(vb))


def make_index(vectors: np.ndarray = VECTORS) -> ItemIndex:
    return ItemIndex.from_vectors(IDS, vectors, titles=TITLES)


def entry(ts: int, item: str) -> str:
    return json.dumps([ts, item, None])


def settings_for(
    redis_settings: RedisSettings, artifacts: Path, kafka: KafkaSettings | None = None
) -> ServingSettings:
    return ServingSettings(
        redis=redis_settings,
        kafka=kafka or KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}"),
        artifacts_dir=artifacts,
        index_poll_s=0.05,
    )


def seed(client: redis.Redis, rs: RedisSettings) -> None:
    keys = rs.keys
    # u1 clicked 2 and then 1 (newest first in the list).
    client.lpush(keys.hist("u1"), entry(1_000, "2"), entry(2_000, "1"))
    client.hset(keys.co("1"), mapping={"4": 50, "5": 2})
    client.zadd(keys.trend, {"6": 9.0, "3": 7.0, "5": 3.0, "1": 20.0})
    client.hset(keys.meta, mapping={"trend_ref": 0, "clock": 2_000, "half_life_ms": 3_600_000})


@pytest.fixture
def published(tmp_path: Path) -> tuple[Path, ItemIndex]:
    index = make_index()
    publish(index, tmp_path)
    return tmp_path, index


@pytest.fixture
def client(
    redis_client: redis.Redis,
    redis_settings: RedisSettings,
    published: tuple[Path, ItemIndex],
) -> Iterator[TestClient]:
    seed(redis_client, redis_settings)
    with TestClient(create_app(settings_for(redis_settings, published[0]))) as c:
        yield c


def assert_error(resp: Any, status: int, code: str) -> dict[str, str]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    return dict(body["error"])


def test_cold_user_gets_trending_with_fallback(client: TestClient) -> None:
    resp = client.get("/recommendations/nobody", params={"k": 3})
    assert resp.status_code == 200
    body = resp.json()
    assert body["fallback"] is True
    assert body["sources"] == []
    assert [i["item_id"] for i in body["items"]] == ["1", "6", "3"]
    assert all(
        i["reason"] == {"kind": "trending", "because_of": None, "because_of_title": None}
        for i in body["items"]
    )
    assert body["items"][0]["title"] == "Movie 1"


def test_known_user_gets_co_clicked_item_first_and_no_history(
    client: TestClient, published: tuple[Path, ItemIndex]
) -> None:
    body = client.get("/recommendations/u1", params={"k": 4}).json()
    assert body["user_id"] == "u1" and body["k"] == 4
    assert body["fallback"] is False
    assert body["sources"] == ["1", "2"]
    assert body["index_version"] == published[1].version
    items = body["items"]
    assert items[0]["item_id"] == "4"
    assert items[0]["title"] == "Movie 4"
    assert items[0]["reason"] == {
        "kind": "co_clicked",
        "because_of": "1",
        "because_of_title": "Movie 1",
    }
    ids = [i["item_id"] for i in items]
    assert "1" not in ids and "2" not in ids  # history never comes back
    # Item 4: co 50/50 from the newest source, plus the (small) embedding terms;
    # no trending score, no popularity (so not damped).
    cfg = BlendConfig()
    emb = cosine("1", "4") + cfg.recency_decay * cosine("2", "4")
    expected_4 = cfg.w_co * 1.0 + cfg.w_emb * emb
    assert items[0]["score"] == pytest.approx(expected_4, rel=1e-5)
    # Item 3 is reached only through embeddings: its reason says so.
    three = next(i for i in items if i["item_id"] == "3")
    assert three["reason"]["kind"] == "similar" and three["reason"]["because_of"] == "1"


def test_recommendation_bodies_follow_the_documented_schema(client: TestClient) -> None:
    """The route writes its body with orjson; it must still be the model /docs shows."""
    for user, k in [("u1", 4), ("u1", 1), ("nobody", 3), ("u1", 100)]:
        resp = client.get(f"/recommendations/{user}", params={"k": k})
        assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
        body = RecommendationsOut.model_validate_json(resp.text, strict=True)
        assert body.model_dump() == resp.json()
        assert body.k == k and len(body.items) <= k


@pytest.mark.parametrize("k", ["0", "101", "x", "-1"])
def test_k_out_of_bounds_is_a_json_422(client: TestClient, k: str) -> None:
    err = assert_error(client.get("/recommendations/u1", params={"k": k}), 422, "invalid_request")
    assert "k" in err["message"]


def test_similar_known_answer(client: TestClient, published: tuple[Path, ItemIndex]) -> None:
    # Item 2 has no co-occurrence row: its embedding neighbours, by cosine.
    body = client.get("/items/2/similar", params={"k": 3}).json()
    assert body["item_id"] == "2" and body["title"] == "Movie 2"
    assert body["index_version"] == published[1].version
    assert [i["item_id"] for i in body["items"]] == ["1", "3", "6"]
    w_emb = BlendConfig().w_emb
    assert [i["score"] for i in body["items"]] == pytest.approx(
        [w_emb * cosine("2", "1"), w_emb * cosine("2", "3"), w_emb * cosine("2", "6")], rel=1e-5
    )
    assert {i["reason"] for i in body["items"]} == {"similar"}
    assert body["items"][0]["title"] == "Movie 1"


def test_similar_blends_co_clicks_and_embedding_with_reasons(client: TestClient) -> None:
    # Item 1: co row {4: 50, 5: 2} and its embedding neighbours 2, 3, 6, ...
    items = client.get("/items/1/similar", params={"k": 4}).json()["items"]
    cfg = BlendConfig()
    assert [(i["item_id"], i["reason"]) for i in items] == [
        ("4", "co_clicked"),
        ("2", "similar"),
        ("3", "similar"),
        ("6", "similar"),
    ]
    assert items[0]["score"] == pytest.approx(cfg.w_co * 1.0)
    assert items[1]["score"] == pytest.approx(cfg.w_emb * cosine("1", "2"), rel=1e-5)


def test_similar_answers_for_an_item_the_index_has_never_seen(
    client: TestClient, redis_client: redis.Redis, redis_settings: RedisSettings
) -> None:
    redis_client.hset(redis_settings.keys.co("new-release"), mapping={"1": 3, "2": 1})
    body = client.get("/items/new-release/similar", params={"k": 5}).json()
    assert body["title"] is None
    assert [(i["item_id"], i["reason"]) for i in body["items"]] == [
        ("1", "co_clicked"),
        ("2", "co_clicked"),
    ]
    assert [i["score"] for i in body["items"]] == pytest.approx([1.0, 1 / 3])


def test_similar_unknown_item_is_404(client: TestClient) -> None:
    assert_error(client.get("/items/nope/similar"), 404, "item_not_found")
    assert_error(client.get("/no/such/route"), 404, "not_found")


def test_health_metrics_and_docs(client: TestClient, published: tuple[Path, ItemIndex]) -> None:
    resp = client.get("/health")
    assert resp.status_code == 200
    assert resp.json() == {
        "status": "ok",
        "redis": "ok",
        "index_version": published[1].version,
        "index_items": 6,
    }
    client.get("/recommendations/nobody")
    client.get("/recommendations/u1")
    client.get("/recommendations/u1", params={"k": 0})
    metrics = client.get("/stats").json()
    assert metrics["requests"]["GET /recommendations/{user_id}"] == 3
    assert metrics["recommendations"] == 2
    assert metrics["fallbacks"] == 1
    assert metrics["errors"] == {"invalid_request": 1}
    schema = client.get("/openapi.json").json()
    assert "RecommendationsOut" in schema["components"]["schemas"]
    assert client.get("/docs").status_code == 200


def test_without_index_health_is_degraded_and_recommendations_still_served(
    redis_client: redis.Redis, redis_settings: RedisSettings, tmp_path: Path
) -> None:
    seed(redis_client, redis_settings)
    with TestClient(create_app(settings_for(redis_settings, tmp_path / "empty"))) as c:
        health = c.get("/health")
        assert health.status_code == 200
        assert health.json() == {
            "status": "degraded",
            "redis": "ok",
            "index_version": None,
            "index_items": 0,
        }
        body = c.get("/recommendations/u1", params={"k": 3}).json()
        assert body["index_version"] is None and body["fallback"] is False
        # Co-occurrence alone: 4 (50/50) then 5 (2/50); trending fills the rest.
        assert [i["item_id"] for i in body["items"]] == ["4", "5", "6"]
        assert [i["reason"]["kind"] for i in body["items"]] == [
            "co_clicked",
            "co_clicked",
            "trending",
        ]
        assert body["items"][0]["title"] is None
        # Co-clicks still answer /similar; an item with none needs the index.
        co = c.get("/items/1/similar").json()
        assert [i["item_id"] for i in co["items"]] == ["4", "5"] and co["index_version"] is None
        assert_error(c.get("/items/3/similar"), 503, "index_unavailable")


def test_hot_swap_under_load_never_fails_a_request(
    redis_client: redis.Redis, redis_settings: RedisSettings, published: tuple[Path, ItemIndex]
) -> None:
    artifacts, old = published
    seed(redis_client, redis_settings)
    # The new index swaps the clusters' roles: 1 now sits next to 4.
    new = make_index(VECTORS[[0, 3, 4, 1, 2, 5]])
    assert new.version != old.version
    with TestClient(create_app(settings_for(redis_settings, artifacts))) as c:
        # Item 2 has no co-clicks: its neighbour is the embedding's (1, then 3).
        assert c.get("/items/2/similar", params={"k": 1}).json()["items"][0]["item_id"] == "1"
        versions: set[str] = set()
        for _ in range(20):
            resp = c.get("/recommendations/u1")
            assert resp.status_code == 200
            versions.add(resp.json()["index_version"])
        stop = threading.Event()

        def hammer() -> list[int]:
            # Requests from other threads keep running across the swap.
            codes = []
            while not stop.is_set():
                codes.append(c.get("/recommendations/u1").status_code)
            return codes

        with ThreadPoolExecutor(max_workers=3) as pool:
            workers = [pool.submit(hammer) for _ in range(3)]
            publish(new, artifacts)
            deadline = time.monotonic() + 10.0
            swapped = False
            while time.monotonic() < deadline and not swapped:
                rec = c.get("/recommendations/u1")
                sim = c.get("/items/2/similar", params={"k": 1})
                assert rec.status_code == 200 and sim.status_code == 200
                versions.add(rec.json()["index_version"])
                swapped = sim.json()["index_version"] == new.version
            stop.set()
            codes = [code for w in workers for code in w.result()]
        assert swapped, "the new index was not picked up within 10 s"
        assert codes and set(codes) == {200}
        assert c.get("/items/2/similar", params={"k": 1}).json()["items"][0]["item_id"] == "3"
        assert c.get("/health").json()["index_version"] == new.version
        assert c.get("/stats").json()["index_swaps"] == 1
        assert versions <= {old.version, new.version}


def test_redis_down_is_503_with_retry_after_never_500(tmp_path: Path) -> None:
    dead = RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0", namespace="down")
    with TestClient(create_app(settings_for(dead, tmp_path))) as c:
        started = time.monotonic()
        resp = c.get("/recommendations/u1")
        assert_error(resp, 503, "unavailable")
        assert resp.headers["Retry-After"] == "1"
        health = c.get("/health")
        assert health.status_code == 503
        assert health.json()["redis"] == "unreachable"
        assert health.json()["status"] == "down"
        # A refused connection must fail fast, not wait out a timeout.
        assert time.monotonic() - started < 2.0
        assert c.get("/stats").json()["errors"] == {"unavailable": 1}


def wait_until_blocked(url: str, bound_s: float = 5.0) -> None:
    """Return once a PING gets no answer within 20 ms, i.e. the server is busy."""
    probe = redis.Redis.from_url(url, socket_timeout=0.02)
    deadline = time.monotonic() + bound_s
    try:
        while time.monotonic() < deadline:
            try:
                probe.ping()
            except redis.TimeoutError:
                return
        raise AssertionError("redis never became busy")
    finally:
        probe.close()


def test_slow_redis_is_a_503_within_the_request_timeout(
    redis_client: redis.Redis, redis_settings: RedisSettings, tmp_path: Path
) -> None:
    seed(redis_client, redis_settings)
    settings = settings_for(redis_settings, tmp_path).model_copy(update={"request_timeout_s": 0.1})
    # A script that spins for 0.6 s blocks the (single-threaded) server: every
    # other command waits behind it, which is what a stalled Redis looks like.
    spin = (
        "local t0 = redis.call('TIME') repeat local t = redis.call('TIME') "
        "until (t[1] - t0[1]) * 1e6 + (t[2] - t0[2]) > 600000 return 1"
    )
    with TestClient(create_app(settings)) as c:
        assert c.get("/recommendations/u1").status_code == 200
        blocker = threading.Thread(target=redis_client.eval, args=(spin, 0))
        blocker.start()
        try:
            wait_until_blocked(redis_settings.url)
            started = time.monotonic()
            resp = c.get("/recommendations/u1")
            elapsed = time.monotonic() - started
        finally:
            blocker.join()
        assert_error(resp, 503, "unavailable")
        assert resp.headers["Retry-After"] == "1"
        assert elapsed < 0.5
        # Once Redis answers again, so does the API.
        assert c.get("/recommendations/u1").status_code == 200


def test_unexpected_exception_is_a_json_500_without_details(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = FastAPI()
    install_handlers(app)
    app.add_middleware(GuardMiddleware)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret detail")

    with TestClient(app) as c:
        resp = c.get("/boom")
    err = assert_error(resp, 500, "internal")
    assert err["message"] == "internal error"
    assert "secret" not in resp.text
    assert "secret detail" in caplog.text  # the detail goes to the log only


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STREAMREC_ARTIFACTS_DIR", str(tmp_path / "shared"))
    monkeypatch.setenv("STREAMREC_SERVING_BLEND__W_EMB", "0.3")
    monkeypatch.setenv("STREAMREC_SERVING_MAX_K", "20")
    s = ServingSettings()
    assert s.artifacts_dir == tmp_path / "shared"
    assert s.blend.w_emb == 0.3
    assert s.max_k == 20
    monkeypatch.setenv("STREAMREC_SERVING_ARTIFACTS_DIR", str(tmp_path / "own"))
    assert ServingSettings().artifacts_dir == tmp_path / "own"
    monkeypatch.setenv("STREAMREC_SERVING_DEFAULT_K", "50")
    with pytest.raises(ValueError, match="exceeds max_k"):
        ServingSettings()


def test_broken_published_index_keeps_the_old_one(
    redis_settings: RedisSettings, published: tuple[Path, ItemIndex]
) -> None:
    artifacts, old = published
    with TestClient(create_app(settings_for(redis_settings, artifacts))) as c:
        broken = artifacts / "index" / "broken-1"
        broken.mkdir()
        for name in ("index.faiss", "items.json", "manifest.json"):
            (broken / name).write_text("garbage")
        (artifacts / "index" / "CURRENT").write_text("broken-1\n")
        deadline = time.monotonic() + 10.0
        while c.get("/stats").json()["index_load_failures"] == 0:
            assert time.monotonic() < deadline, "the broken version was never tried"
        # Tried once and remembered: the old index keeps serving.
        assert c.get("/health").json()["index_version"] == old.version
        assert c.get("/items/1/similar").status_code == 200
        assert c.get("/stats").json()["index_load_failures"] == 1


def test_popularity_damping_is_applied_by_the_server(
    redis_client: redis.Redis, redis_settings: RedisSettings, published: tuple[Path, ItemIndex]
) -> None:
    """The route passes the fetched popularity to the blend: a blockbuster is damped."""
    seed(redis_client, redis_settings)
    # co:1 = {4: 50, 5: 2}. With beta = 0.25, 4 counts 50 / 1e8**0.25 = 0.5 and
    # 5 counts 2 / 1**0.25 = 2, so 5 now leads the row; undamped, 4 would.
    redis_client.zadd(redis_settings.keys.pop, {"4": 1e8, "5": 1})
    settings = settings_for(redis_settings, published[0]).model_copy(
        update={"blend": BlendConfig(pop_damping=0.25)}
    )
    with TestClient(create_app(settings)) as c:
        items = c.get("/recommendations/u1", params={"k": 4}).json()["items"]
    co_clicked = [i["item_id"] for i in items if i["reason"]["kind"] == "co_clicked"]
    assert co_clicked.index("5") < co_clicked.index("4")
