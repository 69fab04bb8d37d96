"""What the page's live panel shows (``GET /live``): throughput, consumer lag, latency.

- events applied, from the consumer's counter in Redis, and the rate since this
  worker's previous answer;
- lag: events on the topic past what the consumer group has committed (the
  consumer commits what every group of the keyspace has stored, so this
  includes item state held back for up to ``item_delay_ms``), read with a Kafka
  admin client in a thread, at most once a second, None when the broker does
  not answer;
- p50/p99 of this worker's last recommendation latencies (serving.metrics).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from core.settings import KafkaSettings

log = logging.getLogger("streamrec.serving")

LAG_EVERY_S = 1.0


class ConsumerLag:
    """The consumer group's lag on the click topic, cached for a second."""

    def __init__(self, kafka: KafkaSettings, group: str) -> None:
        self.kafka = kafka
        self.group = group
        self._admin: Any = None
        self._lock = threading.Lock()
        self._at = -float("inf")
        self._value: int | None = None

    async def read(self) -> int | None:
        if time.monotonic() - self._at < LAG_EVERY_S:
            return self._value
        self._value = await asyncio.to_thread(self._read)
        self._at = time.monotonic()
        return self._value

    def _read(self) -> int | None:
        from kafka import KafkaAdminClient, TopicPartition
        from kafka.admin import OffsetSpec

        with self._lock:
            try:
                if self._admin is None:
                    self._admin = KafkaAdminClient(
                        bootstrap_servers=self.kafka.bootstrap,
                        client_id="streamrec-api-lag",
                        request_timeout_ms=2000,
                    )
                parts = self._admin.describe_topics([self.kafka.topic])[0]["partitions"]
                tps = [TopicPartition(self.kafka.topic, p["partition_index"]) for p in parts]
                ends = self._admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in tps})
                done = self._admin.list_group_offsets({self.group: tps}).get(self.group, {})
            except Exception as exc:  # the panel shows "n/a"; the API goes on
                log.info("consumer lag unavailable: %r", exc)
                self.close()
                return None
            lag = 0
            for tp in tps:
                meta = done.get(tp)
                committed = meta.offset if meta is not None and meta.offset >= 0 else 0
                lag += max(0, ends[tp].offset - committed)
            return lag

    def close(self) -> None:
        if self._admin is not None:
            try:
                self._admin.close()
            except Exception:
                log.debug("closing the lag admin client failed", exc_info=True)
            self._admin = None


class Throughput:
    """Events applied per second between two answers of this worker."""

    def __init__(self) -> None:
        self._last: tuple[float, int] | None = None

    def rate(self, applied: int) -> float | None:
        now = time.monotonic()
        last, self._last = self._last, (now, applied)
        if last is None or now - last[0] <= 0 or now - last[0] > 60:
            return None
        return max(0.0, (applied - last[1]) / (now - last[0]))
