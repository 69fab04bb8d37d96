"""The offline job's other input: the events on the clicks topic, instead of a file.

``read_topic`` reads every partition of the topic from its earliest retained
offset up to what was there when the read started (later events wait for the
next build), without joining a consumer group and without committing anything,
so it never disturbs the consumers. "What was there" is told by the records'
own timestamps, not by the partitions' end offsets: the local broker (Tansu)
under-reports those (55 for a partition holding 150 records, measured), so a
partition is done at its first record stamped after the read began, or when
polls find nothing more. Each record goes through the wire
contract's own decoder (``core.events.decode``, with the consumer's limit on
future-dated events); what it refuses is counted by reason and left out, as the
consumer sends it to the dead-letter topic.

The window is in event time, counted back from the newest event read: "the last
30 days" of a replay of old data is its last 30 days, not none. Negative
feedback (``core.feedback``) is left out: the consumer pairs it with
nothing, and an embedding trained on it would place a disliked item beside what
the user liked.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from kafka import KafkaConsumer, TopicPartition

from core.errors import DatasetError, InvalidEvent
from core.events import decode, future_limit_ms
from core.feedback import Feedback
from core.settings import KafkaSettings
from producer.client import check_reachable
from producer.frame import COLUMNS, interactions_frame

log = logging.getLogger("streamrec.offline")

# Consecutive empty polls (of POLL_MS each) that mean the topic is drained.
IDLE_POLLS = 2
POLL_MS = 500


@dataclass
class TopicRead:
    """What a read of the topic found."""

    frame: pd.DataFrame  # user_id, item_id, ts, type, weight (the interactions frame)
    records: int = 0  # records read, up to the end offsets seen at the start
    refused: Counter[str] = field(default_factory=Counter)  # reason -> records
    negative: int = 0  # negative feedback left out
    outside_window: int = 0
    newest_ts: int | None = None

    def summary(self, topic: str) -> str:
        parts = [f"read {self.records:,} records from {topic}: kept {len(self.frame):,}"]
        if self.outside_window:
            parts.append(f"{self.outside_window:,} outside the window")
        if self.negative:
            parts.append(f"{self.negative:,} negative feedback")
        if self.refused:
            reasons = ", ".join(f"{r}: {n:,}" for r, n in self.refused.most_common())
            parts.append(f"{sum(self.refused.values()):,} refused ({reasons})")
        return "; ".join(parts)


def read_topic(
    kafka: KafkaSettings,
    *,
    window_ms: int | None = None,
    feedback: Feedback | None = None,
    max_future_ms: int = 3_600_000,
    batch: int = 10_000,
) -> TopicRead:
    """The topic's events as an interactions frame (see the module docstring)."""
    fb = feedback if feedback is not None else Feedback()
    check_reachable(kafka.bootstrap)  # ServiceUnavailable with the stack hint, not a traceback
    consumer = KafkaConsumer(
        bootstrap_servers=kafka.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        client_id="streamrec-build-index",
        fetch_max_wait_ms=50,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    try:
        parts = consumer.partitions_for_topic(kafka.topic)
        if not parts:
            raise DatasetError(
                f"topic {kafka.topic!r} does not exist at {kafka.bootstrap}",
                hint="check STREAMREC_KAFKA_TOPIC and STREAMREC_KAFKA_BOOTSTRAP",
            )
        tps = [TopicPartition(kafka.topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        started_ms = int(time.time() * 1000)
        latest = future_limit_ms(max_future_ms)
        users: list[str] = []
        items: list[str] = []
        stamps: list[int] = []
        types: list[str] = []
        weights: list[float] = []
        out = TopicRead(frame=pd.DataFrame(columns=list(COLUMNS)))
        pending = set(tps)
        idle = 0
        while pending and idle < IDLE_POLLS:
            polled = consumer.poll(timeout_ms=POLL_MS, max_records=batch)
            idle = 0 if polled else idle + 1
            for tp, records in polled.items():
                if tp not in pending:
                    continue
                for rec in records:
                    if rec.timestamp > started_ms:
                        pending.discard(tp)
                        consumer.pause(tp)
                        break
                    out.records += 1
                    try:
                        e = decode(rec.value, latest_ms=latest)
                    except InvalidEvent as exc:
                        out.refused[exc.reason] += 1
                        continue
                    w = fb.weight(e.type, e.weight)
                    if w <= 0:
                        out.negative += 1
                        continue
                    users.append(e.user_id)
                    items.append(e.item_id)
                    stamps.append(e.ts)
                    types.append(e.type)
                    weights.append(np.nan if e.weight is None else e.weight)
    finally:
        consumer.close()
    ts = np.asarray(stamps, dtype=np.int64)
    keep = np.arange(len(ts))
    if len(ts):
        out.newest_ts = int(ts.max())
        if window_ms is not None:
            keep = np.flatnonzero(ts >= out.newest_ts - window_ms)
            out.outside_window = len(ts) - len(keep)
    keep = keep[np.argsort(ts[keep], kind="stable")]  # one timeline over the partitions

    def coded(values: list[str]) -> tuple[np.ndarray, list[str]]:
        codes, names = pd.factorize(np.asarray(values, dtype=object))
        return codes[keep], [str(n) for n in names]

    out.frame = interactions_frame(
        users=coded(users),
        items=coded(items),
        ts=ts[keep],
        types=coded(types),
        weight=np.asarray(weights, dtype=np.float32)[keep],
    )
    log.info("%s", out.summary(kafka.topic))
    return out
