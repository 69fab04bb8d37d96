"""Serving throughput: GET /recommendations against a baseline measured in the same run.

GET /health (one PING) is the framework's floor. The bare endpoint, GET
/bench/fetch/{user}, makes exactly the recommendation's reads (the user's
history from Redis, the item arrays from the worker's cache) and returns a tiny
body without scoring. recommendations / health is the headline ratio;
recommendations / bare is what the scoring, the embedding neighbours and the
response cost. The API process's own CPU time per request is read from
/proc for each round. Absolute rates drift with the machine; the ratios are the
figures to compare.

Setup: an isolated live stack (streamrec.local.harness.LiveRun), the index built from
the dataset, every event replayed and applied, so the lookups read real state.
Each endpoint is measured closed-loop (each connection sends its next request as
soon as the last one returns) by a separate load process, in interleaved rounds
so that a burst of background load hits all endpoints alike; the median round
counts.

With ``--ranker`` the index is built with the learned ranker (evaluation/ranker.py,
as ``streamrec build-index`` ships it); the endpoints above are measured on an
API with the ranker off (STREAMREC_SERVING_RANKER=false), and "recommendations
k=10, ranker on" on a second API over the same state and index, in the same
rounds.

    .venv/bin/python benchmarks/serving_bench.py --data-dir ../shared/datasets [--ranker]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

RANKED = "recommendations k=10, ranker on"
ENDPOINTS = {
    "health (PING only)": "/health",
    "bare: same Redis round trip, no scoring": "/bench/fetch/{user}?k=10",
    "recommendations k=10": "/recommendations/{user}?k=10",
}


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (/proc/<pid>/stat), in seconds."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def api_pids(root: int) -> list[int]:
    """The API process and, with several workers, its worker processes."""
    pids = [root]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(") ", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == root:
            pids.append(int(stat.parent.name))
    return pids


def measure(
    port: int, path: str, users: list[str], seconds: float, connections: int, pids: list[int]
) -> dict:
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
    before = cpu_seconds(pids)
    records = LoadProcess(plan, time.time() + 1.5).join()
    cpu = cpu_seconds(pids) - before
    ok = [r for r in records if r.status == 200]
    return {
        "requests": len(records),
        "errors": len(records) - len(ok),
        "rps": len(ok) / seconds,
        "latency_ms": latency_summary([r.latency_ms for r in ok]),
        # The API's CPU over the round (its idle start included) per request.
        "api_cpu_us_per_request": round(1e6 * cpu / len(records), 1) if records else None,
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
    p.add_argument("--ranker", action="store_true", help="also measure the learned ranker")
    p.add_argument("--out", type=Path, default=Path("docs/loadtest/serving_bench.json"))
    args = p.parse_args(argv)

    from core.catalogue import Catalogue
    from evaluation.ranker import build_index
    from offline.job import OfflineSettings
    from producer.client import ClickProducer
    from producer.dataset import resolve_dataset
    from producer.movielens import load_ratings, load_titles, to_events
    from producer.replay import replay
    from streamrec.local.harness import LiveRun

    data = resolve_dataset(args.dataset, data_dir=args.data_dir, download=False)
    df = load_ratings(data, limit=args.limit)
    users = df["user_id"].unique().tolist()
    endpoints = dict(ENDPOINTS)
    if args.ranker:
        endpoints[RANKED] = ENDPOINTS["recommendations k=10"]
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in endpoints}
    with LiveRun() as run:
        build_index(
            df,
            run.artifacts,
            OfflineSettings(ranker=args.ranker),
            catalogue=Catalogue.from_titles(load_titles(data)),
            source=str(data),
        )
        run.start_consumer()
        with ClickProducer(run.kafka) as producer:
            sent = replay(to_events(df), producer)
        run.wait_applied(sent.sent)
        # Started on live state, as after a deploy: it warms its neighbour cache
        # with the trending items while loading the index (ServingSettings.warm_items).
        # Shedding off: the benchmark measures how fast each endpoint answers
        # with all its connections in flight, not how the limiter sheds them.
        env = {
            "STREAMREC_SERVING_BENCH_ROUTES": "true",
            "STREAMREC_SERVING_MAX_IN_FLIGHT": str(args.connections),
            "STREAMREC_SERVING_MAX_WAITING": str(args.connections),
        }
        ports, pids_of = {}, {}
        for name, ranker in (("blend", False), *((("ranker", True),) if args.ranker else ())):
            api = run.start_api(
                workers=args.workers,
                extra_env={**env, "STREAMREC_SERVING_RANKER": str(ranker).lower()},
            )
            ports[name] = int(api.rsplit(":", 1)[1])
            root = [p for n, p in run.children.procs if n == "api"][-1].pid
            pids_of[name] = api_pids(root)
        for r in range(args.rounds):
            for name, path in endpoints.items():
                which = "ranker" if name == RANKED else "blend"
                port = ports[which]
                res = measure(port, path, users, args.seconds, args.connections, pids_of[which])
                rounds[name].append(res)
                print(f"round {r + 1}: {name:42s} {res['rps']:8,.0f} req/s", file=sys.stderr)

        rss = {str(pid): round(rss_mb(pid), 1) for p in pids_of.values() for pid in p}

    table = {}
    for name, results in rounds.items():
        best = sorted(results, key=lambda x: x["rps"])[len(results) // 2]  # the median round
        table[name] = {**best, "rps_rounds": [round(x["rps"], 1) for x in results]}
    rec_rounds = rounds["recommendations k=10"]
    # Ratios per round: the endpoints of one round saw the same background load.
    ratios = {
        baseline: [a["rps"] / b["rps"] for a, b in zip(rec_rounds, rounds[name], strict=True)]
        for baseline, name in (
            ("health", "health (PING only)"),
            ("bare", "bare: same Redis round trip, no scoring"),
        )
    }
    if args.ranker:
        ratios["ranker_on_to_off"] = [
            a["rps"] / b["rps"] for a, b in zip(rounds[RANKED], rec_rounds, strict=True)
        ]
    result = {
        "config": vars(args) | {"data": str(data), "events": len(df)},
        "endpoints": table,
        "ratio_recommendations_to_health": statistics.median(ratios["health"]),
        "ratio_recommendations_to_bare": statistics.median(ratios["bare"]),
        "ratios_per_round": ratios,
        **(
            {"ratio_ranker_on_to_off": statistics.median(ratios["ranker_on_to_off"])}
            if args.ranker
            else {}
        ),
        "api_rss_mb": rss,
    }
    print()
    head = f"{'endpoint':44s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'CPU us/req':>10s}"
    print(head + f" {'errors':>7s}")
    for name, row in table.items():
        lat = row["latency_ms"]
        print(
            f"{name:44s} {row['rps']:8,.0f} {lat['p50'] or 0:8.2f} {lat['p99'] or 0:8.2f} "
            f"{row['api_cpu_us_per_request'] or 0:10.0f} {row['errors']:7d}"
        )
    print(
        f"\nrecommendations / health = {result['ratio_recommendations_to_health']:.2f} "
        f"(target >= 0.5), / bare = {result['ratio_recommendations_to_bare']:.2f}; "
        f"medians of the per-round ratios. API resident memory: {rss} MB"
    )
    if args.ranker:
        print(f"ranker on / off = {result['ratio_ranker_on_to_off']:.2f} (requests/s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
