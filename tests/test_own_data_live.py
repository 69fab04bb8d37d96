"""A team's own click log end to end on the real stack: a RetailRocket-layout file
through `streamrec replay` (broker), the consumer (Redis, typed weights), `build-index`
with its catalogue, and the API (titles, categories, filters, a never-clicked item)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import redis
from clicklogs import RETAILROCKET_OPTIONS, write_catalogue, write_retailrocket
from fastapi.testclient import TestClient
from test_consumer_worker import running, settings_for, stored_events
from test_serving_api import settings_for as serving_settings

from core.feedback import Feedback
from core.settings import KafkaSettings, RedisSettings
from producer.clicklog import ClickLogFormat, load_clicklog
from serving.app import create_app
from streamrec.cli.main import main
from streamrec.local.stack import wait_until

# RETAILROCKET_OPTIONS's columns, in ClickLogFormat's order.
FORMAT = ("visitorid", "itemid", "timestamp", "ms", "event")


def test_a_retailrocket_log_through_replay_the_consumer_the_index_and_the_api(
    kafka_settings: KafkaSettings,
    redis_settings: RedisSettings,
    redis_client: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = write_retailrocket(tmp_path / "events.csv", visitors=150)
    items = write_catalogue(tmp_path / "items.csv", log, extra=2)
    monkeypatch.setenv("STREAMREC_KAFKA_BOOTSTRAP", kafka_settings.bootstrap)
    monkeypatch.setenv("STREAMREC_KAFKA_TOPIC", kafka_settings.topic)
    monkeypatch.setenv("STREAMREC_KAFKA_DLQ_TOPIC", kafka_settings.dlq_topic)
    options = [*RETAILROCKET_OPTIONS, "--path", str(log.path)]

    assert main(["replay", *options, "--no-progress"]) == 0
    _, err = capsys.readouterr()
    assert "skipped 6" in err and "Traceback" not in err

    with running(settings_for(kafka_settings, redis_settings)) as worker:
        wait_until(lambda: stored_events(worker) >= log.kept, 60, "the log applied")
    artifacts = tmp_path / "art"
    build = ["build-index", *options, "--catalogue", str(items), "--artifacts-dir", str(artifacts)]
    assert main([*build, "--dim", "8"]) == 0

    # Typed feedback: each item's popularity is its events' type weights summed
    # (view 0.5, addtocart 2, transaction 3), over the rows the reader kept.
    weights = Feedback().type_weights
    assert {weights["view"], weights["addtocart"], weights["transaction"]} == {0.5, 2.0, 3.0}
    frame, _ = load_clicklog(log.path, ClickLogFormat("csv", *FORMAT))
    want: Counter[str] = Counter()
    for item, etype in zip(frame["item_id"], frame["type"], strict=True):
        want[item] += weights[etype]
    raw = redis_client.zrange(redis_settings.keys.pop, 0, -1, withscores=True)
    assert dict(raw) == pytest.approx(dict(want))  # type: ignore[arg-type]
    assert len(set(frame["type"])) == 3

    with TestClient(create_app(serving_settings(redis_settings, artifacts))) as api:
        body = api.get("/recommendations/0?k=5").json()
        assert body["fallback"] is False and body["items"]
        first = body["items"][0]
        assert first["title"] == f"Item {first['item_id']}, boxed"  # from the catalogue
        group = f"group-{(int(body['sources'][0]) - 1000) // 100}"
        only = api.get(f"/recommendations/0?k=5&category={group}").json()["items"]
        assert only and all(f"group-{(int(i['item_id']) - 1000) // 100}" == group for i in only)
        others = api.get(f"/recommendations/0?k=5&exclude_category={group}").json()["items"]
        assert all(f"group-{(int(i['item_id']) - 1000) // 100}" != group for i in others)
        # An item in the catalogue that nobody clicked: alike by categories and tags.
        similar = api.get("/items/new-0/similar?k=3").json()
        assert similar["title"] == "Item new-0, boxed"
        # Every item has category "all" and tags "fresh", "boxed": those weigh
        # nothing (TF-IDF), so the one item alike is new-1, the other of category "new".
        assert [(i["item_id"], i["reason"]) for i in similar["items"]] == [
            ("new-1", "same_category")
        ]
