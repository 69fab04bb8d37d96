"""Write auth: when keys are configured, POST /events needs one of them.

A key comes as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. It is
compared with every configured key in constant time (``hmac.compare_digest``,
and no early exit), so neither a key's content nor which key matched shows in
the response time. Several keys may be configured at once, so one can be
rotated in before the old one is removed. Reads stay open.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from fastapi import Request

from serving.errors import ApiError
from serving.state import STATE_KEY, AppState

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="streamrec"'}


def presented_key(request: Request) -> str | None:
    """The key the client sent, if any (Bearer first, then X-API-Key)."""
    auth = request.headers.get("authorization")
    if auth is not None:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = request.headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


def key_matches(presented: str, keys: Sequence[str]) -> bool:
    """Whether ``presented`` is one of ``keys``, comparing with all of them."""
    given = presented.encode()
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key.encode())
    return found


async def require_write_key(request: Request) -> None:
    """A route dependency: 401 unless auth is off or the request carries a configured key."""
    state: AppState = getattr(request.state, STATE_KEY)
    keys = state.settings.write_key_list
    if not keys:
        return
    presented = presented_key(request)
    if presented is None:
        raise ApiError(
            401, "unauthorized", "POST /events needs an API key (Authorization: Bearer <key> "
            "or X-API-Key)", headers=CHALLENGE,
        )  # fmt: skip
    if not key_matches(presented, keys):
        raise ApiError(401, "unauthorized", "the API key is not valid", headers=CHALLENGE)
