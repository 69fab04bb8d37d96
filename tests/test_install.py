"""The installed environment has the C accelerators the hot paths were measured with.

Each of these silently falls back to pure Python when missing, which costs a
large share of the CPU it was profiled at; the fallback must fail here instead.
"""

from __future__ import annotations

import subprocess
import sys


def test_kafka_checksums_records_in_c() -> None:
    from kafka.record import util

    # Pure-Python CRC-32C was ~17 % of the consumer's CPU (py-spy).
    assert util.crc32c_c is not None, "install crc32c (a dependency in pyproject.toml)"


def test_redis_replies_are_parsed_in_c() -> None:
    from redis.utils import HIREDIS_AVAILABLE

    assert HIREDIS_AVAILABLE, "install hiredis (a dependency in pyproject.toml)"


def test_the_api_server_runs_on_uvloop_and_httptools() -> None:
    from importlib.util import find_spec

    # uvicorn[standard]; plain uvicorn falls back to asyncio and h11.
    missing = [name for name in ("uvloop", "httptools") if find_spec(name) is None]
    assert not missing, f"install uvicorn[standard] (missing {missing})"


def test_version_is_the_distributions() -> None:
    from importlib.metadata import version

    out = subprocess.run(
        [sys.executable, "-m", "streamrec.cli", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0
    assert out.stdout.strip() == f"streamrec {version('streamrec')}"


def test_a_closed_kafka_transport_s_attribute_error_is_not_logged() -> None:
    """kafka-python 3.0 logs a traceback when it polls a connection it has just
    closed (seen in a consumer's clean exit); that one record is dropped, others not."""
    import logging

    from streamrec.cli.main import ClosedTransportNoise

    noise = ClosedTransportNoise()

    def record(message: str, exc: BaseException | None) -> logging.LogRecord:
        info = (type(exc), exc, None) if exc is not None else None
        return logging.LogRecord(
            "kafka.net.transport", logging.ERROR, __file__, 1, message, (), info
        )

    closed = "<KafkaTCPTransport [none] (closed)>: Error receiving network data closing socket"
    gone = AttributeError("'NoneType' object has no attribute 'recv'")
    assert not noise.filter(record(closed, gone))
    live = "<KafkaTCPTransport node=1 host=x:9092 (connected)>: Error receiving network data"
    assert noise.filter(record(live, gone))
    assert noise.filter(record(closed, ConnectionResetError()))
