"""The serving API: blend recent-session neighbours with trending, over HTTP."""

from serving.app import create_app
from serving.blend import BlendConfig, Candidates, Reason, Scored, blend, recent_sources
from serving.reader import ReadSpec, StateReader, UserState
from serving.settings import ServingSettings
from serving.store import RedisStateReader

__all__ = [
    "BlendConfig",
    "Candidates",
    "ReadSpec",
    "Reason",
    "RedisStateReader",
    "Scored",
    "ServingSettings",
    "StateReader",
    "UserState",
    "blend",
    "create_app",
    "recent_sources",
]
