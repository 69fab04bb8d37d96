"""Memory of one API worker's item-level state, for a catalogue of a given size.

Builds in this process what a worker holds once it has served every item: the
embedding index (flat FAISS, float32) with its neighbour cache warmed as at
start-up (ServingSettings.warm_items), and the item cache (serving.items) with
a co-occurrence row for every item (``candidates_per_item`` neighbours), every
item's popularity and the trending head. Rows and vectors are random: memory
depends on the shapes, not the values. Prints a table and writes JSON: resident
memory (RSS) after each step, against the interpreter and libraries alone.

    .venv/bin/python -m benchmarks.serving_memory --items 62000    # ml-25m's size
    .venv/bin/python -m benchmarks.serving_memory --items 9742     # ml-latest-small
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import numpy as np

from offline.index import ItemIndex
from serving.items import ItemCache
from serving.settings import ServingSettings
from serving.store import RedisStateReader


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--items", type=int, default=62_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("docs/loadtest/serving_memory.json"))
    args = p.parse_args(argv)
    settings = ServingSettings()
    per_item = settings.blend.candidates_per_item
    rng = np.random.default_rng(args.seed)
    ids = [str(i) for i in range(args.items)]
    steps: list[tuple[str, float, float]] = []

    def step(name: str, started: float) -> None:
        gc.collect()
        steps.append((name, rss_mb(), time.perf_counter() - started))

    t = time.perf_counter()
    step("interpreter + libraries", t)
    t = time.perf_counter()
    vectors = rng.standard_normal((args.items, args.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = ItemIndex.from_vectors(ids, vectors, titles={i: f"Title {i}" for i in ids})
    del vectors
    step(f"embedding index ({args.items:,} x {args.dim})", t)
    t = time.perf_counter()
    warm = ids[: min(settings.warm_items, args.items)]
    index.similar_many(warm, per_item)
    step(f"index neighbour cache ({len(warm):,} items x {per_item})", t)
    t = time.perf_counter()
    cache = ItemCache(
        RedisStateReader.__new__(RedisStateReader),  # never read: filled directly
        settings.blend,
        row_len=per_item,
        trend_len=settings.trend_head_len,
        max_rows=settings.item_cache_rows,
        max_vocab=settings.item_vocab_max,
    )
    for item in ids:
        members = rng.choice(args.items, per_item, replace=False)
        counts = np.sort(rng.integers(1, 1000, per_item).astype(np.float64))[::-1]
        cache.put(item, [ids[m] for m in members], counts)
    counts_all = rng.integers(1, 10**5, args.items).tolist()
    cache.put_popularity({i: float(c) for i, c in zip(ids, counts_all, strict=True)})
    step(f"item cache ({cache.rows_held:,} rows x {per_item}, popularity)", t)

    base = steps[0][1]
    print(f"{'after':58s} {'RSS MB':>8s} {'+MB':>8s} {'s':>6s}")
    for name, rss, secs in steps:
        print(f"{name:58s} {rss:8.1f} {rss - base:8.1f} {secs:6.1f}")
    result = {
        "items": args.items,
        "dim": args.dim,
        "per_item": per_item,
        "steps": [{"after": n, "rss_mb": round(r, 1), "seconds": round(s, 2)} for n, r, s in steps],
        "worker_item_state_mb": round(steps[-1][1] - base, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\nitem-level state of one worker: {result['worker_item_state_mb']} MB; wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
