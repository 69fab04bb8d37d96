"""The load generator's connection pool against a real loopback HTTP server.

Not a mock: an asyncio server on 127.0.0.1 that answers, closes keep-alive
connections, or says ``Connection: close``, the way uvicorn does.
"""

from __future__ import annotations

import asyncio

from streamrec.loadtest.http import _Pool


class _Server:
    """Answers each request with the next scripted action for its connection."""

    def __init__(self, actions: list[str]) -> None:
        self.actions = actions  # per request, in arrival order: "ok", "close-after", "drop"
        self.received = 0
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                action = self.actions[self.received]
                self.received += 1
                if action == "drop":  # closed without answering, like an idle close racing
                    break
                body = b'{"items": []}'
                status = b"200 OK" if action == "ok" else b"503 Service Unavailable"
                head = b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\n" % len(body)
                if action == "close-after":
                    head += b"Connection: close\r\n"
                writer.write(head + b"\r\n" + body)
                await writer.drain()
                if action == "close-after":
                    break
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()


async def _run(actions: list[str], requests: int) -> tuple[_Server, list[int]]:
    server = _Server(actions)
    srv = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    pool = _Pool(port, 1)
    statuses = []
    try:
        for _ in range(requests):
            status, _, _ = await pool.get("/x", 2.0)
            statuses.append(status)
    finally:
        pool.close()
        srv.close()
        await srv.wait_closed()
    return server, statuses


def test_a_request_the_server_dropped_unanswered_is_sent_again_once() -> None:
    server, statuses = asyncio.run(_run(["ok", "drop", "ok"], 2))
    assert statuses == [200, 200]
    # The dropped request was never answered, so it was sent again, on a new connection.
    assert (server.received, server.connections) == (3, 2)


def test_an_answer_with_connection_close_counts_and_is_not_sent_again() -> None:
    server, statuses = asyncio.run(_run(["ok", "close-after", "ok"], 3))
    assert statuses == [200, 503, 200]  # the 503 is recorded as the server said it
    assert (server.received, server.connections) == (3, 2)
