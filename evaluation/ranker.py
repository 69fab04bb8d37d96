"""Training the learned ranker (``serving.ranker``) on a replayed stream.

The rows are what the server would have seen: the stream is replayed through
the consumer's apply loop into the in-memory state (``evaluation.prequential``)
and, at every event of the training part, before it is applied, the blend's
pool for that user is scored into features with the event's item as the one
relevant answer. Predictions whose answer is not in the pool teach nothing
and are left out. The model is LightGBM's gradient-boosted trees with a
pointwise logistic objective over those rows (lambdarank measured no better on
validation, docs/evaluation.md); the last ``valid_frac`` of the queries, in
time order, choose the number of trees (early stopping) and are then folded
back in for a final fit of that size.

``streamrec build-index`` trains one with every index it builds
(``train_for``) and ships it in the version (offline.index, ranker.json).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from consumer.settings import ConsumerSettings
from core.catalogue import Catalogue
from core.events import ClickEvent
from evaluation.prequential import EvalSetup, Method, index_builder_for, prequential
from offline import job
from offline.index import ItemIndex
from offline.job import OfflineSettings
from producer.frame import to_events
from serving.blend import BlendConfig, Candidates
from serving.ranker import (
    FEATURES,
    Moment,
    PoolConfig,
    Ranker,
    candidate_pool,
    features,
    ranker_of,
)
from serving.settings import ServingSettings

log = logging.getLogger("streamrec.ranker")

# Below these the trees would learn noise, and the blend ranks alone.
MIN_EVENTS = 500
MIN_QUERIES = 50

# Chosen on ml-latest-small's validation parts (benchmarks/ranker_params.py,
# docs/evaluation.md): min_data_in_leaf 200 against 50 mattered, the objective not.
PARAMS: dict[str, Any] = {
    "objective": "binary",
    "metric": "auc",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 200,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "num_threads": 2,
    "seed": 0,
    "deterministic": True,
    "force_row_wise": True,
    "verbosity": -1,
}


@dataclass
class TrainingRows:
    """Queries of (features, label) collected from a replayed stream."""

    cfg: BlendConfig
    size: PoolConfig = field(default_factory=PoolConfig)
    blocks: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    predictions: int = 0  # every prediction seen, answerable or not

    def observe(self, event: ClickEvent, cands: Candidates, moment: Moment, seen: set[str]) -> None:
        self.predictions += 1
        pool = candidate_pool(cands, seen, self.cfg, self.size)
        label = np.array([s.item_id == event.item_id for s in pool], dtype=np.float64)
        if not label.any():
            return
        self.blocks.append(features(cands, pool, moment, self.cfg))
        self.labels.append(label)

    @property
    def queries(self) -> int:
        return len(self.blocks)

    def arrays(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
        blocks, labels = self.blocks[lo:hi], self.labels[lo:hi]
        x = np.concatenate(blocks) if blocks else np.zeros((0, len(FEATURES)))
        y = np.concatenate(labels) if labels else np.zeros(0)
        return x, y, [len(b) for b in blocks]


@dataclass(frozen=True)
class TrainReport:
    queries: int
    predictions: int
    rows: int
    trees: int
    valid_metric: str  # LightGBM's name for it: "auc", "ndcg@10", ...
    valid_score: float
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "queries": self.queries,
            "predictions": self.predictions,
            "rows": self.rows,
            "trees": self.trees,
            f"valid_{self.valid_metric}": self.valid_score,
            "seconds": self.seconds,
        }


def train(
    rows: TrainingRows,
    *,
    params: dict[str, Any] | None = None,
    valid_frac: float = 0.2,
    max_trees: int = 500,
    patience: int = 50,
) -> tuple[Ranker, TrainReport]:
    """Fit the model on ``rows``; see the module docstring."""
    import lightgbm

    if rows.queries < 10:
        raise ValueError(f"{rows.queries} answerable queries are too few to train a ranker")
    began = time.perf_counter()
    p = {**PARAMS, **(params or {})}
    cut = max(1, min(rows.queries - 1, round(rows.queries * (1 - valid_frac))))
    x_fit, y_fit, g_fit = rows.arrays(0, cut)
    x_val, y_val, g_val = rows.arrays(cut, rows.queries)
    names = list(FEATURES)
    fit = lightgbm.Dataset(x_fit, y_fit, group=g_fit, feature_name=names, free_raw_data=False)
    val = lightgbm.Dataset(x_val, y_val, group=g_val, reference=fit, free_raw_data=False)
    probe = lightgbm.train(
        p,
        fit,
        num_boost_round=max_trees,
        valid_sets=[val],
        callbacks=[lightgbm.early_stopping(patience, verbose=False)],
    )
    trees = max(probe.best_iteration, 1)
    # One metric is asked for; LightGBM names it ("auc", "ndcg@10" for eval_at 10).
    metric, score = next(iter(probe.best_score["valid_0"].items()))
    x_all, y_all, g_all = rows.arrays(0, rows.queries)
    final = lightgbm.train(
        p, lightgbm.Dataset(x_all, y_all, group=g_all, feature_name=names), num_boost_round=trees
    )
    report = TrainReport(
        queries=rows.queries,
        predictions=rows.predictions,
        rows=len(y_all),
        trees=trees,
        valid_metric=metric,
        valid_score=float(score),
        seconds=time.perf_counter() - began,
    )
    log.info("trained ranker: %s", report.as_dict())
    return Ranker(final, rows.size), report


def importance(ranker: Ranker) -> list[tuple[str, float]]:
    """Each feature's total gain, largest first."""
    gains: Sequence[float] = ranker.booster.feature_importance(importance_type="gain").tolist()
    return sorted(zip(FEATURES, gains, strict=True), key=lambda kv: -kv[1])


