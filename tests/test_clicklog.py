"""The click-log reader on real files: formats, time units, columns, every bad-row reason.

The reader is vectorised (pandas, numpy); ``reference`` below is the plain
row-by-row reading of the same rules (csv module, core.events), and a property
test holds the two equal on generated files.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from clicklogs import BAD_ROWS, write_retailrocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import ConfigError, DatasetError
from core.events import MAX_TS_MS, MAX_TYPE_LEN, MAX_WEIGHT, MIN_TS_MS, decode, id_problem
from producer import tabular
from producer.clicklog import REASONS, ClickLogFormat, load_clicklog
from producer.frame import COLUMNS, to_events
from producer.read_report import LINES_KEPT

T0 = 1_433_221_332_117  # epoch ms, 2015-06-02T05:02:12.117Z
CSV = ClickLogFormat("csv", "session", "item", "ts", "ms", type_col="kind", weight_col="w")


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def rows_of(df: pd.DataFrame) -> list[tuple[object, ...]]:
    weights = [None if math.isnan(w) else w for w in df["weight"].tolist()]
    return list(
        zip(df["user_id"], df["item_id"], df["ts"], df["type"].tolist(), weights, strict=True)
    )


def assert_reads_as(
    path: Path, fmt: ClickLogFormat, want: list[tuple[object, ...]], bad: dict[str, list[int]]
) -> None:
    """The reader against a reference: the same rows, and the same skipped rows
    with their first line numbers (a file with nothing good is a DatasetError)."""
    try:
        df, report = load_clicklog(path, fmt)
    except DatasetError:
        assert not want
        return
    assert rows_of(df) == want
    assert {r: list(v) for r, v in report.lines.items()} == {
        r: v[:LINES_KEPT] for r, v in bad.items()
    }
    assert report.skipped == {r: len(v) for r, v in bad.items()}


# -- the three formats, the frame ------------------------------------------------------------
GOOD = [  # (session, item, ts ms, kind, weight or None), in file order
    ("s1", "i1", T0 + 2000, "view", None),
    ("s1", "i2", T0, "view", 1.5),
    ("007", "i3", T0 + 1000, "buy", 3.0),
    ("7", "i3", T0 + 1000, "view", None),
]


def good_file(tmp_path: Path, fmt: str) -> Path:
    if fmt == "jsonl":
        lines = [
            json.dumps({"session": u, "item": i, "ts": t, "kind": k, "w": w})
            for u, i, t, k, w in GOOD
        ]
        return write(tmp_path / "log.jsonl", "\n".join(lines) + "\n")
    sep = "," if fmt == "csv" else "\t"
    lines = [sep.join(["session", "item", "ts", "kind", "w"])]
    lines += [sep.join([u, i, str(t), k, "" if w is None else str(w)]) for u, i, t, k, w in GOOD]
    return write(tmp_path / f"log.{fmt}", "\n".join(lines) + "\n")


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_each_format_reads_to_the_same_frame(tmp_path: Path, fmt: str) -> None:
    df, report = load_clicklog(
        good_file(tmp_path, fmt), ClickLogFormat(**{**_kw(CSV), "format": fmt})
    )
    assert list(df.columns) == list(COLUMNS)
    assert df["ts"].dtype == np.int64 and df["weight"].dtype == np.float32
    assert isinstance(df["type"].dtype, pd.CategoricalDtype)
    assert pd.api.types.is_string_dtype(df["user_id"]) and pd.api.types.is_string_dtype(
        df["item_id"]
    )
    # Stable sort by ts; "007" and "7" stay two sessions (ids are text, never numbers).
    assert rows_of(df) == [GOOD[1], GOOD[2], GOOD[3], GOOD[0]]
    assert list(df.index) == [0, 1, 2, 3]
    assert (report.rows_read, report.rows_kept, report.rows_skipped) == (4, 4, 0)
    assert report.summary() == f"read 4 rows from {report.file}: kept 4, skipped 0"


def _kw(fmt: ClickLogFormat) -> dict[str, object]:
    return {f: getattr(fmt, f) for f in fmt.__dataclass_fields__}


def test_no_type_column_means_click_and_no_weight_column_nan(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", f"user,item,t\nu,a,{T0}\nu,b,{T0 + 1}\n")
    df, _ = load_clicklog(path, ClickLogFormat("csv", "user", "item", "t", "ms"))
    assert df["type"].tolist() == ["click", "click"] and df["weight"].isna().all()
    events = list(to_events(df))
    assert [(e.type, e.weight) for e in events] == [("click", None), ("click", None)]
    for event in events:
        assert decode(event.encode()) == event


def test_to_events_takes_type_and_weight_from_the_frame(tmp_path: Path) -> None:
    df, _ = load_clicklog(good_file(tmp_path, "csv"), CSV)
    events = list(to_events(df))
    assert [(e.user_id, e.type, e.weight) for e in events] == [
        ("s1", "view", 1.5),
        ("007", "buy", 3.0),
        ("7", "view", None),
        ("s1", "view", None),
    ]
    assert all(type(e.ts) is int for e in events)


# -- time units ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("unit", "written", "ms"),
    [
        ("ms", "1433221332117", T0),
        ("ms", "1433221332117.4", T0),  # a stray fraction of a ms rounds
        ("s", "1433221332", T0 - 117),
        ("s", "1433221332.117", T0),
        ("s", "1433221332.1175", T0 + 1),  # halves round up
        ("iso", "2015-06-02T05:02:12.117Z", T0),
        ("iso", "2015-06-02T07:02:12.117+02:00", T0),
        ("iso", "2015-06-02 05:02:12.117", T0),  # no zone: UTC
        ("iso", "2015-06-02T05:02:12.1175", T0 + 1),
        ("iso", "2015-06-02T05:02:12", T0 - 117),
        ("iso", "2015-06-02", T0 - (5 * 3600 + 2 * 60 + 12) * 1000 - 117),
    ],
)
def test_time_units(tmp_path: Path, unit: str, written: str, ms: int) -> None:
    path = write(tmp_path / "log.csv", f"u,i,t\nx,y,{written}\n")
    df, _ = load_clicklog(path, ClickLogFormat("csv", "u", "i", "t", unit))  # type: ignore[arg-type]
    assert df["ts"].tolist() == [ms]


def test_iso_times_with_mixed_zones_in_one_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "log.csv",
        "u,i,t\na,x,2015-06-02T05:02:12.117Z\nb,x,2015-06-02T06:02:12.117+01:00\n"
        "c,x,2015-06-02T05:02:12.117\nd,x,not a time\n",
    )
    df, report = load_clicklog(path, ClickLogFormat("csv", "u", "i", "t", "iso"))
    assert df["ts"].tolist() == [T0, T0, T0]
    assert report.skipped == {"bad_time": 1} and report.lines == {"bad_time": (5,)}


# -- every bad row, with its line ------------------------------------------------------------
BAD_CSV = "\n".join(
    [
        "session,item,ts,kind,w",  # 1
        f"s1,i1,{T0},view,",  # 2 good
        "",  # 3 blank_line
        f"s1,i1,{T0}",  # 4 short_row
        f"s1,i1,{T0},view,1,extra",  # 5 long_row
        f",i1,{T0},view,",  # 6 missing_user
        f"s1,,{T0},view,",  # 7 missing_item
        f"s/1,i1,{T0},view,",  # 8 bad_id: "/"
        f"{'x' * 129},i1,{T0},view,",  # 9 bad_id: too long
        f"   ,i1,{T0},view,",  # 10 bad_id: blanks only
        "s1,i1,soon,view,",  # 11 bad_time
        "s1,i1,,view,",  # 12 bad_time: empty
        "s1,i1,1433221332,view,",  # 13 ts_out_of_range: seconds in ms
        f"s1,i1,{MAX_TS_MS + 1},view,",  # 14 ts_out_of_range
        f"s1,i1,{T0},,",  # 15 bad_type: empty
        f"s1,i1,{T0},{'t' * (MAX_TYPE_LEN + 1)},",  # 16 bad_type: too long
        f"s1,i1,{T0},view,heavy",  # 17 bad_weight
        f"s1,i1,{T0},view,inf",  # 18 bad_weight
        f"s1,i1,{T0},view,{MAX_WEIGHT * 2}",  # 19 bad_weight
        f"s2,i2,{T0 + 5},buy,2",  # 20 good
    ]
)
BAD_LINES = {
    "blank_line": (3,),
    "short_row": (4,),
    "long_row": (5,),
    "missing_user": (6,),
    "missing_item": (7,),
    "bad_id": (8, 9, 10),
    "bad_time": (11, 12),
    "ts_out_of_range": (13, 14),
    "bad_type": (15, 16),
    "bad_weight": (17, 18, 19),
}


def test_every_bad_csv_row_is_counted_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", BAD_CSV + "\n")
    df, report = load_clicklog(path, CSV)
    assert rows_of(df) == [("s1", "i1", T0, "view", None), ("s2", "i2", T0 + 5, "buy", 2.0)]
    assert report.lines == BAD_LINES
    assert report.skipped == {r: len(lines) for r, lines in BAD_LINES.items()}
    assert (report.rows_read, report.rows_kept, report.rows_skipped) == (19, 2, 17)
    assert list(report.skipped) == [r for r in REASONS if r in BAD_LINES]  # in rule order
    assert report.summary() == (
        f"read 19 rows from {path}: kept 2, skipped 17 (blank_line: 1, line 3; "
        "short_row: 1, line 4; long_row: 1, line 5; missing_user: 1, line 6; "
        "missing_item: 1, line 7; bad_id: 3, lines 8, 9, 10; bad_time: 2, lines 11, 12; "
        "ts_out_of_range: 2, lines 13, 14; bad_type: 2, lines 15, 16; "
        "bad_weight: 3, lines 17, 18, 19)"
    )
    assert df["type"].cat.categories.tolist() == ["view", "buy"]  # none from refused rows


def test_every_bad_json_line_is_counted_with_its_line(tmp_path: Path) -> None:
    lines = [
        json.dumps({"session": "s1", "item": "i1", "ts": T0, "kind": "view"}),  # 1 good
        "",  # 2 blank_line
        "{not json",  # 3 not_json
        "[1, 2]",  # 4 not_an_object
        json.dumps({"item": "i1", "ts": T0, "kind": "view"}),  # 5 missing_user: absent
        json.dumps({"session": None, "item": "i1", "ts": T0, "kind": "view"}),  # 6 null
        json.dumps({"session": True, "item": "i1", "ts": T0, "kind": "view"}),  # 7 bad_id
        json.dumps({"session": 1.5, "item": "i1", "ts": T0, "kind": "view"}),  # 8 bad_id
        json.dumps({"session": ["a"], "item": "i1", "ts": T0, "kind": "view"}),  # 9 bad_id
        json.dumps({"session": "s1", "item": "i1", "ts": True, "kind": "view"}),  # 10 bad_time
        json.dumps({"session": "s1", "item": "i1", "kind": "view"}),  # 11 bad_time: absent
        json.dumps({"session": "s1", "item": "i1", "ts": T0, "kind": 3}),  # 12 bad_type
        json.dumps({"session": "s1", "item": "i1", "ts": T0}),  # 13 bad_type: absent
        json.dumps({"session": "s1", "item": "i1", "ts": T0, "kind": "v", "w": "x"}),  # 14
        json.dumps({"session": 42, "item": 7, "ts": str(T0 + 1), "kind": "v", "w": 2}),  # 15
    ]
    path = write(tmp_path / "log.jsonl", "\n".join(lines) + "\n")
    df, report = load_clicklog(path, ClickLogFormat(**{**_kw(CSV), "format": "jsonl"}))
    assert rows_of(df) == [("s1", "i1", T0, "view", None), ("42", "7", T0 + 1, "v", 2.0)]
    assert report.lines == {
        "blank_line": (2,),
        "not_json": (3,),
        "not_an_object": (4,),
        "missing_user": (5, 6),
        "bad_id": (7, 8, 9),
        "bad_time": (10, 11),
        "bad_type": (12, 13),
        "bad_weight": (14,),
    }


def test_only_the_first_lines_of_a_reason_are_kept_and_the_rest_counted(tmp_path: Path) -> None:
    rows = [f"u,i,{T0}"] + ["u,i,never"] * 12
    path = write(tmp_path / "log.csv", "u,i,t\n" + "\n".join(rows) + "\n")
    _, report = load_clicklog(path, ClickLogFormat("csv", "u", "i", "t", "ms"))
    assert report.skipped == {"bad_time": 12}
    assert report.lines["bad_time"] == tuple(range(3, 3 + LINES_KEPT))
    assert "bad_time: 12, lines 3, 4, 5, 6, 7, ..." in report.summary()


def test_quoted_fields_keep_line_numbers_right(tmp_path: Path) -> None:
    # A quoted separator is one field; a quoted newline makes a record of two lines.
    path = write(
        tmp_path / "log.csv",
        f'u,i,t\n"a, b",x,{T0}\n"multi\nline",y,{T0 + 1}\nc,z\n"d",w,{T0 + 2}\n',
    )
    df, report = load_clicklog(path, ClickLogFormat("csv", "u", "i", "t", "ms"))
    assert df["user_id"].tolist() == ["a, b", "multi\nline", "d"]
    assert report.lines == {"short_row": (5,)}


def test_invalid_utf8_is_refused_by_the_id_rule_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_bytes(b"u,i,t\nok,x,%d\n\xff\xfe,x,%d\n" % (T0, T0))
    df, report = load_clicklog(path, ClickLogFormat("csv", "u", "i", "t", "ms"))
    assert df["user_id"].tolist() == ["ok"]
    assert report.lines == {"bad_id": (3,)}


# -- the file as a whole -----------------------------------------------------------------------
def test_a_utf8_bom_is_stripped(tmp_path: Path) -> None:
    csv_path = tmp_path / "log.csv"
    csv_path.write_bytes(b"\xef\xbb\xbfu,i,t\nx,y,%d\n" % T0)
    df, _ = load_clicklog(csv_path, ClickLogFormat("csv", "u", "i", "t", "ms"))
    assert df["user_id"].tolist() == ["x"]
    jsonl_path = tmp_path / "log.jsonl"
    jsonl_path.write_bytes(b'\xef\xbb\xbf{"u": "x", "i": "y", "t": %d}\n' % T0)
    df, _ = load_clicklog(jsonl_path, ClickLogFormat("jsonl", "u", "i", "t", "ms"))
    assert df["user_id"].tolist() == ["x"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_gzip_reads_like_the_plain_file(tmp_path: Path, fmt: str) -> None:
    plain = good_file(tmp_path, fmt)
    packed = tmp_path / f"{plain.name}.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    fmt_ = ClickLogFormat(**{**_kw(CSV), "format": fmt})
    (a, ra), (b, rb) = load_clicklog(plain, fmt_), load_clicklog(packed, fmt_)
    pd.testing.assert_frame_equal(a, b)
    assert (ra.rows_read, ra.rows_kept) == (rb.rows_read, rb.rows_kept)


def test_a_missing_column_names_what_the_header_has(tmp_path: Path) -> None:
    path = good_file(tmp_path, "csv")
    with pytest.raises(DatasetError) as err:
        load_clicklog(path, ClickLogFormat("csv", "session_id", "item", "ts", "ms", "event"))
    text = str(err.value)
    assert "'session_id' (--user-col)" in text and "'event' (--type-col)" in text
    assert "'session', 'item', 'ts', 'kind', 'w'" in text
    with pytest.raises(DatasetError, match="'session', 'item', 'ts', 'kind', 'w'"):
        load_clicklog(
            good_file(tmp_path, "jsonl"), ClickLogFormat("jsonl", "user", "item", "ts", "ms")
        )


def test_a_file_with_no_usable_row_is_an_error_with_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", "u,i,t\na,b,1433221332\nc,d,1433221333\n")
    with pytest.raises(DatasetError) as err:
        load_clicklog(path, ClickLogFormat("csv", "u", "i", "t", "ms"))
    assert "no usable row" in str(err.value) and "ts_out_of_range: 2, lines 2, 3" in str(err.value)
    assert "--time-unit" in err.value.hint
    with pytest.raises(DatasetError, match="no rows"):
        load_clicklog(
            write(tmp_path / "empty.csv", "u,i,t\n"), ClickLogFormat("csv", "u", "i", "t", "ms")
        )
    with pytest.raises(DatasetError, match="empty"):
        load_clicklog(
            write(tmp_path / "nothing.csv", ""), ClickLogFormat("csv", "u", "i", "t", "ms")
        )
    with pytest.raises(DatasetError, match="does not exist"):
        load_clicklog(tmp_path / "absent.csv", ClickLogFormat("csv", "u", "i", "t", "ms"))


def test_bad_format_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="time unit"):
        ClickLogFormat("csv", "u", "i", "t", "minutes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="format"):
        ClickLogFormat("xml", "u", "i", "t", "ms")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="two roles"):
        ClickLogFormat("csv", "u", "u", "t", "ms")


def test_many_ties_keep_file_order_and_limit_keeps_the_earliest(tmp_path: Path) -> None:
    rows = [f"u{k},i{k % 7},{T0 + k % 3}" for k in range(500)]
    path = write(tmp_path / "log.csv", "u,i,t\n" + "\n".join(rows) + "\n")
    fmt = ClickLogFormat("csv", "u", "i", "t", "ms")
    df, _ = load_clicklog(path, fmt)
    assert df["user_id"].tolist() == [f"u{k}" for r in range(3) for k in range(500) if k % 3 == r]
    first, report = load_clicklog(path, fmt, limit=10)
    assert first["user_id"].tolist() == df["user_id"].tolist()[:10]
    assert report.rows_used == 10 and report.summary().endswith(
        "using the first 10 in time order (limit)"
    )


def test_the_retailrocket_layout_and_its_bad_rows(tmp_path: Path) -> None:
    log = write_retailrocket(tmp_path / "events.csv")
    fmt = ClickLogFormat("csv", "visitorid", "itemid", "timestamp", "ms", type_col="event")
    df, report = load_clicklog(log.path, fmt)
    assert (report.rows_read, report.rows_kept) == (log.rows, log.kept)
    assert report.lines == {r: tuple(lines) for r, lines in log.bad_lines.items()}
    assert set(report.skipped) == {reason for reason, _ in BAD_ROWS}
    assert set(df["type"].cat.categories) == {"view", "addtocart", "transaction"}
    assert set(df["item_id"]) == log.items and df["ts"].is_monotonic_increasing


def test_the_yoochoose_layout_once_it_has_a_header(tmp_path: Path) -> None:
    # yoochoose-clicks.dat (RecSys Challenge 2015) has no header line; docs/own-data.md
    # adds one. Times are ISO-8601 in UTC with milliseconds.
    rows = [
        "1,2014-04-07T10:51:09.277Z,214536502,0",
        "1,2014-04-07T10:54:09.868Z,214536500,0",
        "2,2014-04-07T13:56:37.614Z,214662742,S",
        "2,2014-04-07T13:57:19.373Z,214825110,2053",
    ]
    path = write(
        tmp_path / "clicks.csv", "session_id,timestamp,item_id,category\n" + "\n".join(rows)
    )
    df, report = load_clicklog(
        path, ClickLogFormat("csv", "session_id", "item_id", "timestamp", "iso")
    )
    first = datetime(2014, 4, 7, 10, 51, 9, 277_000, tzinfo=UTC)
    assert df["ts"].iloc[0] == int(first.timestamp()) * 1000 + 277
    assert df["user_id"].tolist() == ["1", "1", "2", "2"] and df["item_id"].iloc[3] == "214825110"
    assert (report.rows_read, report.rows_kept) == (4, 4)


# -- the vectorised reader equals the plain reading of its rules -------------------------------
def reference(
    text: str, fmt: ClickLogFormat
) -> tuple[list[tuple[object, ...]], dict[str, list[int]]]:
    """Row by row with the csv module and core.events: the specification of load_clicklog
    (CSV, units s and ms)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    head = next(reader)
    width, col = len(head), {name: k for k, name in enumerate(head)}
    kept: list[tuple[object, ...]] = []
    bad: dict[str, list[int]] = {}
    end = reader.line_num
    for record in reader:
        line, end = end + 1, reader.line_num
        reason, row = _reference_row(record, width, col, fmt)
        if reason is None:
            kept.append(row)
        else:
            bad.setdefault(reason, []).append(line)
    kept.sort(key=lambda r: r[2])  # list.sort is stable
    return kept, bad


