"""The Kafka edge of the producer: topic set-up and a click-event producer.

kafka-python retries an unreachable bootstrap server until its bootstrap
timeout (30 s by default) before it gives up. A refused TCP connection is known
at once, so both entry points try a plain connect first and fail in
milliseconds when nothing listens: the usual case being "forgot `streamrec
stack up`".
"""

from __future__ import annotations

import contextlib
import socket
from types import TracebackType
from typing import Any

from kafka import KafkaAdminClient, KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError
from kafka.producer.future import FutureRecordMetadata

from core.errors import ServiceUnavailable
from core.events import ClickEvent
from core.settings import KafkaSettings

STACK_HINT = "start the local stack with `streamrec stack up`, or set STREAMREC_KAFKA_BOOTSTRAP"
CONNECT_TIMEOUT_S = 2.0
# How long a producer waits to bootstrap once the port answered: ample for a
# broker that is still starting, short enough that a wedged one is reported.
BOOTSTRAP_TIMEOUT_MS = 10_000

PRODUCER_DEFAULTS: dict[str, Any] = {
    # One leader ack: the broker has the event; replication is the cluster's job.
    "acks": 1,
    # kafka-python makes producers idempotent by default, which requires
    # acks=all; with acks=1 it would disable itself with a warning. Say it.
    "enable_idempotence": False,
    # Without idempotence, a retried batch can overtake a later one and reorder
    # a user's events. One request in flight rules that out; measured against
    # Tansu it costs nothing (~13.5k events/s either way, the Python send loop
    # is the bottleneck, not the round trip).
    "max_in_flight_requests_per_connection": 1,
    # Batch for 5 ms: at 30k events/s that is ~150 events (~15 KB of ~100-byte
    # JSON) per linger window, so requests carry many events each.
    "linger_ms": 5,
    # 64 KiB per partition batch holds ~650 events: a full window even when all
    # keys hash to one partition.
    "batch_size": 64 * 1024,
    "bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS,
}


def _hosts(bootstrap: str) -> list[tuple[str, int]]:
    hosts = []
    for part in bootstrap.split(","):
        host, _, port = part.strip().rpartition(":")
        hosts.append((host.strip("[]"), int(port)))
    return hosts


def check_reachable(bootstrap: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raise ServiceUnavailable unless at least one bootstrap server accepts TCP."""
    errors = []
    for host, port in _hosts(bootstrap):
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                return
        except OSError as exc:
            errors.append(f"{host}:{port} ({exc.strerror or exc})")
    raise ServiceUnavailable(f"Kafka broker unreachable at {', '.join(errors)}", hint=STACK_HINT)


def ensure_topics(kafka: KafkaSettings, *, timeout_s: float = 30) -> None:
    """Create the click topic and its dead-letter topic if missing; wait until usable.

    Idempotent: topics that exist are left as they are (an existing topic with
    another partition count is not altered).
    """
    check_reachable(kafka.bootstrap, min(CONNECT_TIMEOUT_S, timeout_s))
    timeout_ms = int(timeout_s * 1000)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=kafka.bootstrap,
            client_id="streamrec-admin",
            bootstrap_timeout_ms=timeout_ms,
            request_timeout_ms=timeout_ms,
        )
    except KafkaError as exc:
        raise ServiceUnavailable(
            f"Kafka broker at {kafka.bootstrap} did not answer: {exc}", hint=STACK_HINT
        ) from exc
    try:
        wanted = {
            kafka.topic: kafka.partitions,
            # The dead-letter topic carries a trickle; one partition keeps it in order.
            kafka.dlq_topic: 1,
        }
        existing = set(admin.list_topics())
        missing = {
            name: {"num_partitions": parts, "replication_factor": 1}
            for name, parts in wanted.items()
            if name not in existing
        }
        if missing:
            # Another process may create one between our list and create: that is fine.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing, timeout_ms=timeout_ms)
        # Creation is acknowledged before every partition has a leader; a
        # producer that starts in that gap gets errors, so wait with a bound.
        admin.wait_for_topics(list(wanted), timeout_ms=timeout_ms)
    except KafkaTimeoutError as exc:
        raise ServiceUnavailable(
            f"topics {sorted(wanted)} not ready on {kafka.bootstrap} after {timeout_s:g}s: {exc}",
            hint=STACK_HINT,
        ) from exc
    except KafkaError as exc:
        raise ServiceUnavailable(
            f"could not create topics on {kafka.bootstrap}: {exc}", hint=STACK_HINT
        ) from exc
    finally:
        admin.close()


class ClickProducer:
    """Sends ClickEvents to ``kafka.topic``, keyed by user so a user's events stay ordered.

    The key picks the partition (murmur2 of the key bytes), so all of one user's
    events land on one partition in send order, which is the only ordering the
    consumer's session state needs.
    """

    def __init__(self, kafka: KafkaSettings, **overrides: Any) -> None:
        self.kafka = kafka
        self.topic = kafka.topic
        check_reachable(kafka.bootstrap)
        config = {**PRODUCER_DEFAULTS, **overrides}
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=kafka.bootstrap, client_id="streamrec-producer", **config
            )
        except KafkaError as exc:
            raise ServiceUnavailable(
                f"Kafka broker at {kafka.bootstrap} did not answer: {exc}", hint=STACK_HINT
            ) from exc

    def send(self, event: ClickEvent) -> FutureRecordMetadata:
        """Queue one event; the future resolves when the broker acknowledges it."""
        return self.send_raw(event.encode(), event.user_id.encode())

    def send_raw(self, value: bytes, key: bytes | None = None) -> FutureRecordMetadata:
        """Queue arbitrary bytes on the click topic (tests use it to inject bad messages)."""
        try:
            return self._producer.send(self.topic, value=value, key=key)
        except KafkaTimeoutError as exc:
            # Raised when metadata or buffer space is not available within max_block_ms.
            raise ServiceUnavailable(
                f"could not queue a message for {self.topic} on {self.kafka.bootstrap}: {exc}",
                hint=STACK_HINT,
            ) from exc

    def flush(self, timeout: float | None = None) -> None:
        """Block until every queued message is acknowledged or failed."""
        try:
            self._producer.flush(timeout=timeout)
        except KafkaTimeoutError as exc:
            raise ServiceUnavailable(
                f"flush to {self.kafka.bootstrap} timed out: {exc}", hint=STACK_HINT
            ) from exc

    def close(self, timeout: float | None = None) -> None:
        self._producer.close(timeout=timeout)

    def __enter__(self) -> ClickProducer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
