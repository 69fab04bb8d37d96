"""The producer: MovieLens files to click events, and events into Kafka at a chosen pace."""

from producer.client import ClickProducer, ensure_topics
from producer.dataset import KNOWN_DATASETS, resolve_dataset
from producer.movielens import detect_layout, load_ratings, load_titles, to_events
from producer.replay import Pacing, ReplaySummary, replay

__all__ = [
    "KNOWN_DATASETS",
    "ClickProducer",
    "Pacing",
    "ReplaySummary",
    "detect_layout",
    "ensure_topics",
    "load_ratings",
    "load_titles",
    "replay",
    "resolve_dataset",
    "to_events",
]