def _reference_row(
    record: list[str], width: int, col: dict[str, int], fmt: ClickLogFormat
) -> tuple[str | None, tuple[object, ...]]:
    if not record:
        return "blank_line", ()
    if len(record) != width:
        return ("short_row" if len(record) < width else "long_row"), ()
    user, item, raw_ts = (
        record[col[fmt.user_col]],
        record[col[fmt.item_col]],
        record[col[fmt.time_col]],
    )
    if user == "":
        return "missing_user", ()
    if item == "":
        return "missing_item", ()
    if id_problem(user) or id_problem(item):
        return "bad_id", ()
    try:
        value = float(raw_ts) * (1000 if fmt.time_unit == "s" else 1)
    except ValueError:
        return "bad_time", ()
    if not math.isfinite(value):
        return "bad_time", ()
    ts = math.floor(value + 0.5)
    if not MIN_TS_MS <= ts <= MAX_TS_MS:
        return "ts_out_of_range", ()
    etype = record[col[fmt.type_col]] if fmt.type_col else "click"
    if not etype or len(etype) > MAX_TYPE_LEN:
        return "bad_type", ()
    weight = None
    if fmt.weight_col and record[col[fmt.weight_col]] != "":
        try:
            weight = float(record[col[fmt.weight_col]])
        except ValueError:
            return "bad_weight", ()
        if not math.isfinite(weight) or abs(weight) > MAX_WEIGHT:
            return "bad_weight", ()
        weight = float(np.float32(weight))
    return None, (user, item, ts, etype, weight)


