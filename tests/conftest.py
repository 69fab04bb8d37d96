"""Fixtures: real redis-server and a real Kafka-protocol broker (Tansu) on free ports.

One Redis and one broker serve the whole session (starting Tansu and joining a
group are the slow parts); each test isolates itself with its own Redis key
namespace and its own topic names, which the fixtures below hand out.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from core.settings import KafkaSettings, RedisSettings
from streamrec.local.cluster import LocalCluster, free_cluster_ports
from streamrec.local.stack import LocalStack, free_port

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    st = LocalStack(tmp_path_factory.mktemp("stack"), free_port(), free_port())
    st.up()
    try:
        yield st
    finally:
        st.down()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A local 3-master Redis Cluster for the session (tests mark themselves ``cluster``)."""
    cl = LocalCluster(tmp_path_factory.mktemp("cluster"), free_cluster_ports())
    cl.up()
    try:
        yield cl
    finally:
        cl.down()


@pytest.fixture
def cluster_settings(redis_cluster: LocalCluster) -> Iterator[RedisSettings]:
    """Settings for a namespace of the cluster no other test uses; deleted afterwards."""
    settings = RedisSettings(
        url=redis_cluster.url, namespace=f"t{uuid.uuid4().hex[:10]}", cluster=True
    )
    yield settings
    client = settings.client()
    for key in list(client.scan_iter(match=settings.keys.pattern(), count=1000)):
        client.delete(key)
    client.close()


@pytest.fixture
def redis_settings(stack: LocalStack) -> Iterator[RedisSettings]:
    """Settings for a namespace no other test uses; its keys are deleted afterwards."""
    settings = RedisSettings(url=stack.redis_url, namespace=f"t{uuid.uuid4().hex[:10]}")
    yield settings
    client = redis.Redis.from_url(stack.redis_url)
    keys = list(client.scan_iter(match=settings.keys.pattern(), count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def redis_client(redis_settings: RedisSettings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_settings.url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def kafka_settings(stack: LocalStack) -> KafkaSettings:
    """Topic names no other test uses."""
    tag = uuid.uuid4().hex[:10]
    return KafkaSettings(
        bootstrap=stack.bootstrap, topic=f"clicks-{tag}", dlq_topic=f"clicks-{tag}.dlq"
    )


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(42)


@pytest.fixture(scope="session")
def movielens_dir() -> Path:
    """The real ml-latest-small, found through STREAMREC_DATA_DIR (CI points it at ../shared)."""
    root = os.environ.get("STREAMREC_DATA_DIR")
    candidates = [Path(root)] if root else []
    candidates.append(REPO.parent / "shared" / "datasets")
    for base in candidates:
        if (base / "ml-latest-small" / "ratings.csv").is_file():
            return base / "ml-latest-small"
    pytest.skip("ml-latest-small not found; set STREAMREC_DATA_DIR")
