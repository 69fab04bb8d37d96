"""Kafka consumer group that keeps sessions, co-occurrence and popularity in Redis."""

from consumer.logic import Entry, SessionRules, StateDelta, fold, partners, session_window, step
from consumer.store import PartitionBatch, StateStore, StoreConfig

__all__ = [
    "Entry",
    "PartitionBatch",
    "SessionRules",
    "StateDelta",
    "StateStore",
    "StoreConfig",
    "fold",
    "partners",
    "session_window",
    "step",
]
