"""Choose the learned ranker's training settings on the validation part.

    STREAMREC_DATA_DIR=../shared/datasets .venv/bin/python -m benchmarks.ranker_params \
        [--no-halves] [--out docs/evaluation/ranker_params.json]

For the whole file and each time-ordered half: the ranker's training rows are
collected once, exactly as ``streamrec build-index`` would collect them from
the events before the validation part (evaluation/ranker.py ``collect``), and
the validation part's pools once, every prediction kept (one whose answer is
not in the pool is a miss for every variant). Each variant of the LightGBM
settings is then trained on the same rows and scored on the same pools:
HR@10 and its paired per-user bootstrap interval against the blend's own
order of the pool (which is the shipped blend's top 10). The test part is
never read.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import machine, table, write_json
from core.events import ClickEvent
from evaluation.bootstrap import paired_interval
from evaluation.prequential import (
    EvalSetup,
    Method,
    catalog_size,
    index_builder_for,
    prequential,
    split_points,
)
from evaluation.ranker import PARAMS, TrainingRows, collect, train
from offline.job import OfflineSettings
from producer.dataset import resolve_dataset
from producer.movielens import load_movielens_catalogue, load_ratings, to_events
from serving.blend import Candidates
from serving.ranker import Moment, PoolConfig, candidate_pool, features
from serving.settings import ServingSettings

BINARY = {"objective": "binary", "metric": "auc"}
LAMBDARANK = {
    "objective": "lambdarank",
    "metric": "ndcg",
    "eval_at": [10],
    "lambdarank_truncation_level": 20,
}
VARIANTS: dict[str, dict[str, Any]] = {
    "shipped (binary, lr 0.05, 31 leaves, min leaf 200)": {},
    "binary, min leaf 50": {**BINARY, "min_data_in_leaf": 50},
    "binary, lr 0.1, 15 leaves": {**BINARY, "learning_rate": 0.1, "num_leaves": 15},
    "lambdarank, min leaf 200": {**LAMBDARANK},
    "lambdarank, min leaf 50": {**LAMBDARANK, "min_data_in_leaf": 50},
}


class Pools:
    """Every validation prediction's pool features and labels, with its user and
    whether it is the first click of a session (a return visit, or a new user)."""

    def __init__(self, setup: EvalSetup, size: PoolConfig) -> None:
        self.cfg = setup.serving.blend
        self.size = size
        self.gap_ms = setup.rules.gap_ms
        self.queries: list[tuple[str, np.ndarray, np.ndarray]] = []
        self.new_session: list[bool] = []

    def observe(self, event: ClickEvent, cands: Candidates, moment: Moment, seen: set[str]) -> None:
        pool = candidate_pool(cands, seen, self.cfg, self.size)
        label = np.array([s.item_id == event.item_id for s in pool], dtype=bool)
        x = features(cands, pool, moment, self.cfg) if label.any() else np.zeros((0, 0))
        self.queries.append((event.user_id, x, label))
        history = moment.history
        self.new_session.append(not history or event.ts - history[0][0] > self.gap_ms)

    def hits(self, score: Any, new_sessions_only: bool = False) -> dict[str, list[int]]:
        """user -> [predictions, hits@10] with the pool ordered by ``score(x)``
        (None: the blend's own order), ties on pool position; every user who
        made a prediction is there, with [0, 0] outside the segment."""
        out: dict[str, list[int]] = {}
        for (user, x, label), new in zip(self.queries, self.new_session, strict=True):
            row = out.setdefault(user, [0, 0])
            if new_sessions_only and not new:
                continue
            row[0] += 1
            if label.any():
                s = -np.arange(len(label), dtype=float) if score is None else score(x)
                top = np.lexsort((np.arange(len(label)), -s))[:10]
                row[1] += int(label[top].any())
        return out


def prepare(
    df: pd.DataFrame, catalogue: Any, size: PoolConfig | None = None
) -> tuple[TrainingRows, Pools]:
    """The training rows from before ``df``'s validation part and that part's pools
    (``size``: the pool drawn, default the shipped one)."""
    events = list(to_events(df))
    valid_start, test_start = split_points(len(events), 0.1, 0.2)
    offline = OfflineSettings()
    setup = EvalSetup(
        serving=ServingSettings(),
        offline=offline,
        index_builder=index_builder_for(df, offline),
        catalog=catalog_size(df),
        catalogue=catalogue,
    )
    rows = collect(df.iloc[:valid_start].reset_index(drop=True), setup, size)
    assert rows is not None
    pools = Pools(setup, rows.size)
    blend = [Method("blend", setup.serving.blend)]
    prequential(events, valid_start, test_start, blend, setup, pools.observe)
    return rows, pools


def parts_of(dataset: str, *, halves: bool) -> tuple[dict[str, pd.DataFrame], Any]:
    """The whole file and, with ``halves``, its two time-ordered halves; its catalogue."""
    path = resolve_dataset(dataset, download=False)
    df = load_ratings(path).reset_index(drop=True)
    catalogue = load_movielens_catalogue(Path(path))
    parts = {"whole": df}
    if halves:
        mid = len(df) // 2
        parts["first half"] = df.iloc[:mid].reset_index(drop=True)
        parts["second half"] = df.iloc[mid:].reset_index(drop=True)
    return parts, catalogue


def run_part(df: pd.DataFrame, catalogue: Any) -> list[dict[str, Any]]:
    rows, pools = prepare(df, catalogue)
    base = pools.hits(None)
    users = sorted(base)
    n = [base[u][0] for u in users]
    out = []
    for name, params in VARIANTS.items():
        ranker, report = train(rows, params=params)
        got = pools.hits(ranker.scores)
        iv = paired_interval(n, [base[u][1] for u in users], [got[u][1] for u in users])
        out.append(
            {
                "variant": name,
                "params": {**PARAMS, **params},
                "blend hr@10": sum(base[u][1] for u in users) / sum(n),
                "ranker hr@10": sum(got[u][1] for u in users) / sum(n),
                "vs blend": iv.as_dict(),
                "trees": report.trees,
                "train_s": report.seconds,
            }
        )
        print(out[-1], flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="ml-latest-small")
    p.add_argument("--no-halves", action="store_true")
    p.add_argument("--out", type=Path, default=Path("docs/evaluation/ranker_params.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    parts, catalogue = parts_of(args.dataset, halves=not args.no_halves)
    rows = [
        {"data": part, **r} for part, frame in parts.items() for r in run_part(frame, catalogue)
    ]
    cells = [
        [
            r["data"],
            r["variant"],
            f"{r['blend hr@10']:.4f}",
            f"{r['ranker hr@10']:.4f}",
            "{diff:+.4f} [{lo:+.4f}, {hi:+.4f}]".format(**r["vs blend"]),
            r["trees"],
        ]
        for r in rows
    ]
    print(table(["data", "variant", "blend", "ranker", "Δ [95 %]", "trees"], cells))
    write_json(args.out, {"machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