def train_for(
    df: pd.DataFrame, offline: OfflineSettings, catalogue: Catalogue | None = None
) -> tuple[Ranker, TrainReport] | None:
    """The ranker for an index built from ``df``, under the consumer's and the
    server's settings from the environment (as the processes that will serve
    the version read them); see :func:`train_on`."""
    setup = EvalSetup(
        consumer=ConsumerSettings(),
        serving=ServingSettings(),
        offline=offline,
        catalogue=catalogue if catalogue is not None else Catalogue(),
    )
    return train_on(df, setup)


def train_on(df: pd.DataFrame, setup: EvalSetup) -> tuple[Ranker, TrainReport] | None:
    """A ranker trained on the last ``setup.offline.ranker_events`` interactions of
    ``df`` (at most half of them), replayed after everything before them, with
    embeddings from the events before that stretch only (as the server meets
    events its index has not seen). None when the stretch is too short or
    teaches nothing: the blend then ranks alone.
    """
    rows = collect(df, setup)
    return None if rows is None else train(rows)


def collect(
    df: pd.DataFrame, setup: EvalSetup, size: PoolConfig | None = None
) -> TrainingRows | None:
    """:func:`train_on`'s training rows (None: too few to train on)."""
    stream = list(to_events(df))
    window = min(setup.offline.ranker_events, len(stream) // 2)
    if window < MIN_EVENTS:
        log.info("no ranker: %d events to train on, fewer than %d", window, MIN_EVENTS)
        return None
    setup = replace(setup, index_builder=index_builder_for(df, setup.offline), reindex_every=0)
    cfg = setup.serving.blend
    rows = TrainingRows(cfg, size or PoolConfig())
    start = len(stream) - window
    prequential(stream, start, len(stream), [Method("blend", cfg)], setup, rows.observe)
    if rows.queries < MIN_QUERIES:
        log.info("no ranker: %d answerable queries, fewer than %d", rows.queries, MIN_QUERIES)
        return None
    return rows


RANKED = "ranker"


def with_ranker(
    df: pd.DataFrame, start: int, methods: Sequence[Method], setup: EvalSetup
) -> tuple[list[Method], dict[str, Any]]:
    """``methods`` and, when ``setup.offline.ranker`` is on, the learned ranker over
    the shipped blend trained on ``df``'s rows before ``start`` exactly as
    ``streamrec build-index`` would train it on them: the method "ranker",
    and its training report under "ranker"."""
    if not setup.offline.ranker:
        return list(methods), {}
    trained = train_on(df.iloc[:start].reset_index(drop=True), setup)
    if trained is None:
        return list(methods), {"ranker": None}
    ranker, report = trained
    cfg = setup.serving.blend
    return [*methods, Method(RANKED, cfg, ranker=ranker)], {"ranker": report.as_dict()}


def build_index(
    df: pd.DataFrame,
    artifacts_dir: Path,
    settings: OfflineSettings | None = None,
    *,
    before_ts: int | None = None,
    catalogue: Catalogue | None = None,
    source: str = "",
) -> ItemIndex:
    """``offline.job.build_index`` with the learned ranker trained first on the
    same interactions and shipped in the version (unless ``settings.ranker`` is
    off, or the interactions are too few: then the version has none)."""
    cfg = settings if settings is not None else OfflineSettings()
    part = df if before_ts is None or "ts" not in df.columns else df[df["ts"] < before_ts]
    trained = train_for(part.reset_index(drop=True), cfg, catalogue) if cfg.ranker else None
    shipped = None
    if trained is not None:
        # No timings in what the version describes: it is part of its content hash.
        report = {k: v for k, v in trained[1].as_dict().items() if k != "seconds"}
        log.info("ranker trained in %.1f s", trained[1].seconds)
        shipped = (trained[0].to_text(), report)
    index = job.build_index(
        df,
        artifacts_dir,
        cfg,
        before_ts=before_ts,
        catalogue=catalogue,
        source=source,
        ranker=shipped,
    )
    # The trees compiled once here, kept in the version's directory: each API
    # worker that loads the version then reads them instead of compiling.
    ranker_of(index)
    return index
