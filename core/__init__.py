"""Contracts shared by every streamrec component: the event, the keyspace, settings, errors."""

from core.errors import (
    ConfigError,
    DatasetError,
    IndexNotFound,
    InvalidEvent,
    ServiceUnavailable,
    StreamrecError,
)
from core.events import ClickEvent, decode, validate
from core.keyspace import Keyspace
from core.settings import KafkaSettings, PathSettings, RedisSettings

__all__ = [
    "ClickEvent",
    "ConfigError",
    "DatasetError",
    "IndexNotFound",
    "InvalidEvent",
    "KafkaSettings",
    "Keyspace",
    "PathSettings",
    "RedisSettings",
    "ServiceUnavailable",
    "StreamrecError",
    "decode",
    "validate",
]
