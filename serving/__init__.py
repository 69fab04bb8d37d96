"""The serving API: blend recent-session neighbours with trending, over HTTP."""

from serving.app import create_app
from serving.blend import BlendConfig, Reason, Scored, blend, recent_sources
from serving.settings import BlendSettings, ServingSettings
from serving.store import StateStore, UserState

__all__ = [
    "BlendConfig",
    "BlendSettings",
    "Reason",
    "Scored",
    "ServingSettings",
    "StateStore",
    "UserState",
    "blend",
    "create_app",
    "recent_sources",
]
