"""Serving throughput: GET /recommendations against a baseline measured in the same run.

The baseline, GET /bench/fetch/{user}, makes exactly the recommendation's Redis
round trip (the same Lua script, arguments and reply parsing) and returns a tiny
body without scoring; the ratio recommendations/baseline is what the scoring,
the embedding neighbours and the response cost. GET /health (one PING) is shown
as the framework's floor. Absolute rates drift with the machine; the ratio is
the figure to compare.

Setup: an isolated live stack (streamrec.local.harness.LiveRun), the index built from
the dataset, every event replayed and applied, so the lookups read real state.
Each endpoint is measured closed-loop (each connection sends its next request as
soon as the last one returns) by a separate load process, in interleaved rounds
so that a burst of background load hits all endpoints alike; the median round
counts.

    .venv/bin/python benchmarks/serving_bench.py --data-dir ../shared/datasets
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ENDPOINTS = {
    "health (PING only)": "/health",
    "bare: same Redis round trip, no scoring": "/bench/fetch/{user}?k=10",
    "recommendations k=10": "/recommendations/{user}?k=10",
}


def measure(port: int, path: str, users: list[str], seconds: float, connections: int) -> dict:
    from streamrec.loadtest.http import LoadPlan, LoadProcess
    from streamrec.loadtest.stats import latency_summary

    plan = LoadPlan(
        port=port,
        path_template=path,
        schedule=None,
        users=users,
        connections=connections,
        duration_s=seconds,
        keep_items=False,
    )
    records = LoadProcess(plan, time.time() + 1.5).join()
    ok = [r for r in records if r.status == 200]
    return {
        "requests": len(records),
        "errors": len(records) - len(ok),
        "rps": len(ok) / seconds,
        "latency_ms": latency_summary([r.latency_ms for r in ok]),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=Path("../shared/datasets"))
    p.add_argument("--dataset", default="ml-latest-small")
    p.add_argument("--limit", type=int, help="use only the first N events")
    p.add_argument("--seconds", type=float, default=4.0, help="per endpoint and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("docs/loadtest/serving_bench.json"))
    args = p.parse_args(argv)

    from offline.job import build_index
    from producer.client import ClickProducer
    from producer.dataset import resolve_dataset
    from producer.movielens import load_ratings, load_titles, to_events
    from producer.replay import replay
    from streamrec.local.harness import LiveRun

    data = resolve_dataset(args.dataset, data_dir=args.data_dir, download=False)
    df = load_ratings(data, limit=args.limit)
    users = df["user_id"].unique().tolist()
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in ENDPOINTS}
    with LiveRun() as run:
        build_index(df, run.artifacts, titles=load_titles(data), source=str(data))
        run.start_consumer()
        with ClickProducer(run.kafka) as producer:
            sent = replay(to_events(df), producer)
        run.wait_applied(sent.sent)
        # Started on live state, as after a deploy: it warms its neighbour cache
        # with the trending items while loading the index (ServingSettings.warm_items).
        # Shedding off: the benchmark measures how fast each endpoint answers
        # with all its connections in flight, not how the limiter sheds them.
        api = run.start_api(
            workers=args.workers,
            extra_env={
                "STREAMREC_SERVING_BENCH_ROUTES": "true",
                "STREAMREC_SERVING_MAX_IN_FLIGHT": str(args.connections),
                "STREAMREC_SERVING_MAX_WAITING": str(args.connections),
            },
        )
        port = int(api.rsplit(":", 1)[1])
        for r in range(args.rounds):
            for name, path in ENDPOINTS.items():
                res = measure(port, path, users, args.seconds, args.connections)
                rounds[name].append(res)
                print(f"round {r + 1}: {name:42s} {res['rps']:8,.0f} req/s", file=sys.stderr)

    table = {}
    for name, results in rounds.items():
        best = sorted(results, key=lambda x: x["rps"])[len(results) // 2]  # the median round
        table[name] = {**best, "rps_rounds": [round(x["rps"], 1) for x in results]}
    base = table["bare: same Redis round trip, no scoring"]["rps"]
    rec = table["recommendations k=10"]["rps"]
    # Ratios per round too: both endpoints of one round saw the same background.
    per_round = [
        a["rps"] / b["rps"]
        for a, b in zip(
            rounds["recommendations k=10"],
            rounds["bare: same Redis round trip, no scoring"],
            strict=True,
        )
        if b["rps"] > 0
    ]
    result = {
        "config": vars(args) | {"data": str(data), "events": len(df)},
        "endpoints": table,
        "ratio_recommendations_to_bare": rec / base if base else None,
        "ratio_per_round": per_round,
        "ratio_median_of_rounds": statistics.median(per_round) if per_round else None,
    }
    print()
    print(f"{'endpoint':44s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>7s}")
    for name, row in table.items():
        lat = row["latency_ms"]
        print(
            f"{name:44s} {row['rps']:8,.0f} {lat['p50'] or 0:8.2f} {lat['p99'] or 0:8.2f} "
            f"{row['errors']:7d}"
        )
    print(
        f"\nratio recommendations / bare = {result['ratio_recommendations_to_bare']:.2f} "
        f"(median of per-round ratios {result['ratio_median_of_rounds']:.2f}; target >= 0.5)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
