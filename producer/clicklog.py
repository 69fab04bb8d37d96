"""A team's own click log (CSV, TSV or JSON lines with a header) to an interactions frame.

The file names its own columns; ``ClickLogFormat`` says which is the user (or
session), the item, the time and its unit, and optionally the event type and
a weight. Every row is checked against the event contract (``core.events``):
the one id rule, timestamps within MIN_TS_MS..MAX_TS_MS, a type of 1..MAX_TYPE_LEN
characters, a finite weight within MAX_WEIGHT. A row that breaks a rule is
skipped and counted under the first it breaks, in this order::

    blank_line       an empty line
    short_row        fewer fields than the header (CSV/TSV)
    long_row         more fields than the header (CSV/TSV)
    not_json         a line that is not JSON (JSON lines)
    not_an_object    JSON, but not an object (JSON lines)
    missing_user     empty user field (or absent/null in JSON)
    missing_item     empty item field
    bad_id           a user or item id the id rule refuses (too long, "/", U+FFFD,
                     blanks only; in JSON anything but a string or an integer)
    bad_time         a time that does not parse in its unit, or is absent
    ts_out_of_range  a time outside 1973..2100 (epoch seconds read as ms land here)
    bad_type         an empty or over-long type, or absent when a type column is named
    bad_weight       a weight that is not a finite number within +-MAX_WEIGHT
                     (an empty weight field is no weight, NaN, and is fine)

The values are checked once per distinct value where they repeat (ids,
types) and with pandas' vectorised parsers where they do not (times,
weights), so a 30M-row log costs seconds to a minute, not hours.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from core.errors import ConfigError
from core.events import DEFAULT_TYPE, MAX_TS_MS, MAX_TYPE_LEN, MAX_WEIGHT, MIN_TS_MS, id_problem
from producer.frame import interactions_frame
from producer.read_report import ReadReport, RowTally
from producer.tabular import (
    FORMATS,
    JSONL,
    STRUCTURE,
    Rows,
    check_file,
    check_read,
    csv_rows,
    header,
    jsonl_rows,
    require_columns,
)

TIME_UNITS = ("s", "ms", "iso")
REASONS = (
    *STRUCTURE,
    "missing_user",
    "missing_item",
    "bad_id",
    "bad_time",
    "ts_out_of_range",
    "bad_type",
    "bad_weight",
)
# What to check first when every row of a file was refused for one reason.
_HINTS = {
    "ts_out_of_range": "check the time unit (--time-unit s, ms or iso): "
    "epoch seconds read as milliseconds fall before 1973",
    "bad_time": "check the time column (--time-col) and its unit (--time-unit s, ms or iso)",
    "short_row": "check the format (--format csv is comma-, tsv tab-separated)",
    "long_row": "check the format (--format csv is comma-, tsv tab-separated)",
    "not_json": "check the format (--format jsonl wants one JSON object per line)",
    "missing_user": "check the user column (--user-col)",
    "missing_item": "check the item column (--item-col)",
}

_OK, _MISSING, _BAD = 0, 1, 2
# Stands for a JSON value of the wrong kind (a list, a bool, a float id) before
# factorising, which needs hashable values; it is refused like a malformed one.
_WRONG = object()
_MS_PER = {"s": 1000, "ms": 1}
_INT64_MAX = np.iinfo(np.int64).max
# datetime64 units to ms: multiply by the first, floor-divide by the second (after
# adding half of it, so sub-millisecond times round to the nearest ms).
_TO_MS = {"s": (1000, 1), "ms": (1, 1), "us": (1, 1000), "ns": (1, 1_000_000)}


@dataclass(frozen=True)
class ClickLogFormat:
    """Which columns of a click log hold what, and the unit of its time column."""

    format: Literal["csv", "tsv", "jsonl"]
    user_col: str
    item_col: str
    time_col: str
    time_unit: Literal["s", "ms", "iso"]
    type_col: str | None = None
    weight_col: str | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"format {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.time_unit not in TIME_UNITS:
            raise ConfigError(f"time unit {self.time_unit!r} is not one of {', '.join(TIME_UNITS)}")
        named = [c for c in self.columns().values()]
        if len(set(named)) != len(named):
            raise ConfigError(f"one column named for two roles: {self.columns()}")

    def columns(self) -> dict[str, str]:
        """Role (the option that names it) -> column name, for the roles given."""
        roles = {
            "--user-col": self.user_col,
            "--item-col": self.item_col,
            "--time-col": self.time_col,
            "--type-col": self.type_col,
            "--weight-col": self.weight_col,
        }
        return {role: name for role, name in roles.items() if name is not None}


class _Names:
    """One id-like column over every chunk, as codes into one list of distinct names.

    Each chunk's distinct values are checked once (ids repeat) and looked up in
    one dict, so a name read in many chunks is one str object, not one per chunk.
    Integer chunks (csv_rows reads ids as int64 where that is exact) are looked up
    in a sorted array instead, vectorised: only an integer's first sight costs
    Python work (its text; an integer's text always passes the id rule).
    """

    def __init__(self, check: Any, *, numbers_as_text: bool = False) -> None:
        self._check = check  # distinct values -> (names, None where refused; status each)
        self._numbers_as_text = numbers_as_text  # a JSON 5 is the id "5"
        self._codes: dict[str, int] = {}
        self.names: list[str] = []
        self._kept: list[np.ndarray] = []
        self._ints = np.zeros(0, dtype=np.int64)  # sorted integers seen ...
        self._int_codes = np.zeros(0, dtype=np.int32)  # ... and their codes

    def _code_of(self, names: list[str]) -> np.ndarray:
        """The codes of ``names`` (repeats allowed), giving new ones the next codes."""
        known = list(map(self._codes.get, names))
        fresh = [name for name, code in zip(names, known, strict=True) if code is None]
        if fresh:
            fresh = list(dict.fromkeys(fresh))  # a repeat within a chunk: JSON 5 and "5"
            base = len(self.names)
            self.names.extend(fresh)
            self._codes.update(zip(fresh, range(base, base + len(fresh)), strict=True))
            known = list(map(self._codes.get, names))
        return np.asarray(known, dtype=np.int32)

    def encode(self, values: pd.Series, json: bool) -> tuple[np.ndarray, np.ndarray]:
        """(code per row, -1 where refused; status per row: _OK, _MISSING or _BAD)."""
        if json:
            ints = _json_ints(values) if self._numbers_as_text else None
            if ints is not None:
                return self._encode_ints(ints)
            raw = _hashable(values)
        elif pd.api.types.is_integer_dtype(values):
            if values.dtype != np.uint64 or values.max() <= _INT64_MAX:
                return self._encode_ints(values.to_numpy().astype(np.int64))
            raw = values.to_numpy().astype(object)  # past int64: as Python ints, then text
        else:
            raw = values.to_numpy()
        local, uniques = pd.factorize(raw, use_na_sentinel=True)
        found = uniques.tolist()
        if self._numbers_as_text:
            found = [str(v) if type(v) is int else v for v in found]
        # Known names need no check: only a name's first sight in the file pays for it.
        codes = np.fromiter(
            map(self._codes.get, found, repeat(-1)), dtype=np.int32, count=len(found)
        )
        status = np.zeros(len(found) + 1, dtype=np.int8)
        status[-1] = _MISSING  # the last slot: local code -1, a null
        new = np.flatnonzero(codes < 0)
        if len(new):
            names, checked = self._check([found[k] for k in new.tolist()])
            status[new] = checked
            fine = np.flatnonzero(checked == _OK)
            codes[new[fine]] = self._code_of(names[fine].tolist())
        return np.append(codes, np.int32(-1))[local], status[local]

    def _encode_ints(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        local, uniques = pd.factorize(values)
        uniques = np.asarray(uniques, dtype=np.int64)
        at = np.searchsorted(self._ints, uniques)
        hit = np.zeros(len(uniques), dtype=bool)
        inside = at < len(self._ints)
        hit[inside] = self._ints[at[inside]] == uniques[inside]
        codes = np.empty(len(uniques), dtype=np.int32)
        codes[hit] = self._int_codes[at[hit]]
        new = np.flatnonzero(~hit)
        if len(new):
            fresh = uniques[new]
            new_codes = self._code_of(list(map(str, fresh.tolist())))
            codes[new] = new_codes
            order = np.argsort(fresh)
            where = np.searchsorted(self._ints, fresh[order])
            self._ints = np.insert(self._ints, where, fresh[order])
            self._int_codes = np.insert(self._int_codes, where, new_codes[order])
        return codes[local], np.zeros(len(values), dtype=np.int8)

    def keep(self, codes: np.ndarray) -> None:
        self._kept.append(codes)

    def finish(self, order: np.ndarray) -> np.ndarray:
        """The codes of the kept rows in ``order``; the lookups are dropped (names stay)."""
        codes = np.concatenate(self._kept) if self._kept else np.zeros(0, dtype=np.int32)
        # A 30M-row log holds millions of distinct ids: free the dict and the
        # chunks before the frame is built, not after.
        self._kept, self._codes = [], {}
        self._ints, self._int_codes = self._ints[:0], self._int_codes[:0]
        return codes[order]


def _json_ints(values: pd.Series) -> np.ndarray | None:
    """A JSON column of nothing but integers (within int64) as int64; else None."""
    items = values.tolist()
    if set(map(type, items)) != {int}:
        return None
    try:
        return np.fromiter(items, dtype=np.int64, count=len(items))
    except OverflowError:
        return None


def _hashable(values: pd.Series) -> np.ndarray:
    """Values fit to factorise: anything but null, a string or an integer is _WRONG
    (JSON lists are unhashable, and True == 1.0 == 1 would share a code with 1)."""
    out = np.empty(len(values), dtype=object)
    out[:] = [v if v is None or type(v) in (str, int) else _WRONG for v in values.tolist()]
    return out


def _check_ids(values: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Names (None where refused) and status of distinct ids, by core.events.id_problem."""
    names = np.empty(len(values), dtype=object)
    names[:] = values
    text = np.fromiter((type(v) is str for v in values), dtype=bool, count=len(values))
    problems = np.empty(len(values), dtype=object)
    if text.all():  # CSV text always; map keeps the loop in C
        problems[:] = list(map(id_problem, values))
    else:
        pairs = zip(values, text, strict=True)
        problems[:] = [id_problem(v) if t else "wrong_type" for v, t in pairs]
    refused = ~pd.isna(problems)
    status = np.where(refused, np.int8(_BAD), np.int8(_OK)).astype(np.int8)
    status[names == ""] = _MISSING  # an empty field, as opposed to a blank id
    names[refused] = None
    return names, status


def _check_types(values: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Names (None where refused) and status of distinct event types."""
    names = np.empty(len(values), dtype=object)
    names[:] = values
    ok = np.fromiter(
        (type(v) is str and 0 < len(v) <= MAX_TYPE_LEN for v in values),
        dtype=bool,
        count=len(values),
    )
    names[~ok] = None
    return names, np.where(ok, np.int8(_OK), np.int8(_BAD)).astype(np.int8)


def _numbers(values: pd.Series, json: bool) -> tuple[np.ndarray, np.ndarray]:
    """(float64 value per row, NaN where not a number; whether the field had a value)."""
    if pd.api.types.is_bool_dtype(values):  # CSV text pandas took for bools ("True")
        return np.full(len(values), np.nan), np.ones(len(values), dtype=bool)
    if pd.api.types.is_numeric_dtype(values):
        out = values.to_numpy(dtype=np.float64, na_value=np.nan)
        return out, ~np.isnan(out)
    if json:
        items = values.tolist()
        if set(map(type, items)) <= {int, float}:  # the usual case: numbers only
            try:
                out = np.fromiter(items, dtype=np.float64, count=len(items))
            except OverflowError:  # an integer past any float: not a time, not a weight
                out = np.array([float(v) if abs(v) < 1e300 else np.inf for v in items])
            return out, np.ones(len(items), dtype=bool)
        # A bool is not a number, whatever Python says; strings may be.
        raw = [None if v is None else (v if type(v) in (int, float, str) else "?") for v in items]
        values = pd.Series(raw, dtype=object)
    present = values.notna().to_numpy()
    numbers = pd.to_numeric(values, errors="coerce")
    return numbers.to_numpy(dtype=np.float64, na_value=np.nan), present


def _epoch_ms(values: pd.Series, unit: str, json: bool) -> tuple[np.ndarray, np.ndarray]:
    """(ts in ms, 0 where refused; status per row: 0, bad_time 1, out of range 2)."""
    if unit == "iso":
        ms, ok = _iso_ms(values, json)
    else:
        numbers, _ = _numbers(values, json)
        scaled = numbers * _MS_PER[unit]
        ok = np.isfinite(scaled)
        # Fractional seconds (and stray fractional ms) round to the nearest ms,
        # halves up, as ISO times do.
        ms = np.where(ok, np.floor(np.where(ok, scaled, 0.0) + 0.5), 0.0)
    status = np.where(ok, 0, 1).astype(np.int8)
    out = ok & ((ms < MIN_TS_MS) | (ms > MAX_TS_MS))
    status[out] = 2
    ts = np.where(status == 0, ms, 0).astype(np.int64)
    return ts, status


def _iso_ms(values: pd.Series, json: bool) -> tuple[np.ndarray, np.ndarray]:
    if json:  # only strings are ISO times (CSV text is str, or NaN where empty)
        values = pd.Series([v if type(v) is str else None for v in values], dtype=object)
    # utc=True: a time with an offset is converted, a naive one is taken as UTC.
    parsed = pd.to_datetime(values, format="ISO8601", utc=True, errors="coerce")
    naive = parsed.dt.tz_localize(None).to_numpy()
    if np.datetime_data(naive.dtype)[0] not in _TO_MS:  # pandas picks s, ms, us or ns
        naive = naive.astype("datetime64[ns]")
    ok = ~np.isnat(naive)
    unit = np.datetime_data(naive.dtype)[0]
    times, per = _TO_MS[unit]
    raw = naive.view(np.int64)
    ms = (raw * times + per // 2) // per if per > 1 else raw * times
    return np.where(ok, ms, 0).astype(np.float64), ok


@dataclass
class _Kept:
    """The kept rows so far: id-like columns as codes, the rest as arrays per chunk."""

    users: _Names
    items: _Names
    types: _Names
    ts: list[np.ndarray]
    weights: list[np.ndarray]


def load_clicklog(
    path: Path, fmt: ClickLogFormat, *, limit: int | None = None
) -> tuple[pd.DataFrame, ReadReport]:
    """The log's rows as an interactions frame (producer.frame), sorted stably by ts,
    and what was read, kept and skipped. ``limit`` keeps the first ``limit`` rows
    of that order. DatasetError if a named column is missing or no row is usable."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    path = check_file(Path(path), fmt.format)
    tally = RowTally(str(path), REASONS)
    ids = (_Names(_check_ids, numbers_as_text=True), _Names(_check_ids, numbers_as_text=True))
    kept = _Kept(*ids, _Names(_check_types), [], [])
    present: set[str] = set()
    for rows in _rows(path, fmt):
        _take(rows, fmt, tally, kept)
        present |= rows.present
    check_read(
        path,
        fmt.format,
        tally,
        present,
        fmt.columns(),
        _HINTS,
        "see docs/own-data.md for what each reason means",
    )
    ts = np.concatenate(kept.ts)
    kept.ts.clear()
    order = np.argsort(ts, kind="stable")
    if limit is not None:
        order = order[:limit]
    ts = ts[order]
    weight = np.concatenate(kept.weights)[order]
    kept.weights.clear()
    if fmt.type_col is None:
        types, type_names = np.zeros(len(order), dtype=np.int8), [DEFAULT_TYPE]
    else:
        types, type_names = kept.types.finish(order), kept.types.names
    frame = interactions_frame(
        users=(kept.users.finish(order), kept.users.names),
        items=(kept.items.finish(order), kept.items.names),
        ts=ts,
        types=(types, type_names),
        weight=weight,
    )
    # A type seen only on refused rows (or cut by the limit) is no category.
    frame["type"] = frame["type"].cat.remove_unused_categories()
    return frame, tally.report(rows_used=len(order) if limit is not None else None)


def _rows(path: Path, fmt: ClickLogFormat) -> Iterator[Rows]:
    named = fmt.columns()
    if fmt.format == JSONL:
        yield from jsonl_rows(path, list(named.values()))
        return
    require_columns(path, header(path, fmt.format), named, "its header has")
    # Ids and types exactly as written: text, or integers where those are exact
    # (csv_rows), never "007" and "7" as one. Times and weights are inferred per
    # chunk (int64/float64, or text in a chunk holding a non-number, parsed
    # below); ISO times are text.
    exact = [fmt.user_col, fmt.item_col] + ([fmt.type_col] if fmt.type_col else [])
    dtypes: dict[str, Any] = {fmt.time_col: object} if fmt.time_unit == "iso" else {}
    empty_is_na = [fmt.time_col]
    if fmt.weight_col is not None:
        empty_is_na.append(fmt.weight_col)
    yield from csv_rows(
        path,
        fmt.format,
        list(named.values()),
        exact=exact,
        dtypes=dtypes,
        empty_is_na=empty_is_na,
    )


def _take(rows: Rows, fmt: ClickLogFormat, tally: RowTally, kept: _Kept) -> None:
    codes = rows.problems.copy()

    def refuse(mask: np.ndarray, reason: str) -> None:
        codes[(codes == 0) & mask] = tally.code(reason)

    cols = rows.columns
    user, user_status = kept.users.encode(cols[fmt.user_col], rows.json)
    item, item_status = kept.items.encode(cols[fmt.item_col], rows.json)
    refuse(user_status == _MISSING, "missing_user")
    refuse(item_status == _MISSING, "missing_item")
    refuse((user_status == _BAD) | (item_status == _BAD), "bad_id")
    ts, time_status = _epoch_ms(cols[fmt.time_col], fmt.time_unit, rows.json)
    refuse(time_status == 1, "bad_time")
    refuse(time_status == 2, "ts_out_of_range")
    if fmt.type_col is not None:
        etype, type_status = kept.types.encode(cols[fmt.type_col], rows.json)
        refuse(type_status != _OK, "bad_type")
    weight = np.full(len(codes), np.nan, dtype=np.float32)
    if fmt.weight_col is not None:
        numbers, present = _numbers(cols[fmt.weight_col], rows.json)
        fine = np.isfinite(numbers) & (np.abs(np.nan_to_num(numbers)) <= MAX_WEIGHT)
        refuse(present & ~fine, "bad_weight")
        weight = np.where(present & fine, numbers, np.nan).astype(np.float32)
    tally.add(codes, rows.lines)
    keep = codes == 0
    kept.users.keep(user[keep])
    kept.items.keep(item[keep])
    if fmt.type_col is not None:
        kept.types.keep(etype[keep])
    kept.ts.append(ts[keep])
    kept.weights.append(weight[keep])


__all__ = ["REASONS", "TIME_UNITS", "ClickLogFormat", "ReadReport", "load_clicklog"]
