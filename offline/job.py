"""The offline job: interactions in, a published item index out."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from core.catalogue import Catalogue
from core.errors import DatasetError
from core.settings import ServiceSettings
from offline.embeddings import build_embeddings
from offline.index import ItemIndex, publish
from offline.linear import LinearConfig, LinearRows, fit_linear

log = logging.getLogger("streamrec.offline")

METHOD = "ppmi-svd"


class OfflineSettings(ServiceSettings):
    """Tunables of the offline job (env: STREAMREC_OFFLINE_DIM, ..._SEED, ..._KEEP_VERSIONS)."""

    model_config = SettingsConfigDict(env_prefix="STREAMREC_OFFLINE_", extra="ignore")

    # 64 dims: past ~50 the neighbours of ml-latest-small barely change, and a
    # 1e5-item flat index stays at 25 MB (1e5 x 64 x 4 bytes).
    dim: int = Field(default=64, ge=1, le=1024)
    seed: int = Field(default=0, ge=0)
    # Two would do for readers racing a switch; three leaves one to roll back to.
    keep_versions: int = Field(default=3, ge=1)
    # Train the learned ranker (evaluation.ranker) with each build and ship it
    # in the version; off: the blend ranks alone. It learns from the last
    # ranker_events interactions (at most half of the build's), replayed.
    ranker: bool = True
    ranker_events: int = Field(default=20_000, ge=1)
    # Fit the session linear model (offline.linear) over the linear_items most
    # clicked items and ship its rows, which the ranker reads; sessions end
    # where the consumer's do (SessionRules.gap_ms, 30 minutes). Off: on
    # ml-latest-small's validation parts its features add +0.002 HR@10 to the
    # ranker on the whole file and on both halves, each interval crossing zero,
    # for ~30 s and ~2 GB per build (docs/evaluation.md, benchmarks/ranker_features.py).
    linear: bool = False
    linear_items: int = Field(default=LinearConfig().max_items, ge=1, le=50_000)
    session_gap_ms: int = Field(default=30 * 60 * 1000, ge=1)


def item_index(
    df: pd.DataFrame,
    settings: OfflineSettings,
    *,
    params: Mapping[str, Any] | None = None,
    ranker_model: str | None = None,
    **index_args: Any,
) -> ItemIndex:
    """The embeddings (and, when ``settings.linear``, the linear model) of ``df``
    as an index version, not yet published; ``index_args`` go to
    ``ItemIndex.from_vectors`` (catalogue, titles, source, before_ts)."""
    item_ids, vectors = build_embeddings(df, dim=settings.dim, seed=settings.seed)
    linear: LinearRows | None = None
    out = dict(params or {})
    if settings.linear:
        began = time.perf_counter()
        cfg = LinearConfig(max_items=settings.linear_items)
        linear = fit_linear(df, settings.session_gap_ms, cfg)
        # No timings here: the params are part of the version's content hash.
        out["linear"] = {"items": len(linear), "alpha": cfg.alpha, "reg": cfg.reg}
        log.info("linear model: %d items, %.1f s", len(linear), time.perf_counter() - began)
    return ItemIndex.from_vectors(
        item_ids,
        vectors,
        method=METHOD,
        params=out,
        ranker_model=ranker_model,
        linear=linear,
        first_ms=first_clicks(df, item_ids),
        **index_args,
    )


def first_clicks(df: pd.DataFrame, item_ids: Sequence[str]) -> list[int] | None:
    """The time (epoch ms) of each item's first click in ``df``, in ``item_ids``'
    order (the candidate's age, serving.ranker); None without a ts column."""
    if "ts" not in df.columns:
        return None
    first = df.groupby(df["item_id"].astype(str), sort=False)["ts"].min()
    return [int(t) for t in first.reindex(list(item_ids)).to_numpy()]


def build_index(
    df: pd.DataFrame,
    artifacts_dir: Path,
    settings: OfflineSettings | None = None,
    *,
    before_ts: int | None = None,
    catalogue: Catalogue | None = None,
    titles: Mapping[str, str] | None = None,
    source: str = "",
    ranker: tuple[str, Mapping[str, Any]] | None = None,
) -> ItemIndex:
    """Embed the interactions, index them and publish the index as the current version.

    ``settings`` (default: from the environment) gives the dimension, the seed
    and how many versions to keep. ``before_ts`` (epoch ms) keeps only events
    with ``ts < before_ts``, so an evaluation that predicts events from that
    time on never trains on them. ``catalogue`` is stored whole with the version
    (catalogue.json, part of its digest), items never clicked included; ``titles``
    instead keeps only the titles of indexed items. ``ranker``: a learned
    ranker's model text and its training report (``evaluation.ranker.train_for``),
    shipped in the version (ranker.json) and described in the manifest.
    """
    cfg = settings if settings is not None else OfflineSettings()
    dim, seed = cfg.dim, cfg.seed
    started = time.perf_counter()
    if before_ts is not None:
        if "ts" not in df.columns:
            raise DatasetError(f"before_ts needs a ts column; have {list(df.columns)}")
        df = df[df["ts"] < before_ts]
    if df.empty:
        cutoff = f" before ts={before_ts}" if before_ts is not None else ""
        raise DatasetError(f"no interactions{cutoff} to build an index from")
    params: dict[str, Any] = {
        "dim": dim,
        "seed": seed,
        "shift": 1.0,
        "interactions": len(df),
        "users": int(df["user_id"].nunique()),
    }
    if ranker is not None:
        params["ranker"] = dict(ranker[1])
    index = item_index(
        df,
        cfg,
        params=params,
        ranker_model=None if ranker is None else ranker[0],
        catalogue=catalogue,
        titles=titles,
        source=source,
        before_ts=before_ts,
    )
    version_dir = publish(index, artifacts_dir, keep=cfg.keep_versions)
    index.directory = version_dir
    log.info(
        "published index %s: %d items, dim %d, %d catalogued, ranker %s, %.2f s, at %s",
        index.version,
        len(index),
        index.manifest.dim,
        len(index.catalogue),
        "none" if ranker is None else f"{ranker[1].get('trees')} trees",
        time.perf_counter() - started,
        version_dir,
    )
    return index
