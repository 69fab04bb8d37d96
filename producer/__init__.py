"""The producer: interactions from files (MovieLens, a team's own click log and catalogue)
to click events, and events into Kafka at a chosen pace."""

from producer.catalogue import load_catalogue_file, load_movielens_catalogue
from producer.clicklog import ClickLogFormat, load_clicklog
from producer.client import ClickProducer, ensure_topics
from producer.dataset import KNOWN_DATASETS, resolve_dataset
from producer.frame import to_events
from producer.movielens import detect_layout, load_ratings, load_titles
from producer.read_report import ReadReport
from producer.replay import Pacing, ReplaySummary, replay
from producer.sources import (
    CatalogueSource,
    ClickLogSource,
    Interactions,
    MovieLensSource,
    load_interactions,
)

__all__ = [
    "KNOWN_DATASETS",
    "CatalogueSource",
    "ClickLogFormat",
    "ClickLogSource",
    "ClickProducer",
    "Interactions",
    "MovieLensSource",
    "Pacing",
    "ReadReport",
    "ReplaySummary",
    "detect_layout",
    "ensure_topics",
    "load_catalogue_file",
    "load_clicklog",
    "load_interactions",
    "load_movielens_catalogue",
    "load_ratings",
    "load_titles",
    "replay",
    "resolve_dataset",
    "to_events",
]
