"""A local Redis Cluster: three masters on free ports, for tests and `streamrec stack up --cluster`.

Each node is a ``redis-server --cluster-enabled yes`` with its own directory,
log and pid file under the stack's state directory (as the single node has);
``redis-cli --cluster create`` joins them once, and a formed cluster is
reused. Keys that must change together share a hash tag (core/keyspace.py),
so every script touches one slot.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

from core.errors import ConfigError, ServiceUnavailable
from core.keyspace import HASH_LISTPACK_ENTRIES
from streamrec.local.stack import (
    Service,
    free_port,
    port_open,
    redis_binary,
    redis_ping,
    start_all,
    wait_until,
)

MASTERS = 3


def free_cluster_ports(n: int = MASTERS) -> list[int]:
    """``n`` ports that are free with their cluster bus ports (port + 10000)."""
    out: list[int] = []
    while len(out) < n:
        port = free_port()
        if port + 10000 < 65536 and not port_open(port + 10000) and port not in out:
            out.append(port)
    return out


def cluster_node(state_dir: Path, port: int) -> Service:
    data = state_dir / f"redis-cluster-{port}"
    data.mkdir(parents=True, exist_ok=True)
    args = [
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data.resolve()),
        "--cluster-enabled", "yes",
        "--cluster-config-file", f"nodes-{port}.conf",
        "--cluster-node-timeout", "3000",
        "--appendonly", "yes",
        "--save", "",
        "--daemonize", "no",
        "--protected-mode", "yes",
        "--hash-max-listpack-entries", str(HASH_LISTPACK_ENTRIES),
    ]  # fmt: skip
    return Service("redis-cluster", redis_binary(), args, port, lambda: redis_ping(port), state_dir)


def cluster_state(port: int) -> str:
    """``cluster_state`` as the node on ``port`` reports it ("" if it does not answer)."""
    try:
        client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
        info = client.execute_command("CLUSTER INFO")
        client.close()
    except redis.RedisError:
        return ""
    if isinstance(info, dict):  # redis-py parses the reply
        return str(info.get("cluster_state", ""))
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith("cluster_state:"):
            return line.split(":", 1)[1].strip()
    return ""


def _redis_cli() -> str:
    found = shutil.which("redis-cli")
    if found is None:
        raise ConfigError(
            "redis-cli not found (needed to form a Redis Cluster)",
            hint="install redis-tools (Debian/Ubuntu), which ./run.sh does",
        )
    return found


@dataclass
class LocalCluster:
    """Three masters on ``ports``: start (and form once), stop, report."""

    state_dir: Path
    ports: Sequence[int]

    def nodes(self) -> list[Service]:
        return [cluster_node(self.state_dir, port) for port in self.ports]

    @property
    def url(self) -> str:
        """Any node's URL: the cluster client discovers the rest."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def up(self) -> list[Service]:
        """Start the nodes that are not running and form the cluster once."""
        return start_all(self.nodes(), then=self._form)

    def _form(self) -> None:
        if all(cluster_state(p) == "ok" for p in self.ports):
            return
        if cluster_state(self.ports[0]) != "ok":
            argv = [_redis_cli(), "--cluster", "create"]
            argv += [f"127.0.0.1:{p}" for p in self.ports]
            argv += ["--cluster-replicas", "0", "--cluster-yes"]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
            if done.returncode != 0 and "already" not in (done.stdout + done.stderr):
                raise ServiceUnavailable(
                    f"redis-cli --cluster create failed: {(done.stdout + done.stderr)[-800:]}"
                )
        wait_until(
            lambda: all(cluster_state(p) == "ok" for p in self.ports),
            30,
            f"the Redis Cluster on ports {list(self.ports)} to be ok",
        )

    def down(self) -> list[str]:
        return [f"redis-cluster:{n.port}" for n in self.nodes() if n.stop()]

    def status(self) -> dict[str, str]:
        out = {f"redis-cluster:{n.port}": n.status() for n in self.nodes()}
        if any(n.recorded_pid() is not None for n in self.nodes()):
            out["redis-cluster"] = f"cluster_state {cluster_state(self.ports[0]) or 'unknown'}"
        return out
