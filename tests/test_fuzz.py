"""Schemathesis against the schema a real running API serves (hardening: fuzzing in CI).

Every check schemathesis has, positive and negative data, the examples,
coverage, fuzzing and stateful phases, bounded in examples and time: zero
server errors, zero responses that break the schema, zero valid requests
refused, zero invalid ones accepted.

One rule moves with the clock: the latest ``ts`` accepted is the wall clock
plus ``max_future_ms``, and the served schema says where it is as of when it
is served (serving/app.py). A value just past it when schemathesis read the
schema is fine a second later, which schemathesis would call an invalid value
accepted; so this API runs with that bound past the fixed one (year 2100), and
tests/test_hardening.py checks the moving bound itself.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from test_serving_api import make_index, seed
from test_serving_workers import api_process

from core.events import MAX_TS_MS
from core.settings import KafkaSettings, RedisSettings
from offline.index import publish
from producer.client import ensure_topics

pytestmark = pytest.mark.fuzz

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.fixture
def api(
    redis_client: redis.Redis,
    redis_settings: RedisSettings,
    kafka_settings: KafkaSettings,
    tmp_path: Path,
) -> Iterator[str]:
    """A real API on seeded state, with a real broker behind POST /events."""
    seed(redis_client, redis_settings)
    ensure_topics(kafka_settings)
    publish(make_index(), tmp_path / "artifacts")
    env = {
        "STREAMREC_KAFKA_BOOTSTRAP": kafka_settings.bootstrap,
        "STREAMREC_KAFKA_TOPIC": kafka_settings.topic,
        "STREAMREC_SERVING_MAX_FUTURE_MS": str(MAX_TS_MS),  # see the module's docstring
    }
    with api_process(redis_settings, tmp_path / "artifacts", tmp_path / "api.log", env=env) as url:
        yield url


def test_schemathesis_finds_nothing(api: str, tmp_path: Path) -> None:
    argv = [
        str(SCHEMATHESIS),
        "run",
        f"{api}/openapi.json",
        "--checks", "all",
        "--mode", "all",
        "--phases", "examples,coverage,fuzzing,stateful",
        "--max-examples", "40",
        "--max-time", "120",
        "--workers", "1",
        "--seed", "1",
        "--request-timeout", "5",
        "--no-color",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    (tmp_path / "schemathesis.out").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
