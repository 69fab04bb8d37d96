"""The Grafana dashboard's queries, run by a real Prometheus scraping the real services.

A broker, Redis, a consumer and the API (tests/test_browser.py's stack), some
traffic (lookups, a bad request, a dead letter), and Debian's prometheus
scraping both metrics endpoints every second. Every query of
deploy/grafana/dashboards/streamrec.json must evaluate, and the panels the
traffic feeds must show data. Marked ``prometheus``; skipped where the binary
is missing (``./run.sh test`` installs it when it can).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from test_browser import live_stack  # noqa: F401  (the fixture)
from test_metrics import DASHBOARD

from core.settings import KafkaSettings
from producer.client import ClickProducer
from streamrec.local.stack import free_port, wait_until

PROMETHEUS = shutil.which("prometheus")

pytestmark = [
    pytest.mark.prometheus,
    pytest.mark.skipif(
        PROMETHEUS is None, reason="no prometheus binary (apt-get install prometheus)"
    ),
]

# Panels the test's traffic must fill (by title); the rest must evaluate.
MUST_HAVE_DATA = [
    "Events per second",
    "API requests per second, by route and status",
    "Recommendation latency p50 / p99",
    "Consumer lag (events not yet applied), by partition",
    "Dead letters per second, by reason",
    "Fallback share (answers with no personalised item)",
    "Item cache: hit ratio and staleness",
    "Consumer batch apply latency p99",
    "Index version and age, retries",
]


@pytest.fixture
def prometheus(live_stack: tuple[str, str], tmp_path: Path) -> Iterator[str]:  # noqa: F811
    api, consumer = live_stack
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "api", "static_configs": [{"targets": [urlsplit(api).netloc]}]},
            {"job_name": "consumer", "static_configs": [{"targets": [urlsplit(consumer).netloc]}]},
        ],
    }
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [
            str(PROMETHEUS),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
        try:
            return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, 30, "prometheus")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def query(prom: str, expr: str) -> list[dict[str, object]]:
    body = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=5).json()
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]  # type: ignore[no-any-return]


def test_every_dashboard_query_runs_on_the_real_services(
    prometheus: str,
    live_stack: tuple[str, str],  # noqa: F811 (the imported fixture)
    kafka_settings: KafkaSettings,
) -> None:
    api, _ = live_stack
    with httpx.Client(base_url=api, timeout=5) as http:
        wait_until(
            lambda: len(query(prometheus, "up == 1")) == 2, 30, "both targets scraped and up"
        )
        t_end = time.monotonic() + 8
        while time.monotonic() < t_end:  # traffic over several scrapes (rates need two)
            for user in ["viewer-1", "viewer-2", "nobody-yet"]:
                assert http.get(f"/recommendations/{user}").status_code == 200
            assert http.get("/recommendations/%FF").status_code == 422
            with ClickProducer(kafka_settings) as producer:
                producer.send_raw(b"not json", key=b"x")
                producer.flush()
            time.sleep(0.5)
    doc = json.loads(DASHBOARD.read_text())
    empty = []
    for panel in doc["panels"]:
        filled = [bool(query(prometheus, t["expr"])) for t in panel["targets"]]
        if panel["title"] in MUST_HAVE_DATA and not any(filled):
            empty.append(panel["title"])
    assert empty == []
    assert {p["title"] for p in doc["panels"]} >= set(MUST_HAVE_DATA)
