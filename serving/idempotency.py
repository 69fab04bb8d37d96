"""POST /events with an ``Idempotency-Key``: a batch retried within the window is sent once.

The first request with a key claims it in Redis (``SET NX`` with the window as
its TTL, ``{ns}:idem:{key}``) before it sends anything, and once the broker has
acknowledged the batch the claim records how many events were accepted. A
repeat within the window is answered from the claim (202, ``replayed: true``)
and sends nothing; one that arrives while the first is still sending gets 409
``in_progress``; a repeat with a different body gets 409
``idempotency_key_reused`` (a conflict with what the key already holds: the
request itself is valid, so not a 422). If the first send fails the claim is dropped, so
the client's retry sends. Without the header nothing changes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import redis.asyncio as aioredis

_PENDING = "pending"


def fingerprint(messages: Sequence[tuple[bytes, bytes]]) -> str:
    """What the batch was, so a key reused with another body is told apart."""
    h = hashlib.sha256()
    for key, value in messages:
        h.update(len(key).to_bytes(4, "big") + key + len(value).to_bytes(4, "big") + value)
    return h.hexdigest()[:32]


class Claim:
    """One request's hold on an idempotency key."""

    def __init__(self, client: aioredis.Redis, name: str, batch: str, window_s: int) -> None:
        self.client = client
        self.name = name
        self.batch = batch
        self.window_s = window_s

    async def take(self) -> str | None:
        """None when this request holds the key now; else what the holder recorded:
        ``pending:<batch>`` (still sending) or ``done:<batch>:<accepted>``."""
        if await self.client.set(self.name, f"{_PENDING}:{self.batch}", nx=True, ex=self.window_s):
            return None
        found = await self.client.get(self.name)
        if found is None:  # it expired between the two calls: take it now
            return await self.take()
        return str(found)

    async def done(self, accepted: int) -> None:
        await self.client.set(self.name, f"done:{self.batch}:{accepted}", ex=self.window_s)

    async def drop(self) -> None:
        await self.client.delete(self.name)
