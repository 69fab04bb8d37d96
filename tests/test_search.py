"""Title search (serving/search.py), the catalogue endpoints and the live panel's endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from test_serving_api import seed, settings_for

from core.settings import KafkaSettings, RedisSettings
from offline.index import ItemIndex, publish
from producer.client import ensure_topics
from serving.app import create_app
from serving.search import TitleSearch, fold

CATALOGUE = {
    "1": "Toy Story (1995)",
    "2": "Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)",
    "3": "American President, The (1995)",
    "4": "Story of Us, The (1999)",
    "5": "Toy Soldiers (1991)",
    "6": "Léon: The Professional (a.k.a. The Professional) (Léon) (1994)",
}


def test_fold_ignores_case_accents_and_punctuation() -> None:
    assert fold("Amélie (2001)") == "amelie 2001"
    assert fold("LÉON: the PROFESSIONAL") == "leon the professional"
    assert fold("  Toy   Story ") == "toy story"


def test_search_matches_words_as_prefixes_in_any_order() -> None:
    s = TitleSearch(CATALOGUE)
    assert [i for i, _ in s.search("toy", 10)] == ["1", "5"]  # both start with it; shorter first
    assert [i for i, _ in s.search("TOY st", 10)] == ["1"]
    assert [i for i, _ in s.search("amelie", 10)] == ["2"]  # no accent typed
    assert [i for i, _ in s.search("leon prof", 10)] == ["6"]
    assert [i for i, _ in s.search("story", 10)] == ["4", "1"]  # a title starting with it first
    assert [i for i, _ in s.search("president american", 10)] == ["3"]  # any order
    assert s.search("zzz", 10) == [] and s.search("  ", 10) == [] and s.search("(", 10) == []
    assert len(s.search("the", 2)) == 2


@pytest.fixture
def client(
    redis_client: redis.Redis,
    redis_settings: RedisSettings,
    kafka_settings: KafkaSettings,
    tmp_path: Path,
) -> Iterator[TestClient]:
    seed(redis_client, redis_settings)
    ids = list(CATALOGUE)
    vectors = np.random.default_rng(1).normal(size=(len(ids), 4)).astype(np.float32)
    publish(ItemIndex.from_vectors(ids, vectors, titles=CATALOGUE), tmp_path)
    ensure_topics(kafka_settings)
    settings = settings_for(redis_settings, tmp_path, kafka_settings)
    settings = settings.model_copy(update={"consumer_group": "no-such-group"})
    with TestClient(create_app(settings)) as c:
        yield c


def test_items_search_endpoint(client: TestClient) -> None:
    body = client.get("/items", params={"q": "toy st"}).json()
    assert body["items"] == [{"item_id": "1", "title": "Toy Story (1995)"}]
    assert body["query"] == "toy st" and body["index_version"]
    assert client.get("/items", params={"q": "the", "limit": 1}).json()["items"][0]["item_id"]
    for bad in [{}, {"q": ""}, {"q": "x" * 101}, {"q": "a", "limit": 0}, {"q": "a", "limit": 51}]:
        resp = client.get("/items", params=bad)
        assert resp.status_code == 422 and resp.json()["error"]["code"] == "invalid_request"


def test_one_item_endpoint(client: TestClient, redis_client: redis.Redis) -> None:
    body = client.get("/items/2").json()
    assert body["title"].startswith("Amélie") and body["in_index"] is True
    assert client.get("/items/nope").status_code == 404


def test_live_endpoint_reports_applied_events_and_latency(
    client: TestClient, redis_client: redis.Redis, redis_settings: RedisSettings
) -> None:
    redis_client.hset(redis_settings.keys.stats, "events", 40)
    first = client.get("/live").json()
    assert first["events_applied"] == 40 and first["events_per_s"] is None
    assert first["lag"] == 0  # the topic is empty and the group has committed nothing
    for _ in range(5):
        assert client.get("/recommendations/u1").status_code == 200
    redis_client.hset(redis_settings.keys.stats, "events", 90)
    second = client.get("/live").json()
    assert second["events_applied"] == 90 and second["events_per_s"] > 0
    assert 0 < second["p50_ms"] <= second["p99_ms"]


def test_the_page_is_served(client: TestClient) -> None:
    resp = client.get("/")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    for part in ['id="q"', 'id="recs"', 'id="live"', "/items?q=", "/events", "/live"]:
        assert part in resp.text
    assert "/" not in client.get("/openapi.json").json()["paths"]  # not an API operation
