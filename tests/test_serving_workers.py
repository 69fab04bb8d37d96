"""The API as real uvicorn processes: several workers serve, and each hot-swaps the index."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import redis
from test_serving_api import VECTORS, make_index, seed

from core.settings import RedisSettings
from offline.index import publish
from streamrec.local.stack import free_port, wait_until


@contextlib.contextmanager
def api_process(
    redis_settings: RedisSettings,
    artifacts: Path,
    log: Path,
    *,
    workers: int = 1,
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """``streamrec serve`` as a child process on a free port; yields its base URL."""
    port = free_port()
    full_env = {
        **os.environ,
        "STREAMREC_REDIS_URL": redis_settings.url,
        "STREAMREC_REDIS_NAMESPACE": redis_settings.namespace,
        "STREAMREC_ARTIFACTS_DIR": str(artifacts),
        # POST /events is not exercised here: point Kafka at a closed port.
        "STREAMREC_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "STREAMREC_SERVING_INDEX_POLL_S": "0.1",
        **(env or {}),
    }
    argv = [sys.executable, "-m", "streamrec.cli", "--log-level", "WARNING", "serve"]
    argv += ["--port", str(port), "--workers", str(workers)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
        try:
            return httpx.get(f"{url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, 60, "the API")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pinned_clients(url: str, workers: int, bound: int = 60) -> dict[int, httpx.Client]:
    """One keep-alive client per worker pid (a connection stays with the worker that took it)."""
    found: dict[int, httpx.Client] = {}
    for _ in range(bound):
        client = httpx.Client(base_url=url, timeout=5)
        pid = client.get("/stats").json()["pid"]
        if pid in found:
            client.close()
        else:
            found[pid] = client
        if len(found) == workers:
            break
    return found


def test_two_workers_serve_and_each_hot_swaps_without_failed_requests(
    redis_client: redis.Redis, redis_settings: RedisSettings, tmp_path: Path
) -> None:
    seed(redis_client, redis_settings)
    artifacts = tmp_path / "artifacts"
    old = make_index()
    publish(old, artifacts)
    new = make_index(VECTORS[[0, 3, 4, 1, 2, 5]])
    with api_process(redis_settings, artifacts, tmp_path / "api.log", workers=2) as url:
        clients = pinned_clients(url, 2)
        try:
            assert len(clients) == 2, "requests never reached a second worker"
            for c in clients.values():
                body = c.get("/recommendations/u1").json()
                assert body["index_version"] == old.version
            stop = threading.Event()

            def hammer(c: httpx.Client) -> tuple[list[int], set[str]]:
                codes, versions = [], set()
                deadline = time.monotonic() + 20
                while not stop.is_set() and time.monotonic() < deadline:
                    resp = c.get("/recommendations/u1")
                    codes.append(resp.status_code)
                    if resp.status_code == 200:
                        versions.add(resp.json()["index_version"])
                    if new.version in versions:
                        break  # this worker has swapped
                return codes, versions

            with ThreadPoolExecutor(max_workers=2) as pool:
                futures = [pool.submit(hammer, c) for c in clients.values()]
                time.sleep(0.2)  # both loops are running on the old index
                publish(new, artifacts)
                results = [f.result(timeout=30) for f in futures]
            for codes, versions in results:
                assert codes and set(codes) == {200}
                assert new.version in versions, "a worker kept the old index"
                assert versions <= {old.version, new.version}
            for c in clients.values():
                assert c.get("/stats").json()["index_swaps"] == 1
        finally:
            for c in clients.values():
                c.close()
