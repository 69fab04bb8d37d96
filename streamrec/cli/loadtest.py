"""``streamrec loadtest``: a replay (MovieLens or a click log) plus open-loop lookups (see
streamrec.loadtest)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from streamrec.cli.options import add_dataset_args, load_interactions


def _env_pairs(values: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values or []:
        name, sep, val = value.partition("=")
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {value!r}")
        out[name] = val
    return out


def cmd_loadtest(args: argparse.Namespace) -> int:
    from streamrec.loadtest.run import LoadTestOptions, run_loadtest

    summary = run_loadtest(
        LoadTestOptions(
            out_dir=args.out,
            warmup=args.warmup,
            rate=None if args.speed else args.rate,
            speed=args.speed,
            rps=args.rps,
            duration_s=args.duration,
            max_requests=args.max_requests,
            k=args.k,
            workers=args.workers,
            connections=args.connections,
            api_env=_env_pairs(args.api_env),
            consumer_env=_env_pairs(args.consumer_env),
            progress=not args.quiet,
            command=shlex.join(["streamrec", *sys.argv[1:]]),
        ),
        load_interactions(args),
    )
    # Exit 1 when the server failed requests (a 5xx other than the 503 of
    # shedding), so CI and scripts notice; an overload run that sheds exits 0.
    return 1 if summary["requests"]["server_failures"] else 0


def register(sub: Any) -> None:
    """Add the ``loadtest`` subcommand to streamrec.cli's subparsers."""
    p = sub.add_parser(
        "loadtest",
        help="replay MovieLens (or a click log) through Kafka while timing open-loop API lookups",
        description="Bounded in time and requests; loopback only. Writes results.json, "
        "summary.md and PNG plots to --out.",
    )
    add_dataset_args(p)
    pace = p.add_mutually_exclusive_group()
    pace.add_argument(
        "--rate", type=float, default=2000.0, help="ingest events/s (default %(default)s)"
    )
    pace.add_argument("--speed", type=float, help="ingest at this multiple of real time instead")
    p.add_argument("--rps", type=float, default=500.0, help="lookups/s (default %(default)s)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds (default %(default)s)")
    p.add_argument("--max-requests", type=int, default=200_000, help="hard bound on lookups")
    p.add_argument("--warmup", type=float, default=0.5, help="share of events before the clock")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--workers", type=int, default=1, help="API worker processes")
    p.add_argument("--connections", type=int, default=64, help="load generator connections")
    p.add_argument("--api-env", action="append", metavar="NAME=VALUE", help="extra env for the API")
    p.add_argument(
        "--consumer-env", action="append", metavar="NAME=VALUE", help="extra env for the consumer"
    )
    p.add_argument("--out", type=Path, default=Path("loadtest-results"), help="output directory")
    p.add_argument("--quiet", action="store_true", help="no progress line or summary")
    p.set_defaults(func=cmd_loadtest)
