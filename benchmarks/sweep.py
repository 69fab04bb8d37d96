"""One setting swept over the validation part, the way settings are chosen.

Each choice is one prequential pass (70/10/20, as ``streamrec evaluate``) with
the shipped settings otherwise, scoring the blend and co-occurrence alone, on
the whole file and on its two time-ordered halves, so a choice that only holds
on one stretch of time shows. The winner is the best validation HR@10 of the
blend on the whole file; test-part figures are printed beside it but never
used to choose. Used by benchmarks/co_half_life.py, benchmarks/feedback_mapping.py
and benchmarks/content_weight.py.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.common import machine, table, write_json
from consumer.settings import ConsumerSettings
from evaluation.prequential import (
    EvalSetup,
    catalog_size,
    default_methods,
    index_builder_for,
    prequential,
    split_points,
)
from offline.job import OfflineSettings
from producer.dataset import resolve_dataset
from producer.movielens import load_ratings, to_events
from serving.settings import ServingSettings

METHODS = ("blend", "co-occurrence")


Configure = Callable[[EvalSetup], EvalSetup]
# Segments reported beside the whole: targets unseen before the part, and an
# item's very first click (evaluation.metrics).
SEGMENTS = ("new_item", "first_click")


def with_consumer(consumer: ConsumerSettings) -> Configure:
    return lambda setup: replace(setup, consumer=consumer)


def run_part(df: pd.DataFrame, configure: Configure, ranges: list[str]) -> dict[str, float]:
    """``{"valid blend hr@10": ..., ...}`` for one frame and one setting."""
    events = list(to_events(df))
    valid_start, test_start = split_points(len(events), 0.1, 0.2)
    offline = OfflineSettings()
    setup = configure(
        EvalSetup(
            serving=ServingSettings(),
            offline=offline,
            index_builder=index_builder_for(df, offline),
            catalog=catalog_size(df),
        )
    )
    methods = [m for m in default_methods(setup.serving.blend) if m.name in METHODS]
    spans = {"valid": (valid_start, test_start), "test": (test_start, len(events))}
    out: dict[str, float] = {}
    for name in ranges:
        lo, hi = spans[name]
        res = prequential(events, lo, hi, methods, setup)
        for m in methods:
            got = res.methods[m.name]
            for metric in ("hr@10", "ndcg@10"):
                out[f"{name} {m.name} {metric}"] = got[metric]
            if m.name == "blend":
                for seg in SEGMENTS:
                    out[f"{name} blend {seg} hr@10"] = got[seg]["hr@10"]
    return out


def parser(doc: str | None, default_out: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="ml-latest-small")
    p.add_argument("--no-halves", action="store_true", help="the whole file only")
    p.add_argument("--valid-only", action="store_true", help="skip the test part")
    p.add_argument("--out", type=Path, default=Path(default_out))
    return p


def sweep(
    args: argparse.Namespace,
    name: str,
    choices: Mapping[str, Any],
    setting: Callable[[Any], Configure],
) -> None:
    """Run every choice on every part, print the table and the choice, write the JSON."""
    logging.basicConfig(level=logging.WARNING)
    df = load_ratings(resolve_dataset(args.dataset, download=False)).reset_index(drop=True)
    parts = {"whole": df}
    if not args.no_halves:
        mid = len(df) // 2
        parts["first half"] = df.iloc[:mid].reset_index(drop=True)
        parts["second half"] = df.iloc[mid:].reset_index(drop=True)
    ranges = ["valid"] if args.valid_only else ["valid", "test"]
    rows: list[dict[str, Any]] = []
    for part, frame in parts.items():
        for label, value in choices.items():
            rows.append({"part": part, name: label, **run_part(frame, setting(value), ranges)})
            print(rows[-1], flush=True)
    whole = [r for r in rows if r["part"] == "whole"]
    best = max(whole, key=lambda r: r["valid blend hr@10"])
    headers = list(rows[0])
    cells = [[f"{v:.4f}" if isinstance(v, float) else v for v in r.values()] for r in rows]
    print(table(headers, cells))
    print(f"validation chooses {name} {best[name]}")
    write_json(args.out, {"machine": machine(), "rows": rows, "chosen": best[name]})
