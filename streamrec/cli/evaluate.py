"""`streamrec evaluate`: prequential next-click evaluation, in process or through the live stack."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from consumer.settings import ConsumerSettings
from core.errors import ConfigError
from evaluation.prequential import (
    EvalSetup,
    catalog_size,
    default_methods,
    index_builder_for,
    prequential,
    split_points,
)
from evaluation.ranker import RANKED, with_ranker
from evaluation.report import write_report
from evaluation.tune import default_grid, tune
from offline.job import OfflineSettings
from producer.frame import to_events
from serving.settings import ServingSettings
from streamrec.cli.options import add_dataset_args, load_interactions
from streamrec.local.live_eval import live_compare

log = logging.getLogger("streamrec.evaluate")


def register(sub: Any) -> None:
    """Add the `evaluate` subcommand to the CLI's subparsers."""
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
    p.add_argument(
        "--dim", type=int, help="embedding dimension (default: STREAMREC_OFFLINE_DIM or 64)"
    )
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
    p.add_argument(
        "--half",
        choices=["first", "second"],
        help="evaluate only the first or the second time-ordered half of the ratings "
        "(each split into warm-up, validation and test the same way): a check that a "
        "result holds on two periods",
    )
    p.add_argument(
        "--baseline",
        default="co-occurrence",
        help="the method every other one is compared with, a paired per-user bootstrap "
        "95%% interval of the difference in HR@10 and NDCG@10 (default: %(default)s)",
    )
    p.add_argument("--out", type=Path, default=Path("docs/evaluation"), help="output directory")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    data = load_interactions(args)
    df = data.frame
    if args.half:
        middle = len(df) // 2  # the events are in timestamp order (producer.frame)
        df = df.iloc[:middle] if args.half == "first" else df.iloc[middle:]
        df = df.reset_index(drop=True)
    events = list(to_events(df))
    try:
        valid_start, test_start = split_points(len(events), args.valid_frac, args.test_frac)
    except ValueError as exc:
        raise ConfigError(str(exc), hint="use fractions with valid + test < 1") from None
    # The shipped (or environment-given) consumer and serving settings. Serving
    # excludes only the history it reads; the protocol excludes every item the
    # user interacted with, which the loop does from its own record.
    if not any(entry.categories for _, entry in data.catalogue.items()):
        log.info("no item has a category: intra-list diversity is not measured")
    offline = OfflineSettings()
    if args.dim:
        offline = offline.model_copy(update={"dim": args.dim})
    setup = EvalSetup(
        consumer=ConsumerSettings(),
        serving=ServingSettings(),
        offline=offline,
        index_builder=index_builder_for(df, offline),
        reindex_every=args.reindex_every,
        catalog=catalog_size(df),
        baseline=args.baseline,
        catalogue=data.catalogue,
    )
    result: dict[str, Any] = {
        "command": "streamrec " + shlex.join(sys.argv[1:]),
        "dataset": data.source + (f" ({args.half} half)" if args.half else ""),
        "events": len(events),
        "split": {
            "validation": [valid_start, test_start],
            "test": [test_start, len(events)],
            "fractions": [1 - args.valid_frac - args.test_frac, args.valid_frac, args.test_frac],
        },
    }
    if data.report is not None:  # a click log: what was read, kept and skipped
        result["read"] = {**data.report.to_dict(), "summary": data.report.summary()}

    if args.tune and valid_start < test_start:
        grid = default_grid(setup.rules, setup.serving.blend)
        best, rows = tune(events, valid_start, test_start, grid, setup)
        result["tuning"] = rows
        setup = setup.with_rules(best.rules).with_blend(best.cfg)
        log.info("validation chose %s", best.label())

    methods = default_methods(setup.serving.blend)
    names = {m.name for m in methods} | ({RANKED} if offline.ranker else set())
    if args.baseline not in names:
        raise ConfigError(
            f"no method named {args.baseline!r}", hint="one of: " + ", ".join(sorted(names))
        )
    if valid_start < test_start:
        part_methods, trained = with_ranker(df, valid_start, methods, setup)
        valid = prequential(events, valid_start, test_start, part_methods, setup)
        result["validation"] = {
            "range": [valid_start, test_start],
            "predictions": valid.predictions,
            "seconds": round(valid.seconds, 1),
            "methods": valid.methods,
            **trained,
        }
    part_methods, trained = with_ranker(df, test_start, methods, setup)
    test = prequential(events, test_start, len(events), part_methods, setup)
    result["test"] = {
        "range": [test_start, len(events)],
        "predictions": test.predictions,
        "seconds": round(test.seconds, 1),
        "index_builds": test.index_builds,
        "methods": test.methods,
        **trained,
    }
    result["settings"] = setup.describe()

    if args.live:
        span = range(test_start, min(len(events), test_start + args.live_events))
        result.update(live_compare(df, events, span, methods, setup))

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
