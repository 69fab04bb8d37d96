"""POST /events against the real broker: validation, delivery, broker outage."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from kafka import KafkaConsumer, TopicPartition

from core.settings import KafkaSettings, RedisSettings
from producer.client import ensure_topics
from serving.app import create_app
from serving.settings import ServingSettings
from streamrec.local.stack import free_port

TS = 1_700_000_000_000


def consume_all(kafka: KafkaSettings, expected: int, timeout_s: float = 20.0) -> list[Any]:
    """Read the topic from the beginning until ``expected`` messages arrived or the bound hits."""
    consumer = KafkaConsumer(
        bootstrap_servers=kafka.bootstrap, enable_auto_commit=False, group_id=None
    )
    try:
        consumer.assign([TopicPartition(kafka.topic, p) for p in range(kafka.partitions)])
        consumer.seek_to_beginning()
        got: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                got.extend(records)
        # One more short poll: a message beyond the expected count would be a bug.
        for records in consumer.poll(timeout_ms=300).values():
            got.extend(records)
        return got
    finally:
        consumer.close()


def app_settings(redis_settings: RedisSettings, kafka: KafkaSettings, tmp: Path) -> ServingSettings:
    return ServingSettings(redis=redis_settings, kafka=kafka, artifacts_dir=tmp)


def test_invalid_batch_is_rejected_whole_and_valid_events_arrive(
    redis_settings: RedisSettings, kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    ensure_topics(kafka_settings)
    good = {"user_id": "u1", "item_id": "i1", "ts": TS}
    with TestClient(create_app(app_settings(redis_settings, kafka_settings, tmp_path))) as c:
        resp = c.post("/events", json=[good, {"user_id": "u1", "item_id": "i2"}])
        assert resp.status_code == 422
        err = resp.json()["error"]
        assert err["code"] == "invalid_event"
        assert "event 1" in err["message"] and "missing_field" in err["message"]

        resp = c.post("/events", json={"user_id": "u1", "item_id": "i3", "ts": 5})
        assert resp.status_code == 422
        assert "ts_out_of_range" in resp.json()["error"]["message"]

        assert c.post("/events", json=[]).status_code == 422
        assert c.post("/events", json=[good] * 1001).json()["error"]["code"] == "too_many_events"
        resp = c.post("/events", content=b"{not json", headers={"content-type": "application/json"})
        assert resp.status_code == 422 and resp.json()["error"]["code"] == "invalid_request"

        second = {"user_id": "u2", "item_id": "i9", "ts": TS + 1, "session_id": "s"}
        resp = c.post("/events", json=[good, second])
        assert resp.status_code == 202
        assert resp.json() == {"accepted": 2, "replayed": False}
        assert c.get("/stats").json()["events_accepted"] == 2

    records = consume_all(kafka_settings, expected=2)
    # Only the valid batch arrived: nothing of the rejected one was sent.
    got = sorted((r.key.decode(), json.loads(r.value)) for r in records)
    assert got == [
        ("u1", {"user_id": "u1", "item_id": "i1", "ts": TS, "type": "click"}),
        ("u2", {**second, "type": "click"}),
    ]


def test_broker_unreachable_is_503_with_retry_after(
    redis_settings: RedisSettings, tmp_path: Path
) -> None:
    dead = KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}", topic="clicks-nowhere")
    with TestClient(create_app(app_settings(redis_settings, dead, tmp_path))) as c:
        resp = c.post("/events", json={"user_id": "u1", "item_id": "i1", "ts": TS})
        assert resp.status_code == 503
        assert resp.headers["Retry-After"] == "1"
        assert resp.json()["error"]["code"] == "unavailable"
        # The failed start is not cached: the next request tries again (and fails again).
        assert (
            c.post("/events", json={"user_id": "u1", "item_id": "i1", "ts": TS}).status_code == 503
        )


@pytest.mark.parametrize("body", [[1], ["x"], [None]])
def test_non_object_events_name_their_index(
    redis_settings: RedisSettings, tmp_path: Path, body: list[Any]
) -> None:
    dead = KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}")
    with TestClient(create_app(app_settings(redis_settings, dead, tmp_path))) as c:
        resp = c.post("/events", json=body)
    assert resp.status_code == 422
    assert resp.json()["error"]["message"].startswith("event 0: not_an_object")
