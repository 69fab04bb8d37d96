"""Settings shared by more than one service. Each service adds its own class.

Every value can be set from the environment; the prefix is in each class. The
defaults describe the embedded local stack (``streamrec stack up``), which uses
non-standard ports so it never collides with a Redis or Kafka already running.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.keyspace import Keyspace

LOCAL_REDIS_PORT = 16379
LOCAL_KAFKA_PORT = 19092


class KafkaSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMREC_KAFKA_", extra="ignore")

    bootstrap: str = f"127.0.0.1:{LOCAL_KAFKA_PORT}"
    topic: str = "clicks"
    dlq_topic: str = "clicks.dlq"
    # Four partitions: enough for a 2-4 process consumer group on a small box.
    partitions: int = Field(default=4, ge=1, le=1024)

    @field_validator("bootstrap")
    @classmethod
    def _bootstrap(cls, v: str) -> str:
        if not v or any(":" not in part for part in v.split(",")):
            raise ValueError("bootstrap must be host:port[,host:port...]")
        return v


class RedisSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMREC_REDIS_", extra="ignore")

    url: str = f"redis://127.0.0.1:{LOCAL_REDIS_PORT}/0"
    namespace: str = Field(default="sr", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")

    @property
    def keys(self) -> Keyspace:
        return Keyspace(self.namespace)


class PathSettings(BaseSettings):
    """Where data and artifacts live."""

    model_config = SettingsConfigDict(env_prefix="STREAMREC_", extra="ignore")

    # Directory holding MovieLens folders (e.g. .../datasets with ml-latest-small/ in it).
    data_dir: Path | None = None
    # Versioned offline artifacts (embedding index, id map, manifest).
    artifacts_dir: Path = Path("artifacts")
    # Local stack state: pid files, logs, Redis data.
    state_dir: Path = Path(".streamrec")