TEXT_IDS = st.sampled_from(
    ["a", "b", "007", "7", "", " ", "x/y", "é", "a b", "z" * 129, '"q"', "c,d"]
)
# Integer-looking ids: read as int64 where that is exact, as text where a field
# anywhere is an integer written otherwise ("007", "+7", " 7", "-0"), and again as
# text in a chunk that pandas makes floats ("1.5") or bools ("True").
INT_IDS = st.sampled_from(
    ["0", "7", "42", "-5", "123456789012", "007", "+7", " 7", "7 ", "-0", "1.5", "True", ""]
)
CLEAN_INT_IDS = st.sampled_from(["0", "7", "42", "-5", "123456789012", "1.5", "True"])
TIMES = st.sampled_from(
    [
        str(T0),
        str(T0 + 1),
        str(T0 - 5),
        "1433221332",
        "1433221332.117",
        "",
        "soon",
        "inf",
        "1e12",
        str(MAX_TS_MS + 1),
        "1433221332117.0",
    ]
)
TYPES = st.sampled_from(["view", "buy", "", "t" * 33, "a,b"])
WEIGHTS = st.sampled_from(["", "1", "2.5", "-3", "x", "nan", "inf", "2e6", "1e-3"])


def records(ids: st.SearchStrategy[str]) -> st.SearchStrategy[list[list[str]]]:
    return st.lists(
        st.one_of(
            st.tuples(ids, ids, TIMES, TYPES, WEIGHTS).map(list),
            st.lists(st.sampled_from(["a", "1", ""]), min_size=0, max_size=7),  # wrong widths
        ),
        min_size=1,
        max_size=30,
    )


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    records=st.one_of(records(TEXT_IDS), records(INT_IDS), records(CLEAN_INT_IDS)),
    unit=st.sampled_from(["ms", "s"]),
    chunk=st.sampled_from([3, 1000]),
)
def test_the_reader_equals_the_reference(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    records: list[list[str]],
    unit: str,
    chunk: int,
) -> None:
    monkeypatch.setattr(tabular, "CHUNK_ROWS", chunk)  # several chunks: text, int, float ones
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["u", "i", "t", "k", "w"])
    for record in records:
        if record == [""]:  # the csv module writes a one-empty-field row as '""'
            record = ["", ""]
        writer.writerow(record)
    text = out.getvalue()
    path = tmp_path / "gen.csv"
    path.write_text(text, encoding="utf-8")
    fmt = ClickLogFormat("csv", "u", "i", "t", unit, type_col="k", weight_col="w")  # type: ignore[arg-type]
    want, bad = reference(text, fmt)
    assert_reads_as(path, fmt, want, bad)


