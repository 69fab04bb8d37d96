"""Kafka consumer group that keeps sessions, co-occurrence and popularity in Redis."""

from consumer.logic import Entry, SessionRules, StateDelta, fold, partners, session_window, step
from consumer.state import (
    ApplyResult,
    Landmark,
    PartitionBatch,
    PartitionWrite,
    Snapshot,
    StateWriter,
    StoreConfig,
)
from consumer.store import RedisStateWriter

__all__ = [
    "ApplyResult",
    "Entry",
    "Landmark",
    "PartitionBatch",
    "PartitionWrite",
    "RedisStateWriter",
    "SessionRules",
    "Snapshot",
    "StateDelta",
    "StateWriter",
    "StoreConfig",
    "fold",
    "partners",
    "session_window",
    "step",
]
