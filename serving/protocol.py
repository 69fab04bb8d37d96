"""The HTTP/1.1 protocol the API runs: uvicorn's httptools protocol with two bounds.

uvicorn answers a request it cannot parse itself, before the application sees
it, with a ``text/plain`` 400; and httptools buffers a request head of any
size. Here:

- a request the parser refuses gets the API's JSON error shape
  (``{"error": {"code": "bad_request", "message": ...}}``, serving.errors);
- a request head (request line and headers) larger than
  ``STREAMREC_SERVING_MAX_HEADER_BYTES`` (default 16 KiB, what a browser's
  cookies and a bearer token fit in many times over) is answered 431
  ``headers_too_large`` and the connection closed, counted on the raw bytes
  received while the head is incomplete, so a head that never ends is cut off
  at the bound too.

``streamrec serve`` selects it (``uvicorn.run(http=...)``).
"""

from __future__ import annotations

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving.settings import ServingSettings

_REASONS = {400: b"Bad Request", 431: b"Request Header Fields Too Large"}
_max_head_bytes: int | None = None


def max_head_bytes() -> int:
    global _max_head_bytes
    if _max_head_bytes is None:
        _max_head_bytes = ServingSettings().max_header_bytes
    return _max_head_bytes


class HttpProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with JSON parse errors and a bounded request head."""

    _head_bytes = 0  # raw bytes of the current request head so far (0: not in a head)
    _in_head = True  # a connection starts waiting for a request line

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if (
            self._in_head
            and self._head_bytes > max_head_bytes()
            and not self.transport.is_closing()
        ):
            self.logger.warning("request head over %d bytes: 431", max_head_bytes())
            self._send_error(
                431, "headers_too_large", f"request head over {max_head_bytes()} bytes"
            )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        # Keep-alive: whatever arrives next starts a new head.
        self._in_head = True
        self._head_bytes = 0
        super().on_response_complete()

    def send_400_response(self, msg: str) -> None:
        self._send_error(400, "bad_request", msg)

    def _send_error(self, status: int, code: str, message: str) -> None:
        body = orjson.dumps({"error": {"code": code, "message": message}})
        head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: %d\r\n" % len(body),
                b"connection: close\r\n",
                b"\r\n",
            ]
        )
        self.transport.write(b"".join(head) + body)
        self.transport.close()
