"""Retraining from the stream: the offline job reads the clicks topic (real broker),
publishes a new index version, and a running API moves to it without a failed request."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from test_serving_api import settings_for

from core.events import ClickEvent
from core.feedback import Feedback
from core.settings import KafkaSettings, RedisSettings
from offline.index import current_version, load_current
from offline.job import OfflineSettings, build_index
from offline.schedule import parse_duration, run_every
from offline.stream import read_topic
from producer.client import ClickProducer, ensure_topics
from serving.app import create_app

T0 = 1_700_000_000_000
DAY = 24 * 3600 * 1000


def sessions(prefix: str, days: int, start: int) -> list[ClickEvent]:
    """Users who each click a run of items of one family (two families a day)."""
    out = []
    for d in range(days):
        for u in range(12):
            family = (u + d) % 2
            for n in range(5):
                item = f"{prefix}{family}-{(u + n) % 8}"
                out.append(ClickEvent(f"u{u}", item, start + d * DAY + u * 60_000 + n * 1000))
    return out


def send(kafka: KafkaSettings, events: list[ClickEvent], raw: list[bytes] = ()) -> None:  # type: ignore[assignment]
    with ClickProducer(kafka) as producer:
        for e in events:
            producer.send(e)
        for value in raw:
            producer.send_raw(value)
        producer.flush(10)


def test_read_topic_keeps_the_window_and_leaves_out_what_the_consumer_would(
    kafka_settings: KafkaSettings,
) -> None:
    ensure_topics(kafka_settings)
    events = sessions("a", 10, T0)
    dislike = ClickEvent("u0", "a0-0", T0 + 9 * DAY + 30_000, "dislike")
    send(kafka_settings, [*events, dislike], raw=[b"not json", b'{"user_id": "u"}'])
    whole = read_topic(kafka_settings, feedback=Feedback())
    assert whole.records == len(events) + 3
    assert len(whole.frame) == len(events)
    assert whole.negative == 1
    assert whole.refused == {"not_json": 1, "missing_field": 1}
    assert list(whole.frame.columns) == ["user_id", "item_id", "ts", "type", "weight"]
    assert whole.frame["ts"].is_monotonic_increasing
    # The last 3 days of event time, counted back from the newest event.
    recent = read_topic(kafka_settings, window_ms=3 * DAY)
    assert recent.frame["ts"].min() >= recent.newest_ts - 3 * DAY  # type: ignore[operator]
    assert recent.outside_window > 0
    assert len(recent.frame) + recent.outside_window == len(events)
    assert "outside the window" in recent.summary(kafka_settings.topic)


def test_two_builds_over_a_changing_stream_and_the_api_moves_without_a_failure(
    kafka_settings: KafkaSettings,
    redis_settings: RedisSettings,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    ensure_topics(kafka_settings)
    settings = OfflineSettings(dim=8, keep_versions=2)
    send(kafka_settings, sessions("a", 4, T0))

    def build() -> None:
        read = read_topic(kafka_settings)
        build_index(read.frame, tmp_path, settings, source=f"topic {kafka_settings.topic}")

    stop = threading.Event()
    assert run_every(3600, build, stop, runs=1) == 0
    first = current_version(tmp_path)
    assert first is not None and "b0-1" not in load_current(tmp_path)

    api = settings_for(redis_settings, tmp_path)  # polls the index every 50 ms
    statuses: list[int] = []
    versions: set[str | None] = set()
    done = threading.Event()
    with TestClient(create_app(api)) as client:

        def hammer() -> None:
            while not done.is_set():
                resp = client.get("/items/a0-1/similar?k=5")
                statuses.append(resp.status_code)
                versions.add(resp.json().get("index_version"))

        worker = threading.Thread(target=hammer)
        worker.start()
        try:
            # The stream changes: a new family of items, and the job runs again.
            send(kafka_settings, sessions("b", 4, T0 + 4 * DAY))
            assert run_every(3600, build, stop, runs=1) == 0
            second = current_version(tmp_path)
            assert second is not None and second != first
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                body = client.get("/items/b0-1/similar?k=5").json()
                if body.get("index_version") == second:
                    break
                time.sleep(0.05)
            assert body["index_version"] == second
            assert [i["reason"] for i in body["items"]] == ["similar"] * 5
            time.sleep(0.2)
        finally:
            done.set()
            worker.join()
    assert len(statuses) > 20 and set(statuses) == {200}
    assert {first, second} <= versions  # requests were answered from both versions


def test_a_failed_run_keeps_the_schedule_going() -> None:
    calls: list[int] = []

    def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("broker away")

    assert run_every(0.01, flaky, threading.Event(), runs=3) == 1
    assert len(calls) == 3


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("30m", 1800), ("1h", 3600), ("7d", 604800), ("1h30m", 5400)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1", "h", "1x", "0s", "1h 2"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_build_index_from_the_topic_on_a_schedule(
    kafka_settings: KafkaSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command line: a build given a catalogue, then two scheduled builds from
    the topic that keep it; each publishes a version."""
    from streamrec.cli.main import main

    ensure_topics(kafka_settings)
    send(kafka_settings, sessions("a", 3, T0))
    monkeypatch.setenv("STREAMREC_KAFKA_BOOTSTRAP", kafka_settings.bootstrap)
    monkeypatch.setenv("STREAMREC_KAFKA_TOPIC", kafka_settings.topic)
    monkeypatch.setenv("STREAMREC_OFFLINE_DIM", "8")
    catalogue = tmp_path / "items.csv"
    catalogue.write_text("item_id,title,categories\na0-1,First,Drama|Comedy\n")
    argv = ["build-index", "--from-topic", "--artifacts-dir", str(tmp_path), "--window", "2d"]
    assert main([*argv, "--catalogue", str(catalogue)]) == 0
    assert main([*argv, "--every", "1.2s", "--runs", "2"]) == 0
    versions = sorted(p.name for p in (tmp_path / "index").iterdir() if p.is_dir())
    assert len(versions) == 3
    index = load_current(tmp_path)
    assert index.catalogue.title("a0-1") == "First"  # kept from build to build
    assert index.catalogue.categories("a0-1") == {"Drama", "Comedy"}
    assert index.manifest.source == f"topic {kafka_settings.topic} at {kafka_settings.bootstrap}"
    assert main(["build-index", "--window", "2d"]) == 2  # a settings error, said in one line