def json_reference(
    lines: list[str], fmt: ClickLogFormat
) -> tuple[list[tuple[object, ...]], dict[str, list[int]]]:
    """Line by line with json and core.events: the specification of the JSON-lines reader."""
    kept: list[tuple[object, ...]] = []
    bad: dict[str, list[int]] = {}
    for number, line in enumerate(lines, start=1):
        reason, row = _json_reference_row(line, fmt)
        if reason is None:
            kept.append(row)
        else:
            bad.setdefault(reason, []).append(number)
    kept.sort(key=lambda r: r[2])
    return kept, bad


def _loads_or_none(line: str) -> object:
    try:
        return json.loads(line)
    except ValueError:
        return None


def _json_id(value: object) -> tuple[str | None, str]:
    if type(value) is int:
        value = str(value)
    if value is None or value == "":
        return "missing", ""
    if type(value) is not str or id_problem(value):
        return "bad", ""
    return None, value


def _json_number(value: object) -> float | None:
    if type(value) in (int, float):
        return float(value)  # type: ignore[arg-type]
    if type(value) is str:
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _json_reference_row(line: str, fmt: ClickLogFormat) -> tuple[str | None, tuple[object, ...]]:
    if not line.strip():
        return "blank_line", ()
    try:
        obj = json.loads(line)
    except ValueError:
        return "not_json", ()
    if not isinstance(obj, dict):
        return "not_an_object", ()
    (user_problem, user), (item_problem, item) = (
        _json_id(obj.get(fmt.user_col)),
        _json_id(obj.get(fmt.item_col)),
    )
    if user_problem == "missing":
        return "missing_user", ()
    if item_problem == "missing":
        return "missing_item", ()
    if user_problem or item_problem:
        return "bad_id", ()
    number = _json_number(obj.get(fmt.time_col))
    if number is None or not math.isfinite(number):
        return "bad_time", ()
    ts = math.floor(number * (1000 if fmt.time_unit == "s" else 1) + 0.5)
    if not MIN_TS_MS <= ts <= MAX_TS_MS:
        return "ts_out_of_range", ()
    etype = obj.get(fmt.type_col) if fmt.type_col else "click"
    if type(etype) is not str or not etype or len(etype) > MAX_TYPE_LEN:
        return "bad_type", ()
    raw_weight = obj.get(fmt.weight_col) if fmt.weight_col else None
    weight = None
    if raw_weight is not None:
        weight = _json_number(raw_weight)
        if weight is None or not math.isfinite(weight) or abs(weight) > MAX_WEIGHT:
            return "bad_weight", ()
        weight = float(np.float32(weight))
    return None, (user, item, ts, etype, weight)


