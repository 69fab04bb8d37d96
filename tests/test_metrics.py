"""Prometheus metrics scraped from real processes, parsed with prometheus-client's own parser.

The API with two uvicorn workers reports one truth (multiprocess mode): every
scrape, whichever worker answers it, gives the totals of both. The consumer
serves its own port. The Grafana dashboard queries only names they export.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from test_serving_api import make_index, seed
from test_serving_workers import api_process, pinned_clients

from core.events import ClickEvent
from core.settings import KafkaSettings, RedisSettings, settings_env
from offline.index import publish
from producer.client import ClickProducer, ensure_topics
from streamrec.local.harness import Children, process_env
from streamrec.local.stack import free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "streamrec.json"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    resp = httpx.get(url, timeout=5)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def names(samples: Iterable[tuple[str, object]]) -> set[str]:
    return {n for n, _ in samples}


@pytest.fixture(params=[1, 2], ids=["1 worker", "2 workers"])
def api(
    request: pytest.FixtureRequest,
    redis_client: redis.Redis,
    redis_settings: RedisSettings,
    tmp_path: Path,
) -> Iterator[tuple[str, int]]:
    seed(redis_client, redis_settings)
    publish(make_index(), tmp_path / "artifacts")
    workers = request.param
    with api_process(
        redis_settings, tmp_path / "artifacts", tmp_path / "api.log", workers=workers
    ) as url:
        yield url, workers


def test_api_workers_report_one_truth(api: tuple[str, int]) -> None:
    from serving.metrics import Metrics

    url, workers = api
    clients = pinned_clients(url, workers=workers)
    assert len(clients) == workers, "every worker must answer"
    per_worker = [5, 3][:workers]
    for client, n in zip(clients.values(), per_worker, strict=True):
        for _ in range(n):
            assert client.get("/recommendations/u1?k=3").status_code == 200
        assert client.get("/recommendations/%FF").status_code == 422
    total = sum(per_worker)
    for client in clients.values():  # a scrape through each worker: the same totals
        got = scrape(f"{client.base_url}/metrics")
        route = "/recommendations/{user_id}"
        assert value(got, "streamrec_http_requests_total", route=route, status="200") == total
        assert value(got, "streamrec_http_requests_total", route=route, status="422") == workers
        assert (
            value(got, "streamrec_http_request_duration_seconds_count", route=route)
            == total + workers
        )
        assert value(got, "streamrec_recommendations_total") == total
        assert value(got, "streamrec_errors_total", code="invalid_request") == workers
        assert value(got, "streamrec_index_items") == len(make_index())
        version = client.get("/health").json()["index_version"]
        assert value(got, "streamrec_index_info", version=version) == 1
        assert value(got, "streamrec_index_built_timestamp_seconds") > 1.6e9
        assert value(got, "streamrec_item_cache_refreshed_timestamp_seconds") > 1.6e9
        ours = {n for n, _ in got if n.startswith("streamrec_")}
        assert ours - exported(Metrics().registry) == set()  # the derivation below holds
    for client in clients.values():
        client.close()


def test_the_consumer_serves_its_own_metrics(
    kafka_settings: KafkaSettings, redis_settings: RedisSettings, tmp_path: Path
) -> None:
    from consumer.settings import ConsumerSettings

    ensure_topics(kafka_settings)
    port = free_port()
    events = [ClickEvent(f"u{k % 7}", f"i{k % 13}", 1_600_000_000_000 + k) for k in range(300)]
    with ClickProducer(kafka_settings) as producer:
        for e in events:
            producer.send(e)
        producer.send_raw(b"not json", key=b"u0")
        producer.flush()
    children = Children(tmp_path / "logs")
    env = {
        **process_env(kafka_settings, redis_settings),
        **settings_env(ConsumerSettings(metrics_port=port), ["metrics_port"]),
    }
    children.start(
        "consumer", [sys.executable, "-m", "streamrec.cli", "consume", "--group", "m"], env
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:

        def caught_up() -> bool:
            children.check()
            try:
                got = scrape(url)
            except httpx.HTTPError:
                return False
            lags = [v for (n, _), v in got.items() if n == "streamrec_consumer_lag_events"]
            # Every record is in Redis once every group's stored offset has passed it
            # (item state follows within the item delay): the dead letter included.
            stored = value(got, "streamrec_consumer_stored_offset")
            return (
                value(got, "streamrec_consumer_events_applied_total") == len(events)
                and bool(lags)
                and not any(lags)
                and stored == len(events) + 1
            )

        wait_until(caught_up, 60, "the consumer's metrics to show everything applied")
        got = scrape(url)
        assert value(got, "streamrec_consumer_dead_letters_total", reason="not_json") == 1
        assert value(got, "streamrec_consumer_rebalances_total", kind="assigned") >= 1
        assert value(got, "streamrec_consumer_batch_apply_seconds_count", kind="poll") >= 1
        assert value(got, "streamrec_consumer_partitions_assigned") == kafka_settings.partitions
        partitions = {
            dict(ls)["partition"] for n, ls in got if n == "streamrec_consumer_lag_events"
        }
        assert len(partitions) == kafka_settings.partitions
    finally:
        children.stop()


def exported(registry: CollectorRegistry) -> set[str]:
    """Every sample name a registry's metrics can export, labelled ones with no
    series yet included (a counter's _total, a histogram's _bucket/_count/_sum)."""
    suffixes = {
        "counter": ["_total", "_created"],
        "histogram": ["_bucket", "_count", "_sum", "_created"],
    }
    out = set()
    for family in registry.collect():
        for suffix in suffixes.get(family.type, [""]):
            out.add(family.name + suffix)
    return out


def test_the_dashboard_queries_only_exported_metrics() -> None:
    from consumer.metrics import ConsumerMetrics
    from serving.metrics import Metrics

    offered = exported(Metrics().registry) | exported(ConsumerMetrics().registry)
    wanted = dashboard_metrics()
    assert wanted - offered == set()
    # Each panel kind the issue names is there.
    for name in [
        "streamrec_consumer_events_applied_total",
        "streamrec_http_request_duration_seconds_bucket",
        "streamrec_consumer_lag_events",
        "streamrec_consumer_dead_letters_total",
        "streamrec_recommendation_fallbacks_total",
        "streamrec_item_cache_hits_total",
    ]:
        assert name in wanted, name


def test_the_compose_file_provisions_prometheus_and_grafana() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    mounts = " ".join(services["grafana"]["volumes"])
    assert "deploy/grafana/dashboards" in mounts and "deploy/grafana/provisioning" in mounts
    assert "deploy/prometheus/prometheus.yml" in " ".join(services["prometheus"]["volumes"])
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = {
        t for job in scrape["scrape_configs"] for c in job["static_configs"] for t in c["targets"]
    }
    consumer_env = services["consumer"]["environment"]
    port = consumer_env["STREAMREC_CONSUMER_METRICS_PORT"]
    assert consumer_env["STREAMREC_CONSUMER_METRICS_HOST"] == "0.0.0.0"
    assert targets == {"api:8000", f"consumer:{port}"}


def dashboard_metrics() -> set[str]:
    """Every streamrec_* name the dashboard's queries use."""
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    return {m for e in exprs for m in re.findall(r"\bstreamrec_[a-z0-9_]+", e)}
