"""The interactions frame: the one table every reader returns and every job reads.

    user_id  str       the user (or session) id
    item_id  str       the item id
    ts       int64     epoch milliseconds UTC
    type     category  the event type: "rating" for MovieLens, the log's type
                       column, or "click" when the log has none
    weight   float32   the event's weight (a MovieLens rating); NaN = no weight

Rows are in ``ts`` order, sorted stably, so events with equal timestamps keep
their file order (the tie rule of the prequential evaluation). Readers build it
with ``interactions_frame``; ``to_events`` turns it into the wire contract's
events.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd

from core.events import ClickEvent

COLUMNS = ("user_id", "item_id", "ts", "type", "weight")

# to_events converts this many rows to Python objects at a time: large enough that
# the per-chunk overhead vanishes, small enough (~64k events, a few MB) that a
# 25M-row replay never holds every event in memory at once.
_EVENT_CHUNK = 65_536

Coded = tuple[np.ndarray, Sequence[str]]  # (code per row, the names the codes index)


def strings(codes: np.ndarray, names: Sequence[str]) -> pd.Series:
    """A str column from codes: one shared str object per distinct value.

    Parsing 25M ids as str would make one Python object per row (~50 bytes
    each, seconds per million); ids repeat, so each distinct one is made once
    and the rows point at it.
    """
    table = np.empty(len(names), dtype=object)
    table[:] = list(names)
    # Validate the few distinct strings as str, then gather (2x faster than
    # building the str column from the gathered objects).
    return pd.Series(table, dtype="str").take(codes).reset_index(drop=True)


def interactions_frame(
    *, users: Coded, items: Coded, ts: np.ndarray, types: Coded, weight: np.ndarray
) -> pd.DataFrame:
    """The frame from per-row codes (already in their final order)."""
    type_codes, type_names = types
    return pd.DataFrame(
        {
            "user_id": strings(*users),
            "item_id": strings(*items),
            "ts": np.asarray(ts, dtype=np.int64),
            "type": pd.Categorical.from_codes(
                np.asarray(type_codes, dtype=np.int32), categories=pd.Index(list(type_names))
            ),
            "weight": np.asarray(weight, dtype=np.float32),
        }
    )


def to_events(df: pd.DataFrame) -> Iterator[ClickEvent]:
    """One event per row, in the frame's order: type and weight from the frame
    (a NaN weight is no weight)."""
    for start in range(0, len(df), _EVENT_CHUNK):
        part = df.iloc[start : start + _EVENT_CHUNK]
        # tolist() hands out Python int/float/str: orjson and the contract's
        # isinstance checks want those, not numpy scalars.
        users = part["user_id"].tolist()
        items = part["item_id"].tolist()
        stamps = part["ts"].tolist()
        types = part["type"].tolist()
        weight_col = part["weight"]
        if weight_col.isna().any():
            weights = [None if w != w else w for w in weight_col.tolist()]  # NaN != NaN
        else:
            weights = weight_col.tolist()
        for row in zip(users, items, stamps, types, weights, strict=True):
            yield ClickEvent(*row)
