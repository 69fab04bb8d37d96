"""`streamrec evaluate`: prequential next-click evaluation, in process or through the live stack."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

log = logging.getLogger("streamrec.evaluate")


def register(sub: Any) -> None:
    """Add the `evaluate` subcommand to the CLI's subparsers."""
    from streamrec.cli import add_dataset_args

    p = sub.add_parser(
        "evaluate",
        help="prequential next-click evaluation of the references and the blend",
    )
    add_dataset_args(p)
    p.add_argument("--test-frac", type=float, default=0.2, help="default: %(default)s")
    p.add_argument(
        "--valid-frac",
        type=float,
        default=0.1,
        help="validation part just before the test part (default: %(default)s)",
    )
    p.add_argument(
        "--tune",
        action="store_true",
        help="choose pairing rules and blend weights on the validation part first",
    )
    p.add_argument(
        "--reindex-every",
        type=int,
        default=0,
        help="rebuild the embedding index every N test events from the events before (0: never)",
    )
    p.add_argument("--dim", type=int, default=64, help="embedding dimension (default: %(default)s)")
    p.add_argument(
        "--live",
        action="store_true",
        help="also run the test part through Kafka, the consumer and the HTTP API",
    )
    p.add_argument(
        "--live-events",
        type=int,
        default=4000,
        help="test events to send through the live stack (default: %(default)s)",
    )
    p.add_argument("--out", type=Path, default=Path("docs/evaluation"), help="output directory")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from consumer.settings import ConsumerSettings
    from core.errors import ConfigError
    from offline.eval_report import write_report
    from offline.eval_tune import default_grid, tune
    from offline.evaluate import (
        ReadSpec,
        RunResult,
        catalog_size,
        default_methods,
        index_builder_for,
        prequential,
        split_points,
    )
    from producer.movielens import load_ratings, to_events
    from serving.settings import ServingSettings
    from streamrec.cli import resolve_dataset_arg

    data = args.path or resolve_dataset_arg(args)
    df = load_ratings(data, limit=args.limit)
    events = list(to_events(df))
    try:
        valid_start, test_start = split_points(len(events), args.valid_frac, args.test_frac)
    except ValueError as exc:
        raise ConfigError(str(exc), hint="use fractions with valid + test < 1") from None
    consumer = ConsumerSettings()
    serving = ServingSettings()
    store = consumer.store_config()
    rules = store.rules
    cfg = serving.blend.to_config()
    # Serving excludes only the history it reads; the protocol excludes every
    # item the user rated, which the loop does from its own record.
    read = ReadSpec(
        history_len=serving.history_len,
        trend_candidates=serving.trend_candidates,
        request_k=20,
    )
    builder = index_builder_for(df, dim=args.dim)
    catalog = catalog_size(df)
    result: dict[str, Any] = {
        "command": "streamrec " + shlex.join(sys.argv[1:]),
        "dataset": str(data),
        "events": len(events),
        "split": {
            "validation": [valid_start, test_start],
            "test": [test_start, len(events)],
            "fractions": [1 - args.valid_frac - args.test_frac, args.valid_frac, args.test_frac],
        },
    }

    if args.tune and valid_start < test_start:
        best, rows = tune(
            events,
            valid_start,
            test_start,
            default_grid(rules, cfg),
            store=store,
            read=read,
            index_builder=builder,
        )
        result["tuning"] = rows
        rules, cfg = best.rules, best.cfg
        store = replace(store, rules=rules)
        log.info("validation chose %s", best.label())

    methods = default_methods(cfg)

    def run_part(lo: int, hi: int) -> RunResult:
        return prequential(
            events,
            lo,
            hi,
            methods,
            rules=rules,
            store=store,
            read=read,
            index_builder=builder,
            reindex_every=args.reindex_every,
            catalog=catalog,
        )

    if valid_start < test_start:
        valid = run_part(valid_start, test_start)
        result["validation"] = {
            "range": [valid_start, test_start],
            "predictions": valid.predictions,
            "seconds": round(valid.seconds, 1),
            "methods": valid.methods,
        }
    test = run_part(test_start, len(events))
    result["test"] = {
        "range": [test_start, len(events)],
        "predictions": test.predictions,
        "seconds": round(test.seconds, 1),
        "index_builds": test.index_builds,
        "methods": test.methods,
    }
    result["settings"] = {
        "rules": asdict(rules),
        "store": {k: v for k, v in asdict(store).items() if k != "rules"},
        "blend": asdict(cfg),
        "read": asdict(read),
        "reindex_every": args.reindex_every,
        "dim": args.dim,
    }

    if args.live:
        from offline.eval_live import live_compare

        result.update(
            live_compare(
                df,
                events,
                test_start,
                min(len(events), test_start + args.live_events),
                methods=methods,
                rules=rules,
                store=store,
                read=read,
                dim=args.dim,
                catalog=catalog,
            )
        )

    paths = write_report(result, args.out)
    for name, block in (("validation", result.get("validation")), ("test", result["test"])):
        if block:
            print(f"{name}: " + _line(block["methods"]))
    if "live" in result:
        print("live: " + _line(result["live"]["methods"]))
        print(f"in-process on the same events: {_line(result['live_reference']['methods'])}")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _line(methods: dict[str, dict[str, Any]]) -> str:
    return ", ".join(f"{name} HR@10={m['hr@10']:.4f}" for name, m in methods.items())
