"""docker-compose.yml parsed and checked against the CLI and the settings classes.

No Docker engine runs on the development machines, so the file is tested by
reading it: every project command must parse with `streamrec`'s own parser,
every STREAMREC_* variable must name a real setting (and hold a valid value),
and the services must wait on each other through real healthchecks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from consumer.settings import ConsumerSettings
from core.settings import KafkaSettings, PathSettings, RedisSettings
from offline.job import OfflineSettings
from serving.settings import ServingSettings
from streamrec.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
SETTINGS: list[type[BaseSettings]] = [
    KafkaSettings,
    RedisSettings,
    PathSettings,
    ConsumerSettings,
    ServingSettings,
    OfflineSettings,
]
PROJECT_SERVICES = {"build-index", "consumer", "api", "replay", "consumer-cluster", "api-cluster"}
LONG_RUNNING = {"kafka", "redis", "consumer", "api", "consumer-cluster", "api-cluster"}
CLUSTER_NODES = {"redis-node-1", "redis-node-2", "redis-node-3"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def known_env_vars() -> set[str]:
    names = set()
    for cls in SETTINGS:
        prefix = cls.model_config.get("env_prefix", "")
        for field in cls.model_fields:
            names.add(f"{prefix}{field}".upper())
    return names


def test_every_project_command_parses_with_the_cli(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= PROJECT_SERVICES
    parser = build_parser()
    for name in PROJECT_SERVICES:
        svc = services[name]
        assert svc["build"] == "."
        args = parser.parse_args(svc["command"])  # SystemExit here fails the test
        assert callable(args.func)


def test_dockerfile_entrypoint_is_the_console_script() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["streamrec"]' in dockerfile
    for package in ["core", "producer", "consumer", "serving", "offline", "streamrec"]:
        assert f"COPY {package} {package}" in dockerfile


def test_every_variable_is_a_setting_with_a_valid_value(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    known = known_env_vars()
    for name in PROJECT_SERVICES:
        env = compose["services"][name]["environment"]
        unknown = {k for k in env if k.startswith("STREAMREC_") and k not in known}
        assert not unknown, f"{name}: variables that no setting reads: {unknown}"
        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
        for cls in SETTINGS:
            cls()  # raises ValidationError on a bad value
        monkeypatch.undo()


def test_compose_points_services_at_the_compose_hosts(compose: dict[str, Any]) -> None:
    env = compose["services"]["consumer"]["environment"]
    assert env["STREAMREC_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert env["STREAMREC_REDIS_URL"].startswith("redis://redis:6379")
    kafka_env = compose["services"]["kafka"]["environment"]
    assert kafka_env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    assert (
        "broker" in kafka_env["KAFKA_PROCESS_ROLES"]
        and "controller" in kafka_env["KAFKA_PROCESS_ROLES"]
    )


def test_long_running_services_have_healthchecks_and_wait_for_health(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for name in LONG_RUNNING:
        check = services[name]["healthcheck"]["test"]
        assert check[0] in {"CMD", "CMD-SHELL"} and len(check) > 1
    for name in PROJECT_SERVICES:
        for dep, cond in services[name].get("depends_on", {}).items():
            assert dep in services
            one_shot = dep in {"build-index", "redis-cluster-init"}
            expected = "service_completed_successfully" if one_shot else "service_healthy"
            assert cond["condition"] == expected, f"{name} -> {dep}"
    assert services["consumer"]["environment"]["STREAMREC_CONSUMER_HEARTBEAT_FILE"] in (
        " ".join(services["consumer"]["healthcheck"]["test"])
    )
    assert services["replay"]["profiles"] == ["replay"]


def test_the_cluster_profile_forms_three_masters_and_points_the_services_at_them(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for name in CLUSTER_NODES:
        node = services[name]
        assert node["profiles"] == ["cluster"]
        command = node["command"]
        assert command[command.index("--cluster-enabled") + 1] == "yes"
        assert command[command.index("--appendonly") + 1] == "yes"
    assert len({services[n]["volumes"][0] for n in CLUSTER_NODES}) == 3  # one volume each
    init = " ".join(services["redis-cluster-init"]["command"])
    assert all(f"{n}:6379" in init for n in CLUSTER_NODES) and "--cluster-replicas 0" in init
    for name in ("consumer-cluster", "api-cluster"):
        env = services[name]["environment"]
        assert env["STREAMREC_REDIS_CLUSTER"] == "true"
        assert env["STREAMREC_REDIS_URL"].startswith("redis://redis-node-")
        assert services[name]["profiles"] == ["cluster"]
