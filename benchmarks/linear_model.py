"""The session linear model (offline/linear.py) alone, by its settings, on the validation part.

    STREAMREC_DATA_DIR=../shared/datasets .venv/bin/python -m benchmarks.linear_model \
        [--part whole|first|second] [--out docs/evaluation/linear_model.json]

The model is fitted on the events before the validation part, as the offline
job would fit it, once per setting (seconds and peak memory are reported).
The validation part is then replayed prequentially and each prediction's top
10 is ranked by the model's rows alone (``serving.ranker.linear_extras``: the
decayed sum of the sources' normalised weights), beside co-occurrence alone
and the shipped blend on the same streamed state. HR@10 and the paired
per-user bootstrap interval against co-occurrence. The test part is never read.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path
from typing import Any

from benchmarks.common import machine, table, write_json
from benchmarks.ranker_params import parts_of
from core.events import ClickEvent
from evaluation.bootstrap import paired_interval
from evaluation.prequential import EvalSetup, Method, default_methods, prequential, split_points
from offline.job import OfflineSettings
from offline.linear import LinearConfig, LinearRows, fit_linear
from producer.movielens import to_events
from serving.blend import Candidates, blend
from serving.ranker import Moment, linear_extras
from serving.settings import ServingSettings

SETTINGS = [(0.5, 1.0), (0.5, 10.0), (0.5, 100.0), (0.5, 300.0), (0.5, 1000.0), (0.5, 3000.0),
            (0.2, 1000.0), (0.8, 1000.0)]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="ml-latest-small")
    p.add_argument("--part", choices=("whole", "first", "second"), default="whole")
    p.add_argument("--out", type=Path, default=Path("docs/evaluation/linear_model.json"))
    args = p.parse_args()
    parts, _ = parts_of(args.dataset, halves=args.part != "whole")
    df = parts[{"whole": "whole", "first": "first half", "second": "second half"}[args.part]]
    events = list(to_events(df))
    valid_start, test_start = split_points(len(events), 0.1, 0.2)
    before = df.iloc[:valid_start]
    gap = OfflineSettings().session_gap_ms
    models: dict[str, LinearRows] = {}
    cost: dict[str, dict[str, float]] = {}
    for alpha, reg in SETTINGS:
        name = f"alpha {alpha}, reg {reg:g}"
        began = time.perf_counter()
        models[name] = fit_linear(before, gap, LinearConfig(alpha=alpha, reg=reg))
        cost[name] = {"seconds": round(time.perf_counter() - began, 2)}
        print(name, cost[name], flush=True)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    serving = ServingSettings()
    cfg = serving.blend
    # No embedding index in this run: the blend here is co-occurrence, content and trending.
    refs = {m.name: m.cfg for m in default_methods(cfg) if m.name == "co-occurrence"}
    refs["blend, no embedding"] = cfg
    hits: dict[str, dict[str, list[int]]] = {name: {} for name in [*refs, *models]}

    def observe(event: ClickEvent, cands: Candidates, moment: Moment, seen: set[str]) -> None:
        banned = set(seen) | set(cands.sources)
        tops: dict[str, list[str]] = {
            name: [s.item_id for s in blend(cands, seen, 10, ref)] for name, ref in refs.items()
        }
        for name, rows in models.items():
            alone = Candidates(cands.sources, {}, {}, [], linear=rows.rows(cands.sources, 50))
            tops[name] = [s.item_id for s in linear_extras(alone, banned, 10, cfg)]
        for name, top in tops.items():
            h = hits[name].setdefault(event.user_id, [0, 0])
            h[0] += 1
            h[1] += event.item_id in top

    setup = EvalSetup(serving=serving)
    prequential(events, valid_start, test_start, [Method("blend", cfg)], setup, observe)
    co = hits["co-occurrence"]
    users = sorted(co)
    n = [co[u][0] for u in users]
    rows: list[dict[str, Any]] = []
    for name, by_user in hits.items():
        iv = paired_interval(n, [co[u][1] for u in users], [by_user[u][1] for u in users])
        rows.append(
            {"method": name, "hr@10": sum(by_user[u][1] for u in users) / sum(n),
             "vs co-occurrence": iv.as_dict(), **cost.get(name, {})}
        )  # fmt: skip
    cells = [
        [r["method"], f"{r['hr@10']:.4f}",
         "{diff:+.4f} [{lo:+.4f}, {hi:+.4f}]".format(**r["vs co-occurrence"]), r.get("seconds", "")]
        for r in rows
    ]  # fmt: skip
    print(table(["method", "HR@10", "− co-occurrence [95 %]", "fit s"], cells))
    print(f"peak RSS {peak_gb:.2f} GB; {len(next(iter(models.values())))} items modelled")
    write_json(
        args.out,
        {"machine": machine(), "part": args.part, "rows": rows, "peak_rss_gb": peak_gb,
         "predictions": sum(n)},
    )  # fmt: skip


if __name__ == "__main__":
    main()
