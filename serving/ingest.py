"""POST /events' path to Kafka: a ClickProducer opened on first use.

The producer is created lazily so the API starts (and serves recommendations)
while the broker is down; a failed start is not cached, so the next request
tries again. kafka-python is blocking, so every call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from kafka.errors import KafkaError

from core.errors import ServiceUnavailable
from core.settings import KafkaSettings
from producer.client import ClickProducer

log = logging.getLogger(__name__)


class EventSink:
    def __init__(self, kafka: KafkaSettings, *, flush_timeout_s: float = 10.0) -> None:
        self._kafka = kafka
        self._flush_timeout_s = flush_timeout_s
        self._producer: ClickProducer | None = None
        self._lock = asyncio.Lock()

    async def _get(self) -> ClickProducer:
        # The lock keeps concurrent first requests from opening two producers.
        async with self._lock:
            if self._producer is None:
                self._producer = await asyncio.to_thread(ClickProducer, self._kafka)
                log.info("kafka producer connected to %s", self._kafka.bootstrap)
            return self._producer

    async def send(self, messages: Sequence[tuple[bytes, bytes]]) -> int:
        """Send (key, encoded event) messages and wait for the broker's acknowledgement;
        raise ServiceUnavailable if it does not acknowledge them all."""
        producer = await self._get()
        await asyncio.to_thread(self._send_sync, producer, messages)
        return len(messages)

    def _send_sync(self, producer: ClickProducer, messages: Sequence[tuple[bytes, bytes]]) -> None:
        futures = [producer.send_raw(value, key) for key, value in messages]
        producer.flush(timeout=self._flush_timeout_s)
        try:
            # After flush every future is done; get() surfaces a per-record failure.
            for future in futures:
                future.get(timeout=0)
        except KafkaError as exc:
            raise ServiceUnavailable(f"broker did not accept the events: {exc}") from exc

    async def close(self) -> None:
        async with self._lock:
            if self._producer is not None:
                await asyncio.to_thread(self._producer.close, 5.0)
                self._producer = None
