"""Click logs written to disk for tests: an e-commerce log in RetailRocket's layout.

RetailRocket's public ``events.csv`` (Kaggle, "Retailrocket recommender system
dataset") has the header ``timestamp,visitorid,event,itemid,transactionid``:
epoch-millisecond times, integer visitor and item ids, an event of ``view``,
``addtocart`` or ``transaction``, and a transaction id on transactions only
(an empty last field otherwise). ``write_retailrocket`` writes a small log in
that layout whose visitors browse one of a few item groups (so co-occurrence
has something to find), with a handful of bad rows at known lines; tests read
it through ``RETAILROCKET_OPTIONS``, the options docs/own-data.md documents.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

RETAILROCKET_HEADER = "timestamp,visitorid,event,itemid,transactionid"
RETAILROCKET_OPTIONS = [
    "--format",
    "csv",
    "--user-col",
    "visitorid",
    "--item-col",
    "itemid",
    "--time-col",
    "timestamp",
    "--time-unit",
    "ms",
    "--type-col",
    "event",
]
START_MS = 1_433_221_332_117  # 2015-06-02, where the real log starts

# (reason the reader gives, the row as written): one of each, at known lines.
BAD_ROWS = [
    ("missing_user", "1433221999001,,view,7,"),
    ("bad_time", "yesterday,77,view,7,"),
    ("ts_out_of_range", "1433221999,78,view,7,"),  # epoch seconds in a ms column
    ("short_row", "1433221999002,79,view"),  # a line cut short
    ("bad_type", "1433221999003,80,,7,"),
    ("bad_id", "1433221999004,81,view,7/8,"),
]


@dataclass(frozen=True)
class WrittenLog:
    path: Path
    rows: int  # data rows written (good and bad)
    kept: int  # rows the reader must keep
    bad_lines: dict[str, list[int]] = field(default_factory=dict)  # reason -> lines
    items: frozenset[str] = frozenset()  # the item ids of kept rows


def write_retailrocket(
    path: Path,
    *,
    visitors: int = 400,
    groups: int = 8,
    items_per_group: int = 12,
    seed: int = 0,
    bad: bool = True,
) -> WrittenLog:
    """Write the log; each visitor views a few items of one group, sometimes adds one
    to the cart and buys it. Bad rows (BAD_ROWS) go in at spread-out lines."""
    rng = random.Random(seed)
    ts = START_MS
    rows: list[str] = []
    items: set[str] = set()
    transaction = 0
    for visitor in range(visitors):
        group = rng.randrange(groups)
        pool = [str(1000 + group * 100 + k) for k in range(items_per_group)]
        for item in rng.sample(pool, rng.randint(3, 7)):
            ts += rng.randint(1_000, 90_000)
            rows.append(f"{ts},{visitor},view,{item},")
            items.add(item)
            if rng.random() < 0.15:
                ts += rng.randint(1_000, 30_000)
                rows.append(f"{ts},{visitor},addtocart,{item},")
                if rng.random() < 0.5:
                    ts += rng.randint(1_000, 30_000)
                    transaction += 1
                    rows.append(f"{ts},{visitor},transaction,{item},{transaction}")
    kept = len(rows)
    bad_lines: dict[str, list[int]] = {}
    if bad:
        step = len(rows) // (len(BAD_ROWS) + 1)
        for k, (_, row) in reversed(list(enumerate(BAD_ROWS, start=1))):
            rows.insert(k * step, row)
        # After every insertion: data row i is on line i + 2 (the header is line 1).
        for i, row in enumerate(rows):
            for reason, bad_row in BAD_ROWS:
                if row == bad_row:
                    bad_lines.setdefault(reason, []).append(i + 2)
    path.write_text(RETAILROCKET_HEADER + "\n" + "\n".join(rows) + "\n")
    return WrittenLog(path, len(rows), kept, bad_lines, frozenset(items))


def write_catalogue(path: Path, log: WrittenLog, *, extra: int = 5) -> Path:
    """A catalogue CSV for the log's items (category: the item's group, item
    1000 + 100 * group + k), plus ``extra`` items nobody clicked."""
    lines = ["item_id,title,categories,tags"]
    ids = sorted(log.items) + [f"new-{k}" for k in range(extra)]
    for item in ids:
        group = f"group-{(int(item) - 1000) // 100}" if item.isdigit() else "new"
        lines.append(f'{item},"Item {item}, boxed",{group}|all,fresh|Boxed')
    path.write_text("\n".join(lines) + "\n")
    return path
