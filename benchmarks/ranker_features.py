"""What each group of the learned ranker's features adds, on the validation part.

    STREAMREC_DATA_DIR=../shared/datasets .venv/bin/python -m benchmarks.ranker_features \
        [--no-halves] [--groups linear,visits] [--linear-extra 30] \
        [--out docs/evaluation/ranker_features.json]

For the whole file and each time-ordered half, the training rows and the
validation pools are collected once, as ``benchmarks.ranker_params`` does.
Each variant trains the shipped settings with one group of features masked
(every value NaN, so no tree can split on it: the model that never had them)
and is scored on the same pools: HR@10 and the paired per-user bootstrap
interval of the full model against it, over every prediction and over the
first clicks of sessions (return visits and new users). ``--linear-extra N``
also draws a pool with N more items from the linear model's rows
(serving.ranker.linear_extras) and compares its ranker with the shipped
pool's. A change the interval puts above zero on every part earns its place.
The test part is never read.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import machine, table, write_json
from benchmarks.ranker_params import Pools, parts_of, prepare
from evaluation.bootstrap import paired_interval
from evaluation.ranker import TrainingRows, train
from serving.ranker import FEATURES

GROUPS: dict[str, tuple[str, ...]] = {
    "linear": ("lin_sum", "lin_max", "lin_source", "lin_rank"),
    "embedding": ("emb_sum", "emb_max", "emb_source"),
    "content": ("content_sum",),
    "moment": ("log_gap_s", "new_session", "session_len"),
    "visits": ("visits", "start_trend"),
    "age": ("log_age_s",),
}


def masked(x: np.ndarray, columns: list[int]) -> np.ndarray:
    out = x.copy()
    out[:, columns] = np.nan
    return out


def compare(
    base: Pools, base_score: Any, other: Pools, other_score: Any
) -> dict[str, dict[str, Any]]:
    """HR@10 of both and the paired interval of other − base, over all
    predictions and over first clicks of a session."""
    out = {}
    for segment, only in (("all", False), ("new session", True)):
        a, b = base.hits(base_score, only), other.hits(other_score, only)
        users = [u for u in sorted(a) if a[u][0]]
        n = [a[u][0] for u in users]
        iv = paired_interval(n, [a[u][1] for u in users], [b[u][1] for u in users])
        out[segment] = {
            "predictions": sum(n),
            "base hr@10": sum(a[u][1] for u in users) / sum(n),
            "other hr@10": sum(b[u][1] for u in users) / sum(n),
            "other - base": iv.as_dict(),
        }
    return out


def run_part(
    frame: Any, catalogue: Any, groups: list[str], extras: list[int]
) -> list[dict[str, Any]]:
    rows, pools = prepare(frame, catalogue)
    full, _ = train(rows)
    out = []
    for group in groups:
        cols = [FEATURES.index(f) for f in GROUPS[group]]
        without = replace(rows, blocks=[masked(b, cols) for b in rows.blocks])
        assert isinstance(without, TrainingRows)
        ranker, report = train(without)
        scored = compare(
            pools, lambda x, r=ranker, c=cols: r.scores(masked(x, c)), pools, full.scores
        )
        out.append(
            {
                "variant": f"full − without {group}",
                "features": list(GROUPS[group]),
                **scored,
                "trees": report.trees,
            }
        )
        print(out[-1], flush=True)
    for extra in extras:
        size = replace(rows.size, linear_extra=extra)
        more_rows, more_pools = prepare(frame, catalogue, size)
        ranker, report = train(more_rows)
        # This pool against the shipped one, on the same predictions.
        scored = compare(pools, full.scores, more_pools, ranker.scores)
        out.append(
            {"variant": f"+ {extra} linear extras − shipped pool", "features": [], **scored,
             "trees": report.trees}
        )  # fmt: skip
        print(out[-1], flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="ml-latest-small")
    p.add_argument("--no-halves", action="store_true")
    p.add_argument("--groups", default=",".join(GROUPS))
    p.add_argument(
        "--linear-extra",
        default="",
        help="comma-separated pool sizes of linear extras to try against the shipped pool",
    )
    p.add_argument("--out", type=Path, default=Path("docs/evaluation/ranker_features.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    groups = [g for g in args.groups.split(",") if g]
    extras = [int(e) for e in args.linear_extra.split(",") if e]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        p.error(f"unknown groups {unknown}; choose from {list(GROUPS)}")
    parts, catalogue = parts_of(args.dataset, halves=not args.no_halves)
    rows = [
        {"data": part, **r}
        for part, frame in parts.items()
        for r in run_part(frame, catalogue, groups, extras)
    ]
    cells = [
        [
            r["data"],
            r["variant"],
            segment,
            r[segment]["predictions"],
            f"{r[segment]['base hr@10']:.4f}",
            f"{r[segment]['other hr@10']:.4f}",
            "{diff:+.4f} [{lo:+.4f}, {hi:+.4f}]".format(**r[segment]["other - base"]),
        ]
        for r in rows
        for segment in ("all", "new session")
    ]
    print(table(["data", "variant", "segment", "n", "base", "other", "Δ [95 %]"], cells))
    write_json(args.out, {"machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