# orjson reads integers past 64 bits as floats (so they are no ids): 2**64 - 1 is the
# largest integer id, and one past int64 that takes the reader's general path.
JSON_IDS = st.sampled_from(["a", "007", "", "x/y", 7, 0, -3, True, 1.5, None, ["a"], 2**64 - 1])
JSON_TIMES = st.sampled_from(
    [T0, T0 + 1, float(T0), 1433221332.117, "1433221332117", "", "soon", True, None, 10**30]
)
JSON_TYPES = st.sampled_from(["view", "", "t" * 33, 3, None])
JSON_WEIGHTS = st.sampled_from([1, 2.5, "3", "", "x", True, None, 1e7, -1e-3])
ABSENT = object()


@st.composite
def json_line(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["object"] * 8 + ["blank", "garbage", "list"]))
    if kind != "object":
        return {"blank": "", "garbage": "{nope", "list": "[1, 2]"}[kind]
    obj = {}
    for key, values in (
        ("u", JSON_IDS),
        ("i", JSON_IDS),
        ("t", JSON_TIMES),
        ("k", JSON_TYPES),
        ("w", JSON_WEIGHTS),
    ):
        value = draw(st.one_of(st.just(ABSENT), values))
        if value is not ABSENT:
            obj[key] = value
    return json.dumps(obj)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lines=st.lists(json_line(), min_size=1, max_size=30),
    unit=st.sampled_from(["ms", "s"]),
    chunk=st.sampled_from([3, 1000]),
)
def test_the_json_reader_equals_the_reference(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    lines: list[str],
    unit: str,
    chunk: int,
) -> None:
    monkeypatch.setattr(tabular, "CHUNK_ROWS", chunk)
    path = tmp_path / "gen.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    fmt = ClickLogFormat("jsonl", "u", "i", "t", unit, type_col="k", weight_col="w")  # type: ignore[arg-type]
    want, bad = json_reference(lines, fmt)
    objects = [o for o in map(_loads_or_none, lines) if isinstance(o, dict)]
    if not set("uitkw") <= {key for o in objects for key in o}:
        # A key that no object has is a misnamed column, whatever the rows hold.
        with pytest.raises(DatasetError, match="no column"):
            load_clicklog(path, fmt)
        return
    assert_reads_as(path, fmt, want, bad)
