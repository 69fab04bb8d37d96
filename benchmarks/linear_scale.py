"""The session linear model's fit time and peak memory on a synthetic catalogue.

    .venv/bin/python -m benchmarks.linear_scale [--items 62000] [--events 1000000] \
        [--max-items 2000,4000,8000] [--out docs/bench/linear_scale.json]

Clicks are drawn with Zipf-like item popularity (exponent 1) over ``--items``
items (62,000: ml-25m's catalogue) by 20,000 users in sessions of 1-40 clicks,
so the ``--max-items`` cap, not the catalogue, sets the dense solve's size
(time n³, memory n²). Each cap is fitted in a fresh process so that its peak
resident memory is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import machine, table, write_json
from offline.linear import LinearConfig, fit_linear

GAP = 30 * 60 * 1000


def synthetic(items: int, events: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, items + 1)
    item = rng.choice(items, size=events, p=weights / weights.sum())
    lengths = rng.integers(1, 41, size=events // 20 + 1)
    session = np.repeat(np.arange(len(lengths)), lengths)[:events]
    user = session % 20_000
    # Sessions a day apart per user, clicks a minute apart within one.
    start = (session // 20_000) * 86_400_000
    within = np.arange(events) - np.repeat(np.cumsum(lengths) - lengths, lengths)[:events]
    return pd.DataFrame(
        {"user_id": user.astype(str), "item_id": item.astype(str), "ts": start + within * 60_000}
    )


def one(items: int, events: int, cap: int) -> dict[str, float]:
    df = synthetic(items, events)
    began = time.perf_counter()
    rows = fit_linear(df, GAP, LinearConfig(max_items=cap))
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return {"max_items": cap, "modelled": len(rows), "fit_s": seconds, "peak_rss_gb": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--items", type=int, default=62_000)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--max-items", default="2000,4000,8000")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child's cap
    p.add_argument("--out", type=Path, default=Path("docs/bench/linear_scale.json"))
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.items, args.events, args.one)))
        return
    rows = []
    for cap in (int(c) for c in args.max_items.split(",")):
        cmd = [sys.executable, "-m", "benchmarks.linear_scale", "--items", str(args.items),
               "--events", str(args.events), "--one", str(cap)]  # fmt: skip
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    cells = [
        [r["max_items"], r["modelled"], f"{r['fit_s']:.1f}", f"{r['peak_rss_gb']:.2f}"]
        for r in rows
    ]
    print(table(["max_items", "modelled", "fit s", "peak RSS GB"], cells))
    write_json(
        args.out,
        {"machine": machine(), "items": args.items, "events": args.events, "rows": rows},
    )


if __name__ == "__main__":
    main()
