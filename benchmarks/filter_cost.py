"""What a request's rules cost in the vectorised scorer (serving/scoring.py).

    STREAMREC_DATA_DIR=../shared/datasets .venv/bin/python -m benchmarks.filter_cost \
        [--out docs/bench/filter_cost.json]

ml-latest-small's first 80 % is applied to the in-memory state; then, for 2,000
users of the rest, the candidates are prepared once as the API's item cache
holds them, and ``fast_blend`` ranks each under every rule in turn (interleaved,
so the machine's drift hits all alike): none, 20 excluded ids, one category
included (Drama), two categories excluded, and both kinds at once. The
category verdicts per code are kept per worker, as in the API, so after the
first requests a rule costs a mask lookup. Reports the median and p99 µs per
call and the ratio to no rule.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from benchmarks.common import machine, table, write_json
from benchmarks.requests import prepare
from offline.job import OfflineSettings
from serving.blend import BlendConfig
from serving.filters import Filters
from serving.reader import ReadSpec
from serving.scoring import fast_blend


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--out", type=Path, default=Path("docs/bench/filter_cost.json"))
    args = p.parse_args()
    cfg = BlendConfig()
    spec = ReadSpec(history_len=50, n_sources=cfg.history_items, per_item=50, n_trend=100)
    ready = prepare(args.users, cfg, spec, OfflineSettings(dim=32))
    catalogue, vocab = ready.catalogue, ready.vocab
    prepared = [(cands, set(us.history_items)) for us, cands in ready.requests]
    popular = ready.df["item_id"].iloc[: ready.cut].value_counts()
    excluded = popular.index[:20].tolist()
    rules = {
        "none": Filters(),
        "exclude 20 ids": Filters(exclude=frozenset(excluded)),
        "category=Drama": Filters(categories=frozenset({"Drama"})),
        "exclude_category=Horror,Children": Filters(
            exclude_categories=frozenset({"Horror", "Children"})
        ),
        "both": Filters(
            exclude=frozenset(excluded),
            categories=frozenset({"Drama", "Comedy"}),
            exclude_categories=frozenset({"Horror"}),
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in rules}
    for _ in range(3):
        for cands, seen in prepared:
            for name, f in rules.items():
                rule = f.rule(catalogue.categories, "bench")
                started = time.perf_counter()
                fast_blend(cands, seen | f.exclude, 10, cfg, vocab, rule)
                times[name].append((time.perf_counter() - started) * 1e6)
    base = statistics.median(times["none"])
    rows = []
    for name, ts in times.items():
        ts.sort()
        med, p99 = statistics.median(ts), ts[int(len(ts) * 0.99)]
        rows.append([name, round(med, 1), round(p99, 1), round(med / base, 2)])
    print(table(["rule", "median µs", "p99 µs", "÷ none"], rows))
    write_json(args.out, {"machine": machine(), "rows": rows, "calls_per_rule": len(times["none"])})


if __name__ == "__main__":
    main()
