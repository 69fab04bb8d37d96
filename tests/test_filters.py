"""Business rules on the read endpoints (serving/filters.py) against a real Redis and API.

Every request is made on both paths, serving.fastpath and FastAPI's router, and
with the item cache on and off: all four must give the same answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from test_serving_api import IDS, VECTORS, settings_for

from core.catalogue import Catalogue, CatalogueItem
from core.settings import RedisSettings
from offline.index import ItemIndex, publish
from serving.app import create_app
from serving.blend import BlendConfig
from serving.fastpath import _query
from serving.filters import MAX_VALUES, Filters

MIN = 60_000
# Categories of the indexed items 1-6, and three catalogued items nobody has clicked
# (7, 8, 9): 7 shares tags with 4, 8 shares nothing with anyone, 9 has nothing.
CATALOGUE = Catalogue(
    {
        "1": CatalogueItem("One", frozenset({"Drama"})),
        "2": CatalogueItem("Two", frozenset({"Drama", "Comedy"})),
        "3": CatalogueItem("Three", frozenset({"Comedy"})),
        "4": CatalogueItem("Four", frozenset({"Horror"}), frozenset({"ghost", "house"})),
        "5": CatalogueItem("Five", frozenset({"Horror", "Comedy"})),
        "6": CatalogueItem("Six", frozenset()),
        "7": CatalogueItem("Seven", frozenset({"Horror"}), frozenset({"ghost"})),
        "8": CatalogueItem("Eight", frozenset({"Western"})),
        "9": CatalogueItem("Nine"),  # catalogued with no category or tag
    }
)


def make_index() -> ItemIndex:
    return ItemIndex.from_vectors(IDS, VECTORS, catalogue=CATALOGUE)


def entry(ts: int, item: str, neg: bool = False) -> str:
    return json.dumps([ts, item, None, None, None, 1] if neg else [ts, item, None])


def seed(client: redis.Redis, rs: RedisSettings) -> None:
    keys = rs.keys
    # s1: an old session (1 at minute 10), then a new one: 5, then 4 (newest),
    # and a dislike of 6 in between. Newest first after the LPUSHes.
    client.lpush(
        keys.hist("s1"),
        entry(10 * MIN, "1"),
        entry(95 * MIN, "5"),
        entry(96 * MIN, "6", neg=True),
        entry(100 * MIN, "4"),
    )
    client.hset(keys.co("4"), mapping={"1": 40, "5": 30, "6": 20, "3": 10, "2": 5})
    client.zadd(keys.trend, {"6": 9.0, "3": 7.0, "2": 3.0, "1": 20.0})
    client.hset(keys.meta, mapping={"trend_ref": 0, "clock": 100 * MIN, "half_life_ms": 3_600_000})


@pytest.fixture
def clients(
    redis_client: redis.Redis, redis_settings: RedisSettings, tmp_path: Path
) -> Iterator[dict[str, TestClient]]:
    seed(redis_client, redis_settings)
    publish(make_index(), tmp_path)
    # One source (the newest item), no embedding or content term: answers read off the co row.
    base = settings_for(redis_settings, tmp_path).model_copy(
        update={"blend": BlendConfig(history_items=1, w_emb=0.0, w_content=0.0)}
    )
    apps = {
        f"{'fast' if fast else 'router'}-{staleness}": create_app(
            base.model_copy(update={"fast_path": fast, "item_staleness_s": staleness})
        )
        for fast in (True, False)
        for staleness in (1.0, 0.0)
    }
    opened = {name: TestClient(app) for name, app in apps.items()}
    for c in opened.values():
        c.__enter__()
    try:
        yield opened
    finally:
        for c in opened.values():
            c.__exit__(None, None, None)


def get(clients: dict[str, TestClient], path: str) -> tuple[int, Any]:
    """The one answer all four apps give (asserted), as (status, body)."""
    answers = {name: c.get(path) for name, c in clients.items()}
    first = next(iter(answers.values()))
    for name, resp in answers.items():
        assert (resp.status_code, resp.text) == (first.status_code, first.text), name
    return first.status_code, first.json()


def ids(clients: dict[str, TestClient], path: str) -> list[str]:
    status, body = get(clients, path)
    assert status == 200, body
    return [item["item_id"] for item in body["items"]]


def test_what_counts_as_seen(clients: dict[str, TestClient]) -> None:
    # Default (history): every item of the history read is excluded, 6 (disliked) too.
    assert ids(clients, "/recommendations/s1?k=4") == ["3", "2"]
    # session: only this session's 5 (and 4, the source); 1 is from the earlier one.
    assert ids(clients, "/recommendations/s1?k=4&seen=session") == ["1", "3", "2"]
    # none: only the source itself and the dislike stay out.
    assert ids(clients, "/recommendations/s1?k=4&seen=none") == ["1", "5", "3", "2"]
    _, body = get(clients, "/recommendations/s1?k=4&seen=none")
    assert body["sources"] == ["4"]  # the disliked 6 is newer than 5 but never a source
    assert "6" not in ids(clients, "/recommendations/s1?k=10&seen=none")


def test_exclude_takes_ids_by_repeating_the_parameter(clients: dict[str, TestClient]) -> None:
    assert ids(clients, "/recommendations/s1?k=4&seen=none&exclude=1&exclude=3") == ["5", "2"]
    # A comma is part of an id, not a separator.
    assert ids(clients, "/recommendations/s1?k=4&seen=none&exclude=1,3") == ["1", "5", "3", "2"]
    # Trending filler obeys it too: a cold user gets trending minus the excluded.
    assert ids(clients, "/recommendations/nobody?k=3&exclude=1") == ["6", "3", "2"]
    # /similar takes the same rules.
    status, body = get(clients, "/items/4/similar?k=3&exclude=1&exclude=5")
    assert status == 200 and [i["item_id"] for i in body["items"]] == ["6", "3", "2"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("seen=everything", "seen"),
        ("exclude=", "exclude"),
        ("exclude=a&exclude=", "exclude"),
        ("exclude=a%2Fb", "exclude"),
        ("&".join(f"category=c{n}" for n in range(MAX_VALUES + 1)), "category"),
        ("exclude_category=" + "x" * 129, "exclude_category"),
    ],
)
def test_a_bad_rule_is_a_422_naming_it(
    clients: dict[str, TestClient], query: str, field: str
) -> None:
    status, body = get(clients, f"/recommendations/s1?{query}")
    assert status == 422
    assert body["error"]["code"] == "invalid_request"
    assert f"query.{field}" in body["error"]["message"]


def test_categories_come_from_the_index_catalogue(clients: dict[str, TestClient]) -> None:
    base = "/recommendations/s1?k=4&seen=none"
    assert ids(clients, base) == ["1", "5", "3", "2"]
    assert ids(clients, base + "&category=Drama") == ["1", "2"]
    assert ids(clients, base + "&category=Drama&category=Horror") == ["1", "5", "2"]
    assert ids(clients, base + "&exclude_category=Comedy") == ["1"]
    # An item in no category passes an exclusion and fails an inclusion.
    assert "6" in ids(clients, "/recommendations/nobody?k=4&exclude_category=Drama")
    assert ids(clients, "/recommendations/nobody?k=4&category=Comedy") == ["3", "2"]
    assert ids(clients, base + "&category=Nothing") == []
    status, body = get(clients, "/items/4/similar?k=5&category=Comedy")
    assert status == 200 and [i["item_id"] for i in body["items"]] == ["5", "3", "2"]


def test_an_item_nobody_clicked_is_answered_from_its_categories_and_tags(
    clients: dict[str, TestClient],
) -> None:
    status, body = get(clients, "/items/7/similar?k=3")
    assert status == 200, body
    assert body["title"] == "Seven"
    items = body["items"]
    assert [i["item_id"] for i in items][:2] == ["4", "5"]  # a tag and a category, a category
    assert {i["reason"] for i in items} == {"same_category"}
    assert items[0]["score"] > items[1]["score"] > 0
    # Catalogued but alike to nothing: an empty answer, not a 404.
    status, body = get(clients, "/items/8/similar?k=3")
    assert status == 200 and body["items"] == []
    status, body = get(clients, "/items/9/similar?k=3")
    assert status == 200 and body["title"] == "Nine" and body["items"] == []
    status, body = get(clients, "/items/nowhere/similar?k=3")
    assert status == 404 and body["error"]["code"] == "item_not_found"


def test_the_fast_path_takes_filtered_requests() -> None:
    """Filtered queries are answered beside the router (the same answers are held
    equal above), and what it does not take goes on to FastAPI."""
    assert _query(b"", 10, 100) == (10, Filters())
    assert _query(b"k=3&exclude=a&exclude=b&seen=session&category=Drama", 10, 100) == (
        3,
        Filters(frozenset("ab"), frozenset({"Drama"}), frozenset(), "session"),
    )
    assert _query(b"exclude=a&exclude=b", 10, 100) == (10, Filters(frozenset("ab")))
    assert _query(b"category=Sci%2DFi", 10, 100) == (10, Filters(categories=frozenset({"Sci-Fi"})))
    for handed_on in (b"k=3&k=4", b"seen=x", b"seen=none&seen=none", b"k=101", b"other=1"):
        assert _query(handed_on, 10, 100) is None, handed_on
