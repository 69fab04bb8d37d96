"""The load generator: open-loop (fixed rate) or closed-loop (max throughput) GETs.

It runs in its own process (``run_in_process``) so that its CPU never competes
with the measuring loop of the caller, and it speaks HTTP/1.1 over raw asyncio
streams: a general client (httpx) costs ~0.3 ms of Python per request, which at
a few thousand requests a second would make the generator the bottleneck.

Latency is measured from the *scheduled* send time, not from when a connection
became free, so queueing inside the generator or the server shows up in the
numbers instead of silently lowering the offered rate.

Loopback only: the target host must be 127.0.0.1 (the load test's brief).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

LOOPBACK = "127.0.0.1"


@dataclass
class Record:
    """One request: scheduled offset (s), latency (ms), status (0 = timeout or transport error)."""

    at: float
    latency_ms: float
    status: int
    user: str
    items: list[str] = field(default_factory=list)
    retry_after: str | None = None  # the Retry-After header of a 503, if any
    late_ms: float = 0.0  # how far behind its schedule the generator issued it
    # The newest of the answer's ``sources``: the user's last click the state held.
    newest: str | None = None


@dataclass(frozen=True)
class LoadPlan:
    port: int
    path_template: str  # e.g. "/recommendations/{user}?k=10"
    schedule: Sequence[float] | None  # open loop: send offsets; None = closed loop
    users: Sequence[str]  # closed loop / fallback pool
    timeline_due: Sequence[float] = ()  # open loop: pick users active at each send time
    timeline_users: Sequence[str] = ()
    active_window: int = 2000
    connections: int = 32
    duration_s: float = 10.0  # closed loop length; also the hard bound for open loop
    timeout_s: float = 2.0
    keep_items: bool = True  # parse bodies for item ids (online HR)
    seed: int = 7


class _NotAnswered(ConnectionResetError):
    """The connection ended before any byte of the response: the server never took the request."""


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.closing = False  # the server said Connection: close

    async def get(self, path: str) -> tuple[int, bytes, str | None]:
        try:
            self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}\r\n\r\n".encode())
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            raise _NotAnswered("closed before answering") from exc
        except ConnectionError as exc:
            raise _NotAnswered(str(exc)) from exc
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        close = False
        retry_after = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            lname = name.strip().lower()
            if lname == b"content-length":
                length = int(value)
            elif lname == b"connection" and value.strip().lower() == b"close":
                close = True
            elif lname == b"retry-after":
                retry_after = value.strip().decode()
        body = await self.reader.readexactly(length) if length else b""
        # A complete answer counts even when the server closes after it; the
        # connection is just not reused.
        self.closing = close
        return status, body, retry_after

    def close(self) -> None:
        self.writer.close()


class _Pool:
    """At most ``size`` keep-alive connections; a broken one is dropped, not reused."""

    def __init__(self, port: int, size: int) -> None:
        self.port = port
        self.idle: list[_Conn] = []
        self.slots = asyncio.Semaphore(size)

    async def get(self, path: str, timeout_s: float) -> tuple[int, bytes, str | None]:
        async with self.slots:
            conn = self._reusable()
            if conn is not None:
                try:
                    reply = await asyncio.wait_for(conn.get(path), timeout_s)
                except _NotAnswered:
                    # The server closed this idle keep-alive connection as the
                    # request went out (uvicorn drops them after 5 s idle), so it
                    # never saw it: sent again once on a new connection, as HTTP
                    # clients do. Anything after the first response byte, or a
                    # timeout, is not retried.
                    conn.close()
                except BaseException:
                    conn.close()
                    raise
                else:
                    self._release(conn)
                    return reply
            conn = None
            try:
                r, w = await asyncio.wait_for(
                    asyncio.open_connection(LOOPBACK, self.port), timeout_s
                )
                conn = _Conn(r, w)
                reply = await asyncio.wait_for(conn.get(path), timeout_s)
            except BaseException:
                if conn is not None:
                    conn.close()
                raise
            self._release(conn)
            return reply

    def _release(self, conn: _Conn) -> None:
        if conn.closing:
            conn.close()
        else:
            self.idle.append(conn)

    def _reusable(self) -> _Conn | None:
        """The most recently used idle connection the server has not closed yet."""
        while self.idle:
            conn = self.idle.pop()
            if not conn.reader.at_eof():
                return conn
            conn.close()
        return None

    def close(self) -> None:
        for conn in self.idle:
            conn.close()


def _answer(body: bytes) -> tuple[list[str], str | None]:
    """The item ids of a recommendation body and its newest source (None if it has none)."""
    try:
        doc = orjson.loads(body)
        items = [str(i["item_id"]) for i in doc.get("items", [])]
        sources = doc.get("sources") or []
        return items, str(sources[0]) if sources else None
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
        return [], None


async def _one(
    pool: _Pool, plan: LoadPlan, user: str, at: float, t0: float, out: list[Record]
) -> None:
    path = plan.path_template.format(user=user)
    late = (time.perf_counter() - t0 - at) * 1000.0
    try:
        # The whole request, waiting for a free connection included, is bounded:
        # past timeout_s it counts as failed, so a stalled server cannot make
        # the run (or its latency figures) unbounded.
        status, body, retry_after = await asyncio.wait_for(
            pool.get(path, plan.timeout_s), plan.timeout_s
        )
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError):
        status, body, retry_after = 0, b"", None
    latency = (time.perf_counter() - t0 - at) * 1000.0
    items, newest = _answer(body) if plan.keep_items and status == 200 else ([], None)
    out.append(Record(at, latency, status, user, items, retry_after, late, newest))


def _picker(plan: LoadPlan) -> Callable[[float], str]:
    import random

    import numpy as np

    rnd = random.Random(plan.seed)
    due = np.asarray(plan.timeline_due, dtype=np.float64)
    users = plan.timeline_users

    def pick(at: float) -> str:
        if len(due):
            end = int(np.searchsorted(due, at, side="right"))
            lo = max(0, end - plan.active_window)
            if end > lo:
                return users[rnd.randrange(lo, end)]
        return plan.users[rnd.randrange(len(plan.users))]

    return pick


async def run_plan(plan: LoadPlan, t0: float | None = None) -> list[Record]:
    """Run the plan; open loop when it has a schedule, else closed loop for duration_s."""
    pool = _Pool(plan.port, plan.connections)
    out: list[Record] = []
    pick = _picker(plan)
    start = time.perf_counter() if t0 is None else t0
    try:
        if plan.schedule is not None:
            tasks: set[asyncio.Task[None]] = set()
            for at in plan.schedule:
                if at > plan.duration_s:
                    break
                delay = start + at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(_one(pool, plan, pick(at), at, start, out))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                # Each task ends within timeout_s by construction; the margin is
                # for a starved process, and anything left is cancelled.
                _, pending = await asyncio.wait(tasks, timeout=plan.timeout_s + 5.0)
                for task in pending:
                    task.cancel()
        else:

            async def worker() -> None:
                while (at := time.perf_counter() - start) < plan.duration_s:
                    await _one(pool, plan, pick(at), at, start + 0.0, out)

            # Closed loop: each worker sends its next request when the last one
            # returns; latency is then simply the round trip.
            await asyncio.gather(*(worker() for _ in range(plan.connections)))
    finally:
        pool.close()
    return out


def _child(plan: LoadPlan, start_at: float, conn: Any) -> None:
    # Wait for the shared wall-clock start (time.time: comparable across processes).
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    records = asyncio.run(run_plan(plan))
    conn.send(
        [
            (r.at, r.latency_ms, r.status, r.user, r.items, r.retry_after, r.late_ms, r.newest)
            for r in records
        ]
    )
    conn.close()


class LoadProcess:
    """``run_plan`` in a child process from wall-clock ``start_at``; ``join`` returns records."""

    def __init__(self, plan: LoadPlan, start_at: float) -> None:
        ctx = mp.get_context("spawn")
        self._recv, send = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_child, args=(plan, start_at, send), daemon=True)
        self._proc.start()
        send.close()
        self._bound = max(start_at - time.time(), 0) + plan.duration_s + plan.timeout_s + 30.0

    def join(self) -> list[Record]:
        try:
            if not self._recv.poll(self._bound):
                raise TimeoutError("the load generator did not report in time")
            rows = self._recv.recv()
        finally:
            self._proc.join(timeout=5)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()
        return [Record(*row) for row in rows]
