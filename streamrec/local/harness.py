"""A live streamrec deployment on the local stack, for the demo, load tests and live evaluation.

``LiveRun`` starts what is missing (Redis, the broker), gives the run its own
topic and Redis namespace, runs consumers and the API as child processes with
the matching environment, and stops everything it started on exit. Nothing here
knows about a particular job; callers replay, query and measure.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from urllib.parse import urlparse

import httpx
import redis

from core.errors import ServiceUnavailable
from core.settings import KafkaSettings, PathSettings, RedisSettings, settings_env
from producer.client import ensure_topics
from streamrec.local.stack import LocalStack, free_port, wait_until


def local_ports(redis_settings: RedisSettings, kafka: KafkaSettings) -> tuple[int, int]:
    """The stack's ports come from the same settings the clients use: one source of truth."""
    rport = urlparse(redis_settings.url).port or 6379
    first = kafka.bootstrap.split(",")[0]
    return rport, int(first.rsplit(":", 1)[1])


def process_env(
    kafka: KafkaSettings, redis_settings: RedisSettings, artifacts: Path | None = None
) -> dict[str, str]:
    """This process's environment, with the settings a child streamrec process must share."""
    env = {**os.environ, **settings_env(redis_settings), **settings_env(kafka)}
    if artifacts is not None:
        paths = PathSettings(artifacts_dir=artifacts.resolve())
        env.update(settings_env(paths, ["artifacts_dir"]))
    return env


class Children:
    """Child processes; each is stopped with SIGTERM, then SIGKILL after a bound."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.procs.append((name, proc))
        return proc

    def check(self) -> None:
        """Raise, with the tail of its log, if any child has exited."""
        for name, proc in self.procs:
            if proc.poll() is not None:
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise ServiceUnavailable(f"the {name} exited with code {proc.returncode}:\n{tail}")

    def stop(self, name: str | None = None, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        chosen = [(n, p) for n, p in reversed(self.procs) if name is None or n == name]
        for _, proc in chosen:
            if proc.poll() is None:
                proc.send_signal(sig)
        for _, proc in chosen:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = [(n, p) for n, p in self.procs if (n, p) not in chosen]


@dataclass
class LiveRun:
    """One isolated run: its own topic, Redis namespace, artifacts dir and child processes."""

    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    partitions: int | None = None
    keep_running: bool = False

    def __post_init__(self) -> None:
        paths = PathSettings()
        base_redis, base_kafka = RedisSettings(), KafkaSettings()
        self.redis = base_redis.model_copy(update={"namespace": f"run-{self.run_id}"})
        update: dict[str, object] = {
            "topic": f"run-{self.run_id}",
            "dlq_topic": f"run-{self.run_id}.dlq",
        }
        if self.partitions is not None:
            update["partitions"] = self.partitions
        self.kafka = base_kafka.model_copy(update=update)
        self.dir = paths.state_dir / "runs" / self.run_id
        self.artifacts = self.dir / "artifacts"
        self.stack = LocalStack(paths.state_dir, *local_ports(base_redis, base_kafka))
        self.children = Children(self.dir)
        self.started: list[str] = []
        self.api_url = ""
        self.client: redis.Redis | None = None

    # -- lifecycle ---------------------------------------------------------------
    def __enter__(self) -> LiveRun:
        self.started = [s.name for s in self.stack.up()]
        self.client = self.redis.client(decode_responses=True)
        ensure_topics(self.kafka)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.keep_running:
            return
        self.children.stop()
        if self.client is not None:
            # Before the stack goes down too: its Redis persists (AOF), and a
            # run's namespace must not outlive the run.
            self._drop_namespace()
            self.client.close()
        if self.started:
            self.stack.down()

    @property
    def env(self) -> dict[str, str]:
        """The environment that points a streamrec process at this run."""
        return process_env(self.kafka, self.redis, self.artifacts)

    # -- processes -----------------------------------------------------------------
    @property
    def group(self) -> str:
        """The run's consumer group."""
        return f"run-{self.run_id}"

    def start_consumer(
        self, name: str = "consumer", extra_env: dict[str, str] | None = None
    ) -> str:
        """Start ``streamrec consume``; returns the URL of its Prometheus metrics."""
        port = free_port()
        self.children.start(
            name,
            [sys.executable, "-m", "streamrec.cli", "consume", "--group", self.group],
            {
                **self.env,
                "STREAMREC_CONSUMER_METRICS_PORT": str(port),
                **(extra_env or {}),
            },
        )
        return f"http://127.0.0.1:{port}/metrics"

    def start_api(
        self, workers: int = 1, extra_env: dict[str, str] | None = None, timeout: float = 60
    ) -> str:
        port = free_port()
        self.api_url = f"http://127.0.0.1:{port}"
        self.children.start(
            "api",
            [
                sys.executable,
                "-m",
                "streamrec.cli",
                "--log-level",
                "WARNING",
                "serve",
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
            # The page's live panel shows this run's consumer group's lag.
            {**self.env, "STREAMREC_SERVING_CONSUMER_GROUP": self.group, **(extra_env or {})},
        )
        wait_until(lambda: self._alive() and self._healthy(), timeout, "the API")
        return self.api_url

    def applied(self) -> int:
        """Events the consumers have applied or dead-lettered so far (from Redis)."""
        self.children.check()
        assert self.client is not None
        stats: dict[str, str] = self.client.hgetall(self.redis.keys.stats)  # type: ignore[assignment]
        return sum(int(v) for k, v in stats.items() if k == "events" or k.startswith("dlq:"))

    def wait_applied(self, n: int, timeout: float = 300) -> float:
        """Block until ``n`` events are applied; return the seconds it took."""
        started = time.perf_counter()
        wait_until(lambda: self.applied() >= n, timeout, f"the consumer to apply {n} events")
        return time.perf_counter() - started

    def _alive(self) -> bool:
        self.children.check()
        return True

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def _drop_namespace(self) -> None:
        assert self.client is not None
        with contextlib.suppress(redis.RedisError):
            keys = list(self.client.scan_iter(match=self.redis.keys.pattern(), count=1000))
            for lo in range(0, len(keys), 1000):
                self.client.delete(*keys[lo : lo + 1000])
