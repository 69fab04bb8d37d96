"""How large the learned ranker's pool must be: quality on validation, per size.

    STREAMREC_DATA_DIR=../shared/datasets .venv/bin/python -m benchmarks.ranker_pool \
        [--sizes 100:30,50:15,30:10] [--no-halves] [--out docs/evaluation/ranker_pool.json]

A ranked request's cost grows with its pool (the blend's best ``pool`` items
plus ``trend_extra`` trending ones): every pooled item gets a feature row and
goes through the trees (benchmarks/ranker_cost.py). For each pool size and
for the whole file and each time-ordered half, the training rows and the
validation part's pools are collected with that size as ``streamrec
build-index`` would (``benchmarks.ranker_params.prepare``), the shipped
settings train the model, and the validation HR@10 is compared with the
shipped size's, paired per user (every prediction counts for every size: one
whose answer is not in the pool is a miss). The test part is never read.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from benchmarks.common import machine, table, write_json
from benchmarks.ranker_params import parts_of, prepare
from evaluation.bootstrap import paired_interval
from evaluation.ranker import train
from serving.ranker import PoolConfig


def _sizes(text: str) -> list[PoolConfig]:
    out = []
    for part in text.split(","):
        pool, extra = part.split(":")
        out.append(PoolConfig(int(pool), int(extra)))
    return out


def run_part(df: Any, catalogue: Any, sizes: list[PoolConfig]) -> list[dict[str, Any]]:
    base: dict[str, list[int]] = {}
    out = []
    for k, size in enumerate(sizes):
        rows, pools = prepare(df, catalogue, size)
        ranker, report = train(rows)
        got = pools.hits(ranker.scores)
        if k == 0:
            base = got
        users = sorted(base)
        n = [base[u][0] for u in users]
        iv = paired_interval(n, [base[u][1] for u in users], [got[u][1] for u in users])
        out.append(
            {
                "pool": size.pool,
                "trend_extra": size.trend_extra,
                "rows_per_query": size.pool + size.trend_extra,
                "ranker hr@10": sum(got[u][1] for u in users) / sum(n),
                "vs first size": iv.as_dict(),
                "predictions": sum(n),
                "trees": report.trees,
            }
        )
        print(out[-1], flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="ml-latest-small")
    p.add_argument(
        "--sizes", default="100:30,50:15,30:10", help="pool:trend_extra, the first is the baseline"
    )
    p.add_argument("--no-halves", action="store_true")
    p.add_argument("--out", type=Path, default=Path("docs/evaluation/ranker_pool.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sizes = _sizes(args.sizes)
    parts, catalogue = parts_of(args.dataset, halves=not args.no_halves)
    rows = [
        {"data": part, **r}
        for part, frame in parts.items()
        for r in run_part(frame, catalogue, sizes)
    ]
    cells = [
        [
            r["data"],
            f"{r['pool']} + {r['trend_extra']}",
            f"{r['ranker hr@10']:.4f}",
            "{diff:+.4f} [{lo:+.4f}, {hi:+.4f}]".format(**r["vs first size"]),
            r["trees"],
        ]
        for r in rows
    ]
    print(
        table(["data", "pool + extras", "validation HR@10", "− first size [95 %]", "trees"], cells)
    )
    write_json(args.out, {"machine": machine(), "sizes": args.sizes, "rows": rows})


if __name__ == "__main__":
    main()
