"""The learned ranker against the hand-tuned blend, on the validation and test parts.

    STREAMREC_DATA_DIR=../shared/datasets .venv/bin/python -m benchmarks.ranker_quality \
        [--no-halves] [--valid-only] [--pool 50] [--trend-extra 20] \
        [--out docs/evaluation/ranker.json]

Each part is predicted by a ranker trained on the stretch of stream just
before it, as the offline job trains one on the recent stream (its last fifth
by default) and the server then meets the future: the validation part
(70-80 %) by a ranker trained on the predictions of 50-70 %, the test part
(80-100 %) by one trained on 60-80 %. Training rows come from the same replay as the evaluation
(offline.ranker); the ranked part is scored by ``streamrec evaluate``'s own
loop, with the paired per-user bootstrap against the shipped blend.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.common import machine, table, write_json
from evaluation.prequential import (
    EvalSetup,
    Method,
    catalog_size,
    default_methods,
    index_builder_for,
    prequential,
    split_points,
)
from evaluation.ranker import TrainingRows, importance, train
from offline.job import OfflineSettings
from producer.dataset import resolve_dataset
from producer.movielens import load_movielens_catalogue, load_ratings, to_events
from serving.ranker import PoolConfig
from serving.settings import ServingSettings

RANKER = "ranker"


def run_part(
    df: pd.DataFrame, setup_base: EvalSetup, size: PoolConfig, ranges: list[str]
) -> list[dict[str, Any]]:
    events = list(to_events(df))
    n = len(events)
    valid_start, test_start = split_points(n, 0.1, 0.2)
    offline = OfflineSettings()
    setup = replace(
        setup_base,
        index_builder=index_builder_for(df, offline),
        catalog=catalog_size(df),
        baseline="blend",
    )
    cfg = setup.serving.blend
    spans = {"valid": (valid_start, test_start), "test": (test_start, n)}
    width = 2 * (test_start - valid_start)
    out = []
    for name in ranges:
        lo, hi = spans[name]
        began = time.perf_counter()
        rows = TrainingRows(cfg, size)
        blend_only = [m for m in default_methods(cfg) if m.name == "blend"]
        prequential(events, max(lo - width, 0), lo, blend_only, setup, observe=rows.observe)
        collect_s = time.perf_counter() - began
        ranker, report = train(rows)
        methods = [m for m in default_methods(cfg) if m.name in ("blend", "co-occurrence")]
        methods.append(Method(RANKER, cfg, ranker=ranker))
        res = prequential(events, lo, hi, methods, setup)
        got = res.methods
        row: dict[str, Any] = {
            "part": name,
            "collect_s": collect_s,
            "train": report.as_dict(),
            "importance": importance(ranker)[:8],
        }
        for m in ("co-occurrence", "blend", RANKER):
            row[m] = {k: got[m][k] for k in ("hr@10", "hr@20", "ndcg@10")}
            for seg in ("new_item", "new_session", "within_session"):
                row[m][f"{seg} hr@10"] = got[m][seg]["hr@10"]
            if "vs_baseline" in got[m]:
                row[m]["vs_blend"] = got[m]["vs_baseline"]
        out.append(row)
        print(row, flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="ml-latest-small")
    p.add_argument("--no-halves", action="store_true")
    p.add_argument("--valid-only", action="store_true")
    p.add_argument("--pool", type=int, default=PoolConfig().pool)
    p.add_argument("--trend-extra", type=int, default=PoolConfig().trend_extra)
    p.add_argument("--out", type=Path, default=Path("docs/evaluation/ranker.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    path = resolve_dataset(args.dataset, download=False)
    df = load_ratings(path).reset_index(drop=True)
    catalogue = load_movielens_catalogue(Path(path))
    base = EvalSetup(serving=ServingSettings(), catalogue=catalogue)
    size = PoolConfig(args.pool, args.trend_extra)
    parts = {"whole": df}
    if not args.no_halves:
        mid = len(df) // 2
        parts["first half"] = df.iloc[:mid].reset_index(drop=True)
        parts["second half"] = df.iloc[mid:].reset_index(drop=True)
    ranges = ["valid"] if args.valid_only else ["valid", "test"]
    rows = []
    for part, frame in parts.items():
        for r in run_part(frame, base, size, ranges):
            rows.append({"data": part, **r})
    cells = []
    for r in rows:
        iv = r[RANKER]["vs_blend"]["hr@10"]
        cells.append(
            [
                r["data"],
                r["part"],
                f"{r['co-occurrence']['hr@10']:.4f}",
                f"{r['blend']['hr@10']:.4f}",
                f"{r[RANKER]['hr@10']:.4f}",
                f"{iv['diff']:+.4f} [{iv['lo']:+.4f}, {iv['hi']:+.4f}]",
                r["train"]["trees"],
            ]
        )
    print(
        table(
            ["data", "part", "co HR@10", "blend HR@10", "ranker HR@10", "Δ [95 %]", "trees"], cells
        )
    )
    write_json(
        args.out,
        {
            "machine": machine(),
            "pool": {"pool": size.pool, "trend_extra": size.trend_extra},
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
