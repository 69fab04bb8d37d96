"""Contracts shared by every streamrec component: the event, the catalogue, the keyspace,
settings, errors."""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from core.catalogue import Catalogue, CatalogueItem
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

try:  # one source: the version pyproject.toml gives the installed distribution
    __version__ = _version("streamrec")
except PackageNotFoundError:  # pragma: no cover - run from a tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "Catalogue",
    "CatalogueItem",
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
    "__version__",
    "decode",
    "validate",
]
