"""Settings shared by more than one service. Each service adds its own class.

Every value can be set from the environment; the prefix is in each class. The
defaults describe the embedded local stack (``streamrec stack up``), which uses
non-standard ports so it never collides with a Redis or Kafka already running.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.keyspace import Keyspace

LOCAL_REDIS_PORT = 16379
LOCAL_KAFKA_PORT = 19092


class ServiceSettings(BaseSettings):
    """A service's settings: every ``{prefix}*`` variable must name one of its fields.

    pydantic-settings ignores variables it does not know, so a typo, or a name
    from an older release, would leave the default in force without a word.
    Here it fails at start and says which fields there are. (Nested values are
    checked by the nested models themselves: they forbid extra fields.)
    """

    @model_validator(mode="after")
    def _known_variables(self) -> Self:
        config = self.model_config
        prefix = str(config.get("env_prefix") or "").upper()
        delimiter = str(config.get("env_nested_delimiter") or "__").upper()
        fields = {name.upper() for name in type(self).model_fields}
        unknown = sorted(
            key
            for key in os.environ
            if key.upper().startswith(prefix)
            and key.upper()[len(prefix) :].split(delimiter, 1)[0] not in fields
        )
        if unknown:
            known = ", ".join(sorted(prefix + f for f in fields))
            raise ValueError(f"unknown variable(s) {', '.join(unknown)}; {prefix}* are: {known}")
        return self


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
    # A Redis Cluster: ``url`` names any node; the client finds the others and
    # routes each key to its slot (the keyspace keeps what changes together in one).
    cluster: bool = False

    @property
    def keys(self) -> Keyspace:
        return Keyspace(self.namespace)

    def client(self, **options: Any) -> Any:
        """A blocking client: ``redis.Redis``, or ``redis.cluster.RedisCluster``."""
        import redis
        import redis.cluster

        if self.cluster:
            return redis.cluster.RedisCluster.from_url(self.url, **options)
        return redis.Redis.from_url(self.url, **options)

    def async_client(self, **options: Any) -> Any:
        """An asyncio client: ``redis.asyncio.Redis``, or its ``RedisCluster``."""
        import redis.asyncio
        import redis.asyncio.cluster

        if self.cluster:
            return redis.asyncio.cluster.RedisCluster.from_url(self.url, **options)
        return redis.asyncio.Redis.from_url(self.url, **options)


class PathSettings(BaseSettings):
    """Where data and artifacts live."""

    model_config = SettingsConfigDict(env_prefix="STREAMREC_", extra="ignore")

    # Directory holding MovieLens folders (e.g. .../datasets with ml-latest-small/ in it).
    data_dir: Path | None = None
    # Versioned offline artifacts (embedding index, id map, manifest).
    artifacts_dir: Path = Path("artifacts")
    # Local stack state: pid files, logs, Redis data.
    state_dir: Path = Path(".streamrec")


def settings_env(settings: BaseSettings, fields: Iterable[str] | None = None) -> dict[str, str]:
    """The environment variables that make another process build these values.

    For each named field (default: all) of ``settings``: its env name under the
    class's prefix, nested models flattened with the nested delimiter
    (``STREAMREC_CONSUMER_STATE__RULES__PAIR_WINDOW``), nested settings classes
    under their own prefix (``STREAMREC_KAFKA_TOPIC``). Child processes get
    their environment from here, so no variable name is typed twice. A field
    whose value is None is left out (the child keeps its default).
    """
    config = settings.model_config
    prefix = str(config.get("env_prefix") or "")
    delimiter = str(config.get("env_nested_delimiter") or "__")
    out: dict[str, str] = {}
    for name in fields if fields is not None else type(settings).model_fields:
        _flatten(f"{prefix}{name}".upper(), getattr(settings, name), delimiter, out)
    return out


def env_name(settings: type[BaseSettings], *path: str) -> str:
    """The variable that sets the (nested) field ``path`` of ``settings``:
    ``env_name(ConsumerSettings, "state", "rules", "gap_ms")`` is
    ``STREAMREC_CONSUMER_STATE__RULES__GAP_MS``."""
    config = settings.model_config
    prefix = str(config.get("env_prefix") or "")
    delimiter = str(config.get("env_nested_delimiter") or "__")
    return (prefix + delimiter.join(path)).upper()


def _flatten(key: str, value: Any, delimiter: str, out: dict[str, str]) -> None:
    if value is None:
        return
    if isinstance(value, BaseSettings):
        out.update(settings_env(value))
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            _flatten(f"{key}{delimiter}{name.upper()}", getattr(value, name), delimiter, out)
    elif isinstance(value, bool):
        out[key] = "true" if value else "false"
    elif isinstance(value, (dict, list, tuple, set, frozenset)):
        # pydantic-settings reads a complex field's variable as JSON.
        items = sorted(value) if isinstance(value, (set, frozenset)) else value
        out[key] = json.dumps(items)
    else:
        out[key] = str(value)
