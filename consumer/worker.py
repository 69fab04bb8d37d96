"""The consumer-group worker: poll, batch, dead-letter, apply, commit; rebalance; shutdown.

Redis is the source of truth for progress: every group of the keyspace stores
the offsets of the events whose effects it holds, in the same atomic write
(consumer/state.py, consumer/store.py), and on assignment the worker seeks each
partition to the lowest of them. Histories are written every poll; item state
is aggregated and written ``item_delay_ms`` later at most. Kafka's committed
offsets follow what every group has stored, for tooling (lag) and as the
witness that tells a Redis that lost its state from a fresh one
(consumer/continuity.py); a lost Kafka commit costs nothing but a redelivery
that the store skips.
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
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import OffsetSpec
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from consumer import continuity
from consumer.metrics import ConsumerMetrics
from consumer.settings import ConsumerSettings
from consumer.state import ApplyResult, Ingest, Offsets, PartitionBatch, Rewind
from consumer.store import RedisStateWriter
from core.errors import InvalidEvent, StateLost, StreamrecError
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
        self.worker.metrics.rebalances.labels("revoked").inc()
        log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.worker.metrics.rebalances.labels("assigned").inc()
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
            background=True,
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
        self.metrics = ConsumerMetrics()
        self._last_positions = 0.0
        self._owned: set[int] = set()
        self._admin: KafkaAdminClient | None = None  # committed and retained offsets
        # A refusal found in the rebalance listener, where raising is swallowed:
        # the loop raises it before it handles anything that poll returned.
        self._refused: StreamrecError | None = None

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
        self.metrics.serve(self.settings.metrics_host, self.settings.metrics_port)
        self._consumer.subscribe([self.topic], listener=_Rebalance(self))
        log.info("consuming %s as group %s", self.topic, self.settings.group_id)
        last_data = time.monotonic()
        last_report = time.monotonic()
        try:
            while not self.stop.is_set():
                polled = self._retry(self._poll, "the broker")
                if self._refused is not None:
                    raise self._refused
                self.stats.polls += 1
                self.metrics.polls.inc()
                now = time.monotonic()
                self._beat(now)
                if now - self._last_positions >= 1.0:
                    self._last_positions = now
                    self._report_positions()
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
        self.ingest.close()
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
        self.metrics.close()
        if self._admin is not None:
            try:
                self._admin.close()
            except Exception:
                log.exception("error closing the Kafka admin client")
            self._admin = None
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
        with self.metrics.apply_seconds.labels("poll").time():
            return self._retry(lambda: self.ingest.apply(batches), "Redis")

    def _flush(self) -> ApplyResult:
        """The flush of an idle moment (no poll to overlap it with): written before
        the next drain, so Kafka commits follow at once."""
        with self.metrics.apply_seconds.labels("flush").time():
            self._retry(lambda: self.ingest.flush_if_due(wait=True), "Redis")
        return ApplyResult()

    def _finish(self) -> None:
        """Write everything held back (stopping): on this thread, nothing in flight."""
        try:
            self._retry(self.ingest.flush, "Redis")
        except Rewind as rewind:  # another owner took over: nothing of ours to write
            log.warning("not written at stop: %s", rewind)
        self._commit()

    def hand_over(self, partitions: list[int]) -> None:
        """Partitions revoked: finish the batch in flight and write what is held back.

        A batch in flight that had to rewind was not applied, but what the polls
        before it hold back is still written. Partitions kept whose state could
        not be written are read again from the store's offsets."""
        kept: set[int] = set()
        try:
            try:
                self.drain(commit=False)
            except Rewind as rewind:
                kept = set(rewind.offsets) - set(partitions)
                log.warning("the batch in flight at a hand-over rewinds: %s", rewind)
            self._retry(self.ingest.flush, "Redis")
        except Rewind as rewind:
            log.warning("partitions handed over with their last writes refused: %s", rewind)
            kept |= set(rewind.offsets) - set(partitions)
        kept |= self.ingest.forget(partitions)
        if kept and self._consumer is not None:
            self.seek_to_stored([TopicPartition(self.topic, p) for p in sorted(kept)])

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
        self.metrics.applied.inc(result.applied_events)
        self.metrics.skipped.inc(result.skipped_events)
        self.stats.dead_lettered += result.rejected
        self.stats.conflicts += result.conflicts
        if commit:
            self._commit()

    def _rewind(self, rewind: Rewind, dropped: dict[int, int]) -> None:
        """Seek back: the partitions the store names to its offsets, the rest of a
        dropped poll to where that poll started. A partition whose state vanished
        (Redis restarted empty under us) goes through the state-loss policy."""
        assert self._consumer is not None
        self.stats.conflicts += 1
        self.metrics.rewinds.inc()
        named = rewind.offsets
        vanished = [p for p, offset in named.items() if offset is None or offset < 0]
        if vanished:
            named = {**named, **self._continuity(vanished, named, "while consuming")}
        targets: dict[int, int | None] = {**dropped, **named}
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
                self.metrics.dead_letters.labels(exc.reason).inc()
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
        parts = [tp.partition for tp in mine]
        offsets = self._retry(lambda: self.ingest.resume_offsets(parts), "Redis")
        try:
            offsets = {**offsets, **self._continuity(parts, offsets, "on assignment")}
            self._check_topic(parts, offsets)
        except StreamrecError as exc:
            self._refused = exc  # raised by the loop: a listener's exception is swallowed
            return
        for tp in mine:
            self._seek(tp, offsets.get(tp.partition))
        log.info(
            "assigned %s; resuming from Redis offsets %s (-1: the beginning)",
            sorted(tp.partition for tp in mine),
            offsets,
        )

    def _report_positions(self) -> None:
        """Per owned partition: lag (high watermark minus the next offset to apply)
        and what every group has stored, for the metrics; no broker round trip. The
        applier may be writing meanwhile: the ingest's positions are read as copies."""
        assert self._consumer is not None
        owned = {tp.partition: tp for tp in self._consumer.assignment() if tp.topic == self.topic}
        covered = dict(self.ingest.covered)
        lag = {}
        for p, tp in owned.items():
            high = self._consumer.highwater(tp)
            done = covered.get(p)
            if high is not None:
                lag[p] = max(0, high - (done or 0))
        self.metrics.positions(lag, self.ingest.durable_offsets(), self._owned - set(owned))
        self._owned = set(owned)

    # -- continuity ------------------------------------------------------------
    def _continuity(self, parts: list[int], resume: Offsets, when: str) -> Offsets:
        """Check the store against the consumer group's committed offsets and apply
        the state-loss policy (consumer/continuity.py). Returns the offsets to seek
        the affected partitions to (-1: the beginning); raises StateLost to refuse."""
        committed = self._retry(lambda: self._group_offsets(parts), "the broker")
        for p, c in self._committed.items():  # what this worker committed is a witness too
            if p in committed and c > (committed[p] or 0):
                committed[p] = c
        marker = self._retry(self.store.marker, "Redis")
        findings = continuity.check(resume, committed, bool(marker))
        if not findings:
            if not marker:  # a fresh deployment (or a store from before markers)
                self._retry(
                    lambda: self.store.mark(
                        continuity.new_marker(self.settings.group_id, self.topic)
                    ),
                    "Redis",
                )
            return {}
        if self.settings.on_state_loss == "refuse":
            exc = continuity.refusal(self.topic, self.settings.group_id, findings)
            log.error("%s (%s)", exc, when)
            raise exc
        lost = [f.partition for f in findings]
        earliest = self._retry(lambda: self._log_offsets(lost, OffsetSpec.EARLIEST), "the broker")
        reason = f"{when}: " + "; ".join(map(str, findings))
        log.error(
            "Redis holds less than consumer group %r committed on %s (%s); rebuilding from "
            "the earliest retained offsets (STREAMREC_CONSUMER_ON_STATE_LOSS=rebuild)",
            self.settings.group_id,
            self.topic,
            reason,
        )
        for f in findings:
            if earliest.get(f.partition, 0) > f.stored:
                log.error(
                    "%s[%d]: events %d..%d are no longer on the topic (retention); "
                    "the rebuilt state lacks them",
                    self.topic,
                    f.partition,
                    f.stored,
                    earliest[f.partition] - 1,
                )
        # A new id: the API's item cache keys what it holds on it and starts afresh.
        fields = (
            {"id": continuity.new_id()}
            if marker
            else continuity.new_marker(self.settings.group_id, self.topic)
        )
        self._retry(lambda: self.store.mark(fields, rebuild=reason[:500]), "Redis")
        self.metrics.rebuilds.inc()
        out: Offsets = {}
        for f in findings:
            r = resume.get(f.partition)
            out[f.partition] = -1 if r is None or r < 0 else r
            self._committed.pop(f.partition, None)  # the rebuild commits from scratch
        return out

    def _admin_client(self) -> KafkaAdminClient:
        if self._admin is None:
            self._admin = KafkaAdminClient(
                bootstrap_servers=self.settings.kafka.bootstrap,
                client_id="streamrec-consumer-admin",
            )
        return self._admin

    def _group_offsets(self, parts: list[int]) -> dict[int, int | None]:
        """The consumer group's committed offset per partition (None: never committed)."""
        tps = [TopicPartition(self.topic, p) for p in parts]
        found = self._admin_client().list_group_offsets({self.settings.group_id: tps})
        got = found.get(self.settings.group_id, {})
        out: dict[int, int | None] = {}
        for tp in tps:
            meta = got.get(tp)
            out[tp.partition] = meta.offset if meta is not None and meta.offset >= 0 else None
        return out

    def _log_offsets(self, parts: list[int], spec: OffsetSpec) -> dict[int, int]:
        """Per partition, the earliest offset the topic still holds or its end."""
        specs = {TopicPartition(self.topic, p): spec for p in parts}
        found = self._admin_client().list_partition_offsets(specs)
        return {tp.partition: o.offset for tp, o in found.items()}

    def _check_topic(self, parts: list[int], resume: Offsets) -> None:
        """The reverse loss: the topic ends before what Redis has applied."""
        if not any(r is not None and r > 0 for r in resume.values()):
            return
        end = self._retry(lambda: self._log_offsets(parts, OffsetSpec.LATEST), "the broker")
        ahead = {
            p: (r, end[p]) for p in parts if (r := resume.get(p)) is not None and r > end.get(p, r)
        }
        if not ahead:
            return
        what = ", ".join(
            f"partition {p} ends at {e}, Redis applied to {r}" for p, (r, e) in ahead.items()
        )
        message = (
            f"{self.topic} holds fewer records than Redis has applied ({what}): the broker "
            "lost its log (a memory-only broker restarted) or the topic was recreated"
        )
        if self.settings.on_state_loss == "refuse":
            raise StateLost(
                message + ". Refusing to go on (STREAMREC_CONSUMER_ON_STATE_LOSS=refuse).",
                hint="replay the same stream into the topic, or start from an empty "
                "Redis namespace",
            )
        log.error(
            "%s. Records up to those offsets are taken as applied: a replay of the same "
            "stream fills in, anything else produced there is skipped until it passes them",
            message,
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
                self.metrics.retries.labels("redis" if "Redis" in what else "kafka").inc()
                log.warning(
                    "waiting for %s (attempt %d, retry in %.1fs): %s", what, attempt, delay, exc
                )
                self.stop.wait(delay)
                delay = min(delay * 2, self.settings.retry_max_s)
