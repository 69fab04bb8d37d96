"""Kafka consumer group that keeps sessions, co-occurrence and popularity in Redis."""

from consumer.logic import Entry, SessionRules, StateDelta, fold, partners, session_window, step
from consumer.state import (
    ApplyResult,
    GroupWrite,
    Ingest,
    PartitionBatch,
    Rewind,
    StateWriter,
    StoreConfig,
)
from consumer.store import RedisStateWriter

__all__ = [
    "ApplyResult",
    "Entry",
    "GroupWrite",
    "Ingest",
    "PartitionBatch",
    "RedisStateWriter",
    "Rewind",
    "SessionRules",
    "StateDelta",
    "StateWriter",
    "StoreConfig",
    "fold",
    "partners",
    "session_window",
    "step",
]
