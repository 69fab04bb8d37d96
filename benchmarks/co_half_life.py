"""Choose the co-occurrence half-life on the validation part; report the test part too.

    STREAMREC_DATA_DIR=../shared/datasets .venv/bin/python -m benchmarks.co_half_life \
        [--half-lives none,30,90,365,1095] [--out docs/evaluation/co_half_life.json]

Each half-life (days; ``none``: counts never decay) is one prequential pass over
the validation part (70/10/20, as ``streamrec evaluate``) with the shipped
settings otherwise, scoring the blend and co-occurrence alone. The winner is the
best validation HR@10 of the blend; test-part figures are printed beside it but
never used to choose. Also run on the two time-ordered halves of the file, so a
choice that only holds on one stretch of time shows.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

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

DAY = 24 * 3600 * 1000


def run_part(
    events: list[Any], df: Any, half_life_days: float | None, part: str, ranges: list[str]
) -> dict[str, Any]:
    valid_start, test_start = split_points(len(events), 0.1, 0.2)
    consumer = ConsumerSettings()
    hl = None if half_life_days is None else int(half_life_days * DAY)
    consumer = consumer.model_copy(
        update={"state": consumer.state.model_copy(update={"co_half_life_ms": hl})}
    )
    offline = OfflineSettings()
    setup = EvalSetup(
        consumer=consumer,
        serving=ServingSettings(),
        offline=offline,
        index_builder=index_builder_for(df, offline),
        catalog=catalog_size(df),
    )
    methods = [
        m for m in default_methods(setup.serving.blend) if m.name in ("blend", "co-occurrence")
    ]
    out: dict[str, Any] = {"part": part, "half_life_days": half_life_days}
    spans = {"valid": (valid_start, test_start), "test": (test_start, len(events))}
    for name in ranges:
        lo, hi = spans[name]
        res = prequential(events, lo, hi, methods, setup)
        for m in methods:
            out[f"{name} {m.name} hr@10"] = res.methods[m.name]["hr@10"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="ml-latest-small")
    p.add_argument("--half-lives", default="none,30,90,365,1095")
    p.add_argument("--no-halves", action="store_true", help="the whole file only")
    p.add_argument("--valid-only", action="store_true", help="skip the test part")
    p.add_argument("--out", type=Path, default=Path("docs/evaluation/co_half_life.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    df = load_ratings(resolve_dataset(args.dataset, download=False)).reset_index(drop=True)
    parts = {"whole": df}
    if not args.no_halves:
        mid = len(df) // 2
        parts["first half"], parts["second half"] = df.iloc[:mid], df.iloc[mid:]
    choices = [None if h == "none" else float(h) for h in args.half_lives.split(",")]
    rows = []
    for part, frame in parts.items():
        events = list(to_events(frame))
        for hl in choices:
            ranges = ["valid"] if args.valid_only else ["valid", "test"]
            rows.append(run_part(events, frame, hl, part, ranges))
            print(rows[-1], flush=True)
    whole = [r for r in rows if r["part"] == "whole"]
    best = max(whole, key=lambda r: r["valid blend hr@10"])
    headers = list(rows[0])
    print(table(headers, [[r[h] for h in headers] for r in rows]))
    print(f"validation chooses half-life {best['half_life_days']} days")
    write_json(args.out, {"machine": machine(), "rows": rows, "chosen": best["half_life_days"]})


if __name__ == "__main__":
    main()
