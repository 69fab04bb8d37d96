"""Where interactions come from: a MovieLens dataset or a team's own click log, and a catalogue.

Every job that reads interactions (replay, evaluate, build-index, the load
test, the demo) goes through ``load_interactions``, so they all read a source
the same way and report on it the same way::

    MovieLensSource(path)                 ratings in any MovieLens layout; catalogue
                                          from its movie and tag files
    ClickLogSource(path, ClickLogFormat)  producer.clicklog; no catalogue unless given
    CatalogueSource(path, format)         producer.catalogue's own-file reader; replaces
                                          the source's own catalogue when given
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from core.catalogue import Catalogue
from producer.catalogue import load_catalogue_file
from producer.clicklog import ClickLogFormat, load_clicklog
from producer.movielens import load_movielens_catalogue, load_ratings
from producer.read_report import ReadReport


@dataclass(frozen=True)
class MovieLensSource:
    path: Path  # a dataset directory or its ratings file


@dataclass(frozen=True)
class ClickLogSource:
    path: Path
    format: ClickLogFormat


@dataclass(frozen=True)
class CatalogueSource:
    path: Path
    format: str | None = None  # csv, tsv or jsonl; None: from the file name


Source = MovieLensSource | ClickLogSource


@dataclass(frozen=True)
class Interactions:
    """An interactions frame (producer.frame), its catalogue, and what reading them found."""

    frame: pd.DataFrame
    catalogue: Catalogue
    source: str  # the file or directory read, for manifests and reports
    limit: int | None = None  # the first ``limit`` events in time order were kept
    report: ReadReport | None = None  # the click log's; MovieLens fails on a bad row instead
    catalogue_report: ReadReport | None = None  # the catalogue file's, when one was given

    @property
    def reports(self) -> list[ReadReport]:
        return [r for r in (self.report, self.catalogue_report) if r is not None]


def load_interactions(
    source: Source,
    *,
    catalogue: CatalogueSource | None = None,
    limit: int | None = None,
    with_catalogue: bool = True,
) -> Interactions:
    """Read ``source`` (the first ``limit`` events in time order) and its catalogue.

    ``with_catalogue=False`` skips the catalogue (a replay sends events only).
    """
    report = None
    if isinstance(source, ClickLogSource):
        frame, report = load_clicklog(source.path, source.format, limit=limit)
    else:
        frame = load_ratings(source.path, limit=limit)
    items, catalogue_report = Catalogue(), None
    if with_catalogue and catalogue is not None:
        items, catalogue_report = load_catalogue_file(catalogue.path, catalogue.format)
    elif with_catalogue and isinstance(source, MovieLensSource):
        items = load_movielens_catalogue(source.path)
    return Interactions(frame, items, str(source.path), limit, report, catalogue_report)
