"""Option groups shared by several subcommands, and the one way they read data.

Every subcommand that reads interactions takes the same options and calls
``load_interactions(args)``: MovieLens by default (``--dataset``, ``--path``,
``--data-dir``), or a team's own click log with ``--format`` and the column
options (docs/own-data.md), plus ``--catalogue`` for titles and categories.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.errors import ConfigError
from producer import sources
from producer.clicklog import TIME_UNITS, ClickLogFormat
from producer.dataset import resolve_dataset
from producer.tabular import FORMATS

# (flag, args attribute) of a click log's required column options, in the order named.
CLICKLOG_REQUIRED = (
    ("--user-col", "user_col"),
    ("--item-col", "item_col"),
    ("--time-col", "time_col"),
    ("--time-unit", "time_unit"),
)
CLICKLOG_OPTIONAL = (("--type-col", "type_col"), ("--weight-col", "weight_col"))
CLICKLOG_EXAMPLE = (
    "e.g. --format csv --path events.csv --user-col visitorid --item-col itemid "
    "--time-col timestamp --time-unit ms --type-col event (see docs/own-data.md)"
)


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_dataset_args(p: argparse.ArgumentParser, *, own_data: bool = True) -> None:
    """The dataset options; with ``own_data``, the click-log and catalogue ones too."""
    g = p.add_argument_group("dataset")
    g.add_argument(
        "--dataset", default="ml-latest-small", help="MovieLens release name (default: %(default)s)"
    )
    g.add_argument(
        "--path",
        type=Path,
        help="a dataset directory or ratings file to use as is (with --format: the click log)",
    )
    g.add_argument(
        "--data-dir",
        type=Path,
        help="directory holding MovieLens folders (default: $STREAMREC_DATA_DIR)",
    )
    g.add_argument(
        "--no-download",
        action="store_true",
        help="fail instead of downloading a missing dataset from GroupLens",
    )
    g.add_argument("--limit", type=_count, help="use only the first N events in time order")
    if not own_data:
        return
    c = p.add_argument_group(
        "your own click log (instead of MovieLens; see docs/own-data.md)",
        "--path FILE is a CSV, TSV or JSON-lines file with a header; name its columns. "
        "Bad rows are skipped and reported (with line numbers) on stderr.",
    )
    c.add_argument("--format", choices=FORMATS, help="the click log's format")
    c.add_argument("--user-col", metavar="NAME", help="the user (or session) id column")
    c.add_argument("--item-col", metavar="NAME", help="the item id column")
    c.add_argument("--time-col", metavar="NAME", help="the event time column")
    c.add_argument(
        "--time-unit",
        choices=TIME_UNITS,
        help="epoch seconds (fractions allowed), epoch milliseconds, or ISO-8601 "
        "(with or without zone; none means UTC)",
    )
    c.add_argument(
        "--type-col", metavar="NAME", help="the event type column (default: every event a click)"
    )
    c.add_argument(
        "--weight-col", metavar="NAME", help="a numeric weight column (default: no weight)"
    )
    k = p.add_argument_group("catalogue")
    k.add_argument(
        "--catalogue",
        type=Path,
        metavar="FILE",
        help="item titles, categories and tags: columns item_id, title, categories, tags "
        "(only item_id required; several categories or tags |-separated); replaces "
        "MovieLens's own",
    )
    k.add_argument(
        "--catalogue-format",
        choices=FORMATS,
        help="the catalogue's format (default: from its file name)",
    )


def resolve_dataset_arg(args: argparse.Namespace) -> Path:
    return resolve_dataset(
        args.dataset, path=args.path, data_dir=args.data_dir, download=not args.no_download
    )


def source_arg(args: argparse.Namespace) -> sources.Source:
    """The interactions the options name; ConfigError (one line, a hint) if they are incomplete."""
    fmt = getattr(args, "format", None)
    if fmt is None:
        named = [
            flag
            for flag, attr in CLICKLOG_REQUIRED + CLICKLOG_OPTIONAL
            if getattr(args, attr, None) is not None
        ]
        if named:
            raise ConfigError(
                f"{', '.join(named)} describe a click log: give --format too",
                hint=CLICKLOG_EXAMPLE,
            )
        return sources.MovieLensSource(args.path or resolve_dataset_arg(args))
    missing = [flag for flag, attr in CLICKLOG_REQUIRED if getattr(args, attr) is None]
    if args.path is None:
        missing.insert(0, "--path")
    if missing:
        raise ConfigError(f"--format {fmt} needs {', '.join(missing)}", hint=CLICKLOG_EXAMPLE)
    return sources.ClickLogSource(
        args.path,
        ClickLogFormat(
            format=fmt,
            user_col=args.user_col,
            item_col=args.item_col,
            time_col=args.time_col,
            time_unit=args.time_unit,
            type_col=args.type_col,
            weight_col=args.weight_col,
        ),
    )


def catalogue_arg(args: argparse.Namespace) -> sources.CatalogueSource | None:
    path = getattr(args, "catalogue", None)
    fmt = getattr(args, "catalogue_format", None)
    if path is None:
        if fmt is not None:
            raise ConfigError("--catalogue-format needs --catalogue FILE")
        return None
    return sources.CatalogueSource(path, fmt)


def load_interactions(
    args: argparse.Namespace, *, with_catalogue: bool = True
) -> sources.Interactions:
    """The interactions (and catalogue) the options name, read the one way every
    subcommand reads them; what a click log's or catalogue's read found goes to stderr."""
    data = sources.load_interactions(
        source_arg(args),
        catalogue=catalogue_arg(args),
        limit=args.limit,
        with_catalogue=with_catalogue,
    )
    for report in data.reports:
        print(report.summary(), file=sys.stderr)
    return data
