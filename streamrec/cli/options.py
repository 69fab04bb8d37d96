"""Option groups shared by several subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

from producer.dataset import resolve_dataset


def add_dataset_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("dataset")
    g.add_argument(
        "--dataset", default="ml-latest-small", help="MovieLens release name (default: %(default)s)"
    )
    g.add_argument("--path", type=Path, help="a dataset directory or ratings file to use as is")
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
    g.add_argument("--limit", type=int, help="use only the first N events in time order")


def resolve_dataset_arg(args: argparse.Namespace) -> Path:
    return resolve_dataset(
        args.dataset, path=args.path, data_dir=args.data_dir, download=not args.no_download
    )
