"""The consumer-group worker: poll, batch, dead-letter, apply, commit; rebalance; shutdown.

Redis is the source of truth for progress: every group of the keyspace stores
the offsets of the events whose effects it holds, in the same atomic write
(consumer/state.py, consumer/store.py), and on assignment the worker seeks each
partition to the lowest of them. Histories are written every poll; item state
is aggregated and written ``item_delay_ms`` later at most. Kafka's committed
offsets follow what every group has stored, for tooling (lag); a lost Kafka
commit costs nothing but a redelivery that the store skips.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import orjson
import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from consumer.settings import ConsumerSettings
from consumer.state import ApplyResult, Ingest, PartitionBatch, Rewind
from consumer.store import RedisStateWriter
from core.errors import InvalidEvent, StreamrecError
from core.events import decode, future_limit_ms
from core.keyspace import HASH_LISTPACK_ENTRIES
from producer.client import ensure_topics

log = logging.getLogger("streamrec.consumer")
T = TypeVar("T")


def retriable(exc: BaseException) -> bool:
    """Whether a failure is worth waiting out (a dependency is away), not bad data or a bug.

    Our own errors say so themselves (``StreamrecError.retriable``). Redis
    connection and timeout errors always are. Every Kafka client error is too:
    kafka-python marks some of them non-retriable (``NoBrokersAvailable``) that a
    broker restart, exactly what we wait out, raises.
    """
    if isinstance(exc, StreamrecError):
        return exc.retriable
    # A cluster node away shows as ClusterError (the client ran out of
    # redirections/retries) or CLUSTERDOWN while the cluster re-forms.
    transient = (
        redis.ConnectionError,
        redis.TimeoutError,
        redis.exceptions.ClusterError,
        redis.exceptions.ClusterDownError,
        redis.exceptions.TryAgainError,
        KafkaError,
    )
    return isinstance(exc, transient)


@dataclass
class WorkerStats:
    polls: int = 0
    records: int = 0
    applied: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    conflicts: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def dead_letter_envelope(
    topic: str,
    partition: int,
    offset: int,
    reason: str,
    detail: str,
    key: bytes | None,
    value: bytes | None,
) -> bytes:
    """What goes to the dead-letter topic: the reason, where it came from, the raw bytes."""
    return orjson.dumps(
        {
            "reason": reason,
            "detail": detail,
            "source": {"topic": topic, "partition": partition, "offset": offset},
            "key": None if key is None else key.decode("utf-8", "replace"),
            "value": None if value is None else value.decode("utf-8", "replace"),
            "value_hex": None if value is None else value[:4096].hex(),
        }
    )


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def on_partitions_revoked(self, revoked: Any) -> None:
        # Finish the batch in flight and write the item state held back, so the
        # next owner finds everything, offsets included, in Redis. No Kafka
        # commit here: kafka-python runs listeners on its IO thread, where a
        # blocking consumer call raises; Redis holds the offsets anyway.
        self.worker.hand_over([tp.partition for tp in revoked if tp.topic == self.worker.topic])
        log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.worker.seek_to_stored(list(assigned))


class Worker:
    def __init__(self, settings: ConsumerSettings, *, stop: threading.Event | None = None) -> None:
        self.settings = settings
        self.stop = stop or threading.Event()
        self.stats = WorkerStats()
        self.topic = settings.kafka.topic
        self.redis = settings.redis.client(socket_timeout=5, socket_connect_timeout=2)
        self.store = RedisStateWriter(self.redis, settings.redis.keys, settings.state)
        self.ingest = Ingest(
            self.store,
            self.topic,
            delay_s=settings.item_delay_ms / 1000,
            max_pairs=settings.item_max_pairs,
        )
        self._consumer: KafkaConsumer | None = None
        self._dlq: KafkaProducer | None = None
        self._last_beat = 0.0
        # Pipelining, depth one: this thread applies batch N to Redis (snapshot,
        # fold, script) while the main thread polls and decodes batch N+1. One
        # thread keeps batches in order; each partition's CAS keeps them exact.
        self._applier = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamrec-apply")
        self._inflight: Future[ApplyResult] | None = None
        self._committed: dict[int, int] = {}  # what was last committed to Kafka

    # -- lifecycle -------------------------------------------------------------
    def run(
        self, *, idle_exit_s: float | None = None, max_events: int | None = None
    ) -> WorkerStats:
        """Consume until stopped (or idle for ``idle_exit_s``, or ``max_events`` applied)."""
        k = self.settings.kafka
        self._retry(lambda: ensure_topics(k), f"the broker at {k.bootstrap}")
        self._consumer = KafkaConsumer(
            bootstrap_servers=k.bootstrap,
            group_id=self.settings.group_id,
            client_id=f"streamrec-consumer-{threading.get_native_id()}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.settings.batch_size,
            session_timeout_ms=self.settings.session_timeout_ms,
            heartbeat_interval_ms=self.settings.heartbeat_interval_ms,
            max_poll_interval_ms=self.settings.max_poll_interval_ms,
            fetch_max_bytes=32 * 1024 * 1024,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
        )
        # acks=1 without idempotence, said explicitly (kafka-python would switch
        # it off with a warning): a duplicate dead letter is harmless.
        self._dlq = KafkaProducer(
            bootstrap_servers=k.bootstrap, linger_ms=5, acks=1, enable_idempotence=False
        )
        self._check_redis()
        self._consumer.subscribe([self.topic], listener=_Rebalance(self))
        log.info("consuming %s as group %s", self.topic, self.settings.group_id)
        last_data = time.monotonic()
        last_report = time.monotonic()
        try:
            while not self.stop.is_set():
                polled = self._retry(self._poll, "the broker")
                self.stats.polls += 1
                now = time.monotonic()
                self._beat(now)
                if polled:
                    last_data = now
                    self.handle(polled)
                elif self._inflight is not None:
                    self._drain_or_rewind()  # nothing new: finish the batch in flight, commit it
                elif self.ingest.due():
                    self._inflight = self._applier.submit(self._flush)
                elif idle_exit_s is not None and now - last_data > idle_exit_s:
                    log.info("idle for %.1fs; stopping", idle_exit_s)
                    break
                if max_events is not None and self.stats.applied >= max_events:
                    break
                if now - last_report > 10:
                    last_report = now
                    log.info("progress %s", self.stats.as_dict())
            self._drain_or_rewind()
            self._finish()
        finally:
            self.close()
        log.info("stopped: %s", self.stats.as_dict())
        return self.stats

    def _check_redis(self) -> None:
        """Warn when Redis keeps co rows as listpacks (several times slower per update)."""
        try:
            raw = self.redis.config_get("hash-max-listpack-entries")
        except redis.ResponseError:  # CONFIG refused (managed Redis): nothing to check
            return
        value = next(iter(raw.values()), None) if raw else None
        if value is not None and int(value) > HASH_LISTPACK_ENTRIES:
            log.warning(
                "Redis has hash-max-listpack-entries %s: co-occurrence rows will be slow to "
                "update; set it to %d or less (CONFIG SET hash-max-listpack-entries %d)",
                value,
                HASH_LISTPACK_ENTRIES,
                HASH_LISTPACK_ENTRIES,
            )

    def _poll(self) -> dict[TopicPartition, list[Any]]:
        assert self._consumer is not None
        polled: dict[TopicPartition, list[Any]] = self._consumer.poll(
            timeout_ms=self.settings.poll_timeout_ms
        )
        return polled

    def _beat(self, now: float) -> None:
        path = self.settings.heartbeat_file
        if path is not None and now - self._last_beat >= 1.0:
            self._last_beat = now
            path.touch()

    def close(self) -> None:
        if self._inflight is not None:
            try:
                self.drain()
                self._finish()
            except Exception:  # e.g. stopped while Redis was away: redelivered next time
                log.exception("the batch in flight was not applied")
        self._applier.shutdown(wait=True)
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False)
            except Exception:  # closing must not mask the reason we are closing
                log.exception("error closing the Kafka consumer")
            self._consumer = None
        if self._dlq is not None:
            try:
                self._dlq.close(timeout=5)
            except Exception:
                log.exception("error closing the dead-letter producer")
            self._dlq = None
        self.redis.close()

    # -- the batch path --------------------------------------------------------
    def handle(self, polled: dict[TopicPartition, list[Any]]) -> None:
        """Decode and dead-letter on this thread, then hand the batch to the applier."""
        batches = [self._decode(tp, records) for tp, records in polled.items() if records]
        self.stats.records += sum(len(r) for r in polled.values())
        if any(b.rejected for b in batches):
            self._retry(lambda: self._dead_letter(batches, polled), "the dead-letter topic")
        try:
            self.drain()
        except Rewind as rewind:
            # The store moved: this poll is dropped too, and read again from where
            # it started (or from where the store says, for the partitions it names).
            self._rewind(rewind, {b.partition: b.first_offset for b in batches})
            return
        self._inflight = self._applier.submit(self._apply, batches)

    def _apply(self, batches: list[PartitionBatch]) -> ApplyResult:
        return self._retry(lambda: self.ingest.apply(batches), "Redis")

    def _flush(self) -> ApplyResult:
        self._retry(self.ingest.flush, "Redis")
        return ApplyResult()

    def _finish(self) -> None:
        """Write everything held back (stopping): on this thread, nothing in flight."""
        try:
            self._retry(self.ingest.flush, "Redis")
        except Rewind as rewind:  # another owner took over: nothing of ours to write
            log.warning("not written at stop: %s", rewind)
        self._commit()

    def hand_over(self, partitions: list[int]) -> None:
        """Partitions revoked: finish the batch in flight and write what is held back."""
        try:
            self.drain(commit=False)
            self._retry(self.ingest.flush, "Redis")
        except Rewind as rewind:
            log.warning("partitions handed over with their last writes refused: %s", rewind)
        self.ingest.forget(partitions)

    def _drain_or_rewind(self) -> None:
        try:
            self.drain()
        except Rewind as rewind:
            self._rewind(rewind, {})

    def drain(self, *, commit: bool = True) -> None:
        """Wait for the batch in flight, count it, and (by default) commit to Kafka what
        every group has stored. Raises :class:`Rewind` when the store moved under us."""
        if self._inflight is None:
            return
        future, self._inflight = self._inflight, None
        result = future.result()
        self.stats.applied += result.applied_events
        self.stats.skipped += result.skipped_events
        self.stats.dead_lettered += result.rejected
        self.stats.conflicts += result.conflicts
        if commit:
            self._commit()

    def _rewind(self, rewind: Rewind, dropped: dict[int, int]) -> None:
        """Seek back: the partitions the store names to its offsets, the rest of a
        dropped poll to where that poll started."""
        assert self._consumer is not None
        self.stats.conflicts += 1
        targets: dict[int, int | None] = {**dropped, **rewind.offsets}
        log.warning("rewinding %s: %s", targets, rewind)
        for p, offset in targets.items():
            # None here: no group holds anything any more; read it all again.
            self._seek(TopicPartition(self.topic, p), -1 if offset is None else offset)

    def _seek(self, tp: TopicPartition, offset: int | None) -> None:
        """Seek to ``offset``; -1: the beginning; None: leave the consumer group's position."""
        assert self._consumer is not None
        if offset is None:
            return
        if offset < 0:
            self._consumer.seek_to_beginning(tp)
        else:
            self._consumer.seek(tp, offset)

    def _decode(self, tp: TopicPartition, records: list[Any]) -> PartitionBatch:
        batch = PartitionBatch(tp.partition, records[0].offset, records[-1].offset + 1)
        latest = future_limit_ms(self.settings.max_future_ms)
        for rec in records:
            try:
                batch.events.append((rec.offset, decode(rec.value, latest_ms=latest)))
            except InvalidEvent as exc:
                batch.rejected.append((rec.offset, exc))
        return batch

    def _dead_letter(
        self, batches: list[PartitionBatch], polled: dict[TopicPartition, list[Any]]
    ) -> None:
        assert self._dlq is not None
        raw = {(tp.partition, r.offset): r for tp, records in polled.items() for r in records}
        for batch in batches:
            for offset, exc in batch.rejected:
                rec = raw[(batch.partition, offset)]
                envelope = dead_letter_envelope(
                    self.topic, batch.partition, offset, exc.reason, exc.detail, rec.key, rec.value
                )
                self._dlq.send(self.settings.kafka.dlq_topic, key=rec.key, value=envelope)
                log.warning("dead-lettered %s[%d]@%d: %s", self.topic, batch.partition, offset, exc)
        # The offsets move past these records only once the broker has them.
        self._dlq.flush(timeout=10)

    def _commit(self) -> None:
        durable = {p: n for p, n in self.ingest.durable_offsets().items() if n is not None}
        # What every group has stored moves only with a flush: most polls have
        # nothing new to commit, and each commit is a round trip to the broker.
        if self._consumer is None or not durable or durable == self._committed:
            return
        offsets = {
            TopicPartition(self.topic, p): OffsetAndMetadata(n, "", -1) for p, n in durable.items()
        }
        try:
            self._consumer.commit(offsets)
            self._committed = durable
        except KafkaError as exc:
            # Redis holds the truth; a failed Kafka commit only delays lag reporting.
            log.warning("Kafka offset commit failed (%s); Redis offsets are authoritative", exc)

    def seek_to_stored(self, assigned: list[TopicPartition]) -> None:
        assert self._consumer is not None
        mine = [tp for tp in assigned if tp.topic == self.topic]
        offsets = self._retry(
            lambda: self.ingest.resume_offsets([tp.partition for tp in mine]), "Redis"
        )
        for tp in mine:
            self._seek(tp, offsets.get(tp.partition))
        log.info(
            "assigned %s; resuming from Redis offsets %s (-1: the beginning)",
            sorted(tp.partition for tp in mine),
            offsets,
        )

    # -- retry -----------------------------------------------------------------
    def _retry(self, fn: Callable[[], T], what: str) -> T:
        """Call ``fn`` until it succeeds, backing off while ``what`` is unavailable."""
        delay = self.settings.retry_initial_s
        attempt = 0
        while True:
            try:
                return fn()
            except Exception as exc:
                if not retriable(exc) or self.stop.is_set():
                    raise
                attempt += 1
                log.warning(
                    "waiting for %s (attempt %d, retry in %.1fs): %s", what, attempt, delay, exc
                )
                self.stop.wait(delay)
                delay = min(delay * 2, self.settings.retry_max_s)
