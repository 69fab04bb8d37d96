"""Hostile clients against a real API process (uvicorn on a free port, real Redis).

Regression tests of the defects found by trying the running API as a hostile
client would: each reproduces its defect against the real server.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from kafka import KafkaConsumer
from test_serving_api import make_index, seed
from test_serving_workers import api_process

from core.events import ID_PATTERN, MAX_TS_MS, MIN_TS_MS, future_limit_ms
from core.settings import KafkaSettings, RedisSettings
from offline.index import publish
from producer.client import ensure_topics
from serving.settings import ServingSettings

BODY_TIMEOUT_S = 3.0
MAX_BODY = 64 * 1024


@pytest.fixture
def api(redis_client: redis.Redis, redis_settings: RedisSettings, tmp_path: Path) -> Iterator[str]:
    seed(redis_client, redis_settings)
    publish(make_index(), tmp_path / "artifacts")
    env = {
        "STREAMREC_SERVING_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "STREAMREC_SERVING_MAX_BODY_BYTES": str(MAX_BODY),
    }
    with api_process(redis_settings, tmp_path / "artifacts", tmp_path / "api.log", env=env) as url:
        yield url


def topic_events(kafka: KafkaSettings) -> list[dict[str, object]]:
    """Every event on the topic so far, decoded."""
    consumer = KafkaConsumer(
        kafka.topic,
        bootstrap_servers=kafka.bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=4000,
    )
    try:
        return [json.loads(m.value) for m in consumer]
    finally:
        consumer.close()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _post_head(length: int | None, chunked: bool = False) -> bytes:
    head = "POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    if length is not None:
        head += f"Content-Length: {length}\r\n"
    if chunked:
        head += "Transfer-Encoding: chunked\r\n"
    return (head + "\r\n").encode()


def _response(sock: socket.socket, timeout: float) -> tuple[int, dict[str, object]]:
    """Status and JSON body of one HTTP/1.1 response read from a raw socket."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split(b" ", 2)[1]), json.loads(body[:length])


def test_silent_request_bodies_do_not_take_the_recommendation_slots(api: str) -> None:
    """Defect 1: four POSTs that announce a body and send one byte held all four
    in-flight slots, and /recommendations answered 503 for as long as they waited."""
    silent = [socket.create_connection(("127.0.0.1", _port(api))) for _ in range(8)]
    try:
        for s in silent:
            s.sendall(_post_head(1000) + b"{")
        time.sleep(0.2)  # they are all waiting for their bodies now
        started = time.monotonic()
        for _ in range(10):
            resp = httpx.get(f"{api}/recommendations/u1", params={"k": 3}, timeout=2)
            assert resp.status_code == 200, resp.text
        # Served while they wait: none of the silent requests has been answered yet.
        assert time.monotonic() - started < BODY_TIMEOUT_S
        for s in silent:
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(1)
            s.setblocking(True)
        # Each silent body runs out of time with a JSON 408, not a hang.
        for s in silent:
            status, body = _response(s, timeout=BODY_TIMEOUT_S + 5)
            assert status == 408 and body["error"]["code"] == "body_timeout"  # type: ignore[index]
    finally:
        for s in silent:
            s.close()


def test_an_announced_oversized_body_is_refused_before_it_is_read(api: str) -> None:
    """Defect 6: a 52 MB body was read and parsed in full before any check."""
    with socket.create_connection(("127.0.0.1", _port(api))) as s:
        s.sendall(_post_head(52_428_800) + b"[")
        status, body = _response(s, timeout=5)
    assert status == 413 and body["error"]["code"] == "body_too_large"  # type: ignore[index]


