"""What the learned ranker costs per request in the API's scoring path.

    STREAMREC_DATA_DIR=../shared/datasets .venv/bin/python -m benchmarks.ranker_cost \
        [--users 1000] [--pool 50:15] [--out docs/bench/ranker_cost.json]

ml-latest-small's first 80 % is applied to the in-memory state and the ranker
is trained on it as ``streamrec build-index`` would (evaluation/ranker.py,
shipped settings). Then, for returning users of the rest (users who also
clicked before the cut, so a full read: ten sources and their rows; a new
user's request costs far less), the candidates are prepared once as the API's
item cache holds them (arrays), and each request is scored both ways,
interleaved so the machine's drift hits both alike:

- ranker off: ``fast_blend`` for k = 10, what the API runs with the ranker off;
- ranker on, by stage, as ``serving.routes.rank`` runs them: the blend's pool
  (``fast_blend`` for the pool size), the linear model's rows
  (``ItemIndex.linear_rows``), the extras (``extend_pool``), the features over
  the arrays (``serving.ranker_fast.fast_features``), the trees (compiled, as
  served), the final order;
- and beside them what the same request cost before the features were built
  from the arrays: the arrays as lists (``serving.items.as_lists``) and the
  reference ``serving.ranker.features`` over them; and the same trees through
  LightGBM's own ``predict`` (one thread), what the server falls back to where
  compiling fails.

Reports the median and p99 µs per request of each, and the ratio of the two totals.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path

from benchmarks.common import machine, table, write_json
from benchmarks.requests import prepare
from evaluation.prequential import EvalSetup
from evaluation.ranker import train_on
from offline.job import OfflineSettings
from serving.blend import Candidates
from serving.items import as_lists
from serving.ranker import Moment, extend_pool, features
from serving.ranker_fast import fast_features
from serving.scoring import fast_blend
from serving.settings import ServingSettings

STAGES = ("pool", "linear", "extras", "features", "trees", "order")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--users", type=int, default=1000)
    p.add_argument(
        "--pool",
        default=None,
        help="pool:trend_extra to time instead of the trained model's (the trees' cost "
        "per row does not depend on the pool they were trained on)",
    )
    p.add_argument("--out", type=Path, default=Path("docs/bench/ranker_cost.json"))
    args = p.parse_args()
    serving = ServingSettings()
    offline = OfflineSettings()
    cfg = serving.blend
    ready = prepare(args.users, cfg, serving.read_spec(10), offline, returning=True)
    vocab = ready.vocab
    trained = train_on(
        ready.df.iloc[: ready.cut].reset_index(drop=True),
        EvalSetup(serving=serving, offline=offline, catalogue=ready.catalogue),
    )
    assert trained is not None
    ranker, report = trained
    compiled = ranker.compile()
    index = ready.index
    prepared = [
        (
            cands,
            set(us.history_items),
            Moment.of(us.clock, us.history, serving.session_gap_ms),
            us.pop.get,
        )
        for us, cands in ready.requests
    ]
    off: list[float] = []
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    total: list[float] = []
    lightgbm: list[float] = []
    reference: list[float] = []
    size = ranker.size
    if args.pool:
        pool, extra = (int(v) for v in args.pool.split(":"))
        size = replace(size, pool=pool, trend_extra=extra)
    per_item = cfg.candidates_per_item
    first_seen = index.first_seen
    # At least 1,500 calls each, however few users return.
    for _ in range(max(3, -(-1500 // len(prepared)))):
        for cands, seen, moment, pop in prepared:
            t0 = time.perf_counter()
            fast_blend(cands, seen, 10, cfg, vocab)
            t1 = time.perf_counter()
            first = fast_blend(cands, seen, size.pool, cfg, vocab)
            t2 = time.perf_counter()
            linear = index.linear_rows(cands.sources, per_item)
            t3 = time.perf_counter()
            trend = cands.trending  # as serving.routes.rank: pairs and norms made per head
            head = Candidates(cands.sources, {}, {}, trend.pairs, linear=linear)
            pool = extend_pool(first, head, seen, cfg, size, None, trend.norms)
            t4 = time.perf_counter()
            x = fast_features(cands, pool, moment, cfg, vocab, pop, linear, first_seen)
            t5 = time.perf_counter()
            scores = ranker.scores(x).tolist()
            t6 = time.perf_counter()
            sorted(range(len(pool)), key=lambda i: (-scores[i], pool[i].item_id))[:10]
            t7 = time.perf_counter()
            lists = replace(
                as_lists(cands, vocab, pop, per_item), linear=linear, first_seen=first_seen
            )
            features(lists, pool, moment, cfg)
            t8 = time.perf_counter()
            ranker.reference_scores(x)
            t9 = time.perf_counter()
            off.append((t1 - t0) * 1e6)
            marks = (t1, t2, t3, t4, t5, t6, t7)
            for name, a, b in zip(STAGES, marks[:-1], marks[1:], strict=True):
                stages[name].append((b - a) * 1e6)
            total.append((t7 - t1) * 1e6)
            reference.append((t8 - t7) * 1e6)
            lightgbm.append((t9 - t8) * 1e6)

    def row(name: str, ts: list[float]) -> list[object]:
        ts = sorted(ts)
        return [name, round(statistics.median(ts), 1), round(ts[int(len(ts) * 0.99)], 1)]

    rows = [row("ranker off: fast_blend k=10", off), row("ranker on: total", total)]
    rows += [row(f"  {name}", ts) for name, ts in stages.items()]
    rows.append(row("the features as before: as_lists + the reference features", reference))
    rows.append(row("the trees by LightGBM's predict instead", lightgbm))
    ratio = statistics.median(total) / statistics.median(off)
    print(table(["per request", "median µs", "p99 µs"], rows))
    print(
        f"ranker on / off (median µs) = {ratio:.1f}; trees {report.trees} "
        f"(compiled: {compiled}), pool {size}"
    )
    write_json(
        args.out,
        {
            "machine": machine(),
            "rows": rows,
            "ratio_on_to_off": ratio,
            "trees": report.trees,
            "pool": asdict(size),
            "compiled": compiled,
            "calls": len(off),
        },
    )


if __name__ == "__main__":
    main()