def test_a_chunked_body_is_cut_off_at_the_limit(api: str) -> None:
    with socket.create_connection(("127.0.0.1", _port(api))) as s:
        s.sendall(_post_head(None, chunked=True))
        chunk = b"x" * 16_384
        status: int | None = None
        for _ in range(MAX_BODY // len(chunk) + 2):
            try:
                s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except OSError:
                break  # the server answered and closed: read what it said
        status, body = _response(s, timeout=5)
    assert status == 413 and body["error"]["code"] == "body_too_large"  # type: ignore[index]


def test_a_body_within_the_limit_still_reaches_the_route(api: str) -> None:
    # A valid event reaches validation and the (unreachable) broker: 503, not 413/408.
    event = {"user_id": "u", "item_id": "i", "ts": 1_600_000_000_000}
    resp = httpx.post(f"{api}/events", json=[event] * 50, timeout=15)
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "unavailable"
    bad = httpx.post(f"{api}/events", json=[{"user_id": "u"}], timeout=5)
    assert bad.status_code == 422


def test_a_huge_integer_weight_is_a_422_and_a_huge_ts_is_not_echoed(api: str) -> None:
    """Defects 5 and 11: a 400-digit weight raised OverflowError (500), and a
    4,000-digit ts came back whole in the error message."""
    event = {"user_id": "u", "item_id": "i", "ts": 1_600_000_000_000}
    resp = httpx.post(
        f"{api}/events",
        content=json.dumps({**event, "weight": 10**400}),
        headers={"content-type": "application/json"},
        timeout=5,
    )
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["code"] == "invalid_event"
    assert "weight" in resp.json()["error"]["message"]
    huge_ts = "1" * 4000
    raw = f'{{"user_id": "u", "item_id": "i", "ts": {huge_ts}}}'
    resp = httpx.post(
        f"{api}/events", content=raw, headers={"content-type": "application/json"}, timeout=5
    )
    assert resp.status_code == 422, resp.text
    assert huge_ts[:100] not in resp.text and len(resp.text) < 500


def test_an_event_dated_far_ahead_is_refused_and_cannot_take_over_trending(api: str) -> None:
    """Defect 3: ten events dated 2100 (each weighing ~2**104 real ones in the
    forward-decayed trending set) made their item every new user's first pick.
    POST refuses anything dated more than MAX_FUTURE_MS past the wall clock; the
    consumer dead-letters the same (tests/test_consumer_worker.py BAD_MESSAGES)."""
    headers = {"content-type": "application/json"}
    future = '{"user_id": "p1", "item_id": "3", "ts": 4102444800000}'
    for _ in range(10):
        resp = httpx.post(f"{api}/events", content=future, headers=headers, timeout=5)
        assert resp.status_code == 422, resp.text
        error = resp.json()["error"]
        assert error["code"] == "invalid_event" and "ts_in_future" in error["message"]
    # Within the allowed skew (an hour by default) is fine: a client's clock runs fast.
    soon = int(time.time() * 1000) + 60_000
    ok = httpx.post(
        f"{api}/events",
        content=f'{{"user_id": "p1", "item_id": "3", "ts": {soon}}}',
        headers=headers,
        timeout=5,
    )
    assert ok.status_code in (202, 503), ok.text  # 503: this fixture runs without a broker


def test_a_batch_with_one_bad_event_sends_none_of_it(
    redis_settings: RedisSettings, kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    """Defect 4: a lone surrogate in the second event raised inside the send loop
    after the first was queued: a 500, and event 0 applied anyway."""
    ensure_topics(kafka_settings)
    publish(make_index(), tmp_path / "artifacts")
    env = {
        "STREAMREC_KAFKA_BOOTSTRAP": kafka_settings.bootstrap,
        "STREAMREC_KAFKA_TOPIC": kafka_settings.topic,
    }
    good = '{"user_id": "u", "item_id": "i", "ts": 1600000000000}'
    lone = '{"user_id": "u", "item_id": "\\ud800", "ts": 1600000000001}'
    headers = {"content-type": "application/json"}
    with api_process(redis_settings, tmp_path / "artifacts", tmp_path / "api.log", env=env) as url:
        bad = httpx.post(f"{url}/events", content=f"[{good}, {lone}]", headers=headers, timeout=10)
        assert bad.status_code == 422, bad.text
        assert bad.json()["error"]["message"].startswith("event 1: not_utf8")
        ok = httpx.post(f"{url}/events", content=f"[{good}]", headers=headers, timeout=10)
        assert ok.status_code == 202, ok.text
    values = topic_events(kafka_settings)
    # Only the accepted batch reached the topic (as the wire contract spells it).
    assert values == [{**json.loads(good), "type": "click"}]


def test_head_health_answers_like_get(api: str) -> None:
    """Defect 11: HEAD /health was a 405."""
    head = httpx.head(f"{api}/health", timeout=5)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == httpx.get(f"{api}/health").headers["content-type"]


def _raw(api: str, data: bytes, timeout: float = 5) -> tuple[int, dict[str, object]]:
    with socket.create_connection(("127.0.0.1", _port(api)), timeout=timeout) as sock:
        # The server may answer and close before it has read everything.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        return _response(sock, timeout)


def test_a_request_the_parser_refuses_gets_the_json_error_shape(api: str) -> None:
    """Defect 9 (part): server-level 400s were text/plain."""
    for garbage in [b"NOT HTTP AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\nHost x\r\n\r\n"]:
        status, body = _raw(api, garbage)
        assert status == 400, garbage
        assert body["error"]["code"] == "bad_request"  # type: ignore[index]


def test_request_heads_are_bounded(api: str) -> None:
    """Defect 11 (part): an 8 MB header was accepted. Past 16 KiB: 431, JSON, closed;
    a head that never ends is cut off at the bound as well."""
    big = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (8 * 1024 * 1024) + b"\r\n\r\n"
    status, body = _raw(api, big)
    assert status == 431 and body["error"]["code"] == "headers_too_large"  # type: ignore[index]
    endless = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (64 * 1024)
    status, _ = _raw(api, endless)
    assert status == 431
    # Ordinary heads, up to the bound, are untouched (keep-alive included).
    with httpx.Client(base_url=api, timeout=5) as client:
        for _ in range(3):
            assert client.get("/health", headers={"X-Pad": "a" * 12_000}).status_code == 200
        resp = client.post("/events", content=b"{", headers={"Content-Type": "application/json"})
        assert resp.status_code in (400, 422) and "error" in resp.json()


def test_one_id_rule_for_reads_and_writes(api: str) -> None:
    """Defect 10: POST took a user id with "/" that GET could never read; GET took
    blank ids that POST refused; undecodable path bytes became U+FFFD silently."""
    ts = 1_600_000_000_000
    for user in ["a/b", "   ", "x\ufffdy", "x" * 129]:
        resp = httpx.post(
            f"{api}/events", json={"user_id": user, "item_id": "i", "ts": ts}, timeout=5
        )
        assert resp.status_code == 422, (user, resp.text)
    for path in ["%20%20", "%FF", "x%EF%BF%BDy", "x" * 129]:
        resp = httpx.get(f"{api}/recommendations/{path}", timeout=5)
        assert resp.status_code == 422, (path, resp.text)
        assert resp.json()["error"]["code"] == "invalid_request"
        assert httpx.get(f"{api}/items/{path}/similar", timeout=5).status_code == 422
    assert httpx.get(f"{api}/recommendations/%C3%A9l%C3%A8ve", timeout=5).status_code == 200
    params = httpx.get(f"{api}/openapi.json").json()["paths"]["/recommendations/{user_id}"]
    user_param = next(p for p in params["get"]["parameters"] if p["name"] == "user_id")
    assert user_param["schema"]["pattern"] == ID_PATTERN


def test_the_schema_says_what_the_api_accepts(api: str) -> None:
    """Defect 9 (part): the documented event schema lacked the bounds the API
    enforces, and an integral number such as 402622531387.0 was refused."""
    schema = httpx.get(f"{api}/openapi.json").json()
    body = schema["paths"]["/events"]["post"]["requestBody"]["content"]["application/json"]
    one, batch = body["schema"]["oneOf"]
    assert batch["minItems"] == 1 and batch["maxItems"] == 1000  # the configured limit
    props = one["properties"]
    assert props["ts"]["minimum"] == MIN_TS_MS
    # The latest ts accepted moves with the clock (ts_in_future): as of now.
    assert abs(props["ts"]["maximum"] - future_limit_ms(3_600_000)) < 60_000
    assert props["ts"]["maximum"] < MAX_TS_MS
    assert props["user_id"]["pattern"] == ID_PATTERN and props["type"]["maxLength"] == 32
    assert props["weight"]["maximum"] == 1e6
    # Valid per that schema, and so accepted (the broker is away: 503, not 422).
    event = {"user_id": "u", "item_id": "i", "ts": 402622531387.0}
    assert httpx.post(f"{api}/events", json=event, timeout=15).status_code == 503
    for wrong in [{**event, "ts": 402622531387.5}, []]:
        assert httpx.post(f"{api}/events", json=wrong, timeout=5).status_code == 422


def test_an_idempotency_key_sends_a_retried_batch_once(
    redis_settings: RedisSettings, kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    """Defect 8 (the header): the same batch posted twice counted twice."""
    ensure_topics(kafka_settings)
    publish(make_index(), tmp_path / "artifacts")
    env = {
        "STREAMREC_KAFKA_BOOTSTRAP": kafka_settings.bootstrap,
        "STREAMREC_KAFKA_TOPIC": kafka_settings.topic,
    }
    batch = [{"user_id": "u", "item_id": f"i{n}", "ts": 1_600_000_000_000 + n} for n in range(3)]
    key = {"Idempotency-Key": "order-7f3a"}
    with api_process(redis_settings, tmp_path / "artifacts", tmp_path / "api.log", env=env) as url:
        first = httpx.post(f"{url}/events", json=batch, headers=key, timeout=10)
        again = httpx.post(f"{url}/events", json=batch, headers=key, timeout=10)
        other = httpx.post(f"{url}/events", json=batch[:1], headers=key, timeout=10)
        plain = httpx.post(f"{url}/events", json=batch[:1], timeout=10)
        bad_key = httpx.post(f"{url}/events", json=batch, headers={"Idempotency-Key": "a b"})
    assert (first.status_code, first.json()) == (202, {"accepted": 3, "replayed": False})
    assert (again.status_code, again.json()) == (202, {"accepted": 3, "replayed": True})
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
    assert plain.status_code == 202 and bad_key.status_code == 422
    items = [e["item_id"] for e in topic_events(kafka_settings)]
    assert sorted(items) == ["i0", "i0", "i1", "i2"]  # the keyed batch once, the plain one


def test_a_failed_send_releases_its_idempotency_key(api: str) -> None:
    """The broker is away: 503, and the retry with the same key tries again (not 409/202)."""
    event = {"user_id": "u", "item_id": "i", "ts": 1_600_000_000_000}
    key = {"Idempotency-Key": "retry-me"}
    for _ in range(2):
        resp = httpx.post(f"{api}/events", json=event, headers=key, timeout=15)
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "unavailable"


KEY_A, KEY_B = "a" * 16 + "-rotating-in", "b" * 24


def test_write_auth_when_keys_are_configured(
    redis_client: redis.Redis, redis_settings: RedisSettings, tmp_path: Path
) -> None:
    """POST /events needs one of the configured keys (Bearer or X-API-Key; two at
    once, for rotation), else 401 JSON with a challenge; reads stay open."""
    seed(redis_client, redis_settings)
    publish(make_index(), tmp_path / "artifacts")
    env = {"STREAMREC_SERVING_WRITE_KEYS": f"{KEY_A}, {KEY_B}"}
    event = '{"user_id": "u", "item_id": "i", "ts": 1600000000000}'
    json_type = {"content-type": "application/json"}
    with api_process(redis_settings, tmp_path / "artifacts", tmp_path / "api.log", env=env) as url:

        def post(headers: dict[str, str]) -> httpx.Response:
            return httpx.post(f"{url}/events", content=event, headers={**json_type, **headers})

        for headers in ({}, {"Authorization": "Bearer wrong-key-wrong-key"}, {"X-API-Key": "x"}):
            resp = post(headers)
            assert resp.status_code == 401, (headers, resp.text)
            assert resp.json()["error"]["code"] == "unauthorized"
            assert resp.headers["www-authenticate"].startswith("Bearer")
            assert KEY_A not in resp.text and KEY_B not in resp.text
        # Unauthenticated and malformed: still 401, not a 422 that says what is wrong.
        bad = httpx.post(f"{url}/events", content="[]", headers=json_type)
        assert bad.status_code == 401
        # Either key, either header. No broker here: 503 means auth let it through.
        for headers in ({"Authorization": f"Bearer {KEY_A}"}, {"X-API-Key": KEY_B}):
            assert post(headers).status_code in (202, 503), headers
        assert httpx.get(f"{url}/recommendations/u1?k=2").status_code == 200
        assert httpx.get(f"{url}/health").status_code == 200
        schema = httpx.get(f"{url}/openapi.json").json()
        assert "401" in schema["paths"]["/events"]["post"]["responses"]


def test_write_keys_shorter_than_sixteen_characters_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        ServingSettings(write_keys="short")
    assert ServingSettings(write_keys=f"{KEY_A},{KEY_B}").write_key_list == [KEY_A, KEY_B]
    assert ServingSettings().write_key_list == []
