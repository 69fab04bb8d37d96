"""MovieLens loaders on tiny files of each layout, plus the real ml-latest-small."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.errors import DatasetError
from core.events import ClickEvent, decode
from producer.movielens import detect_layout, load_genres, load_ratings, load_titles, to_events

Row = tuple[int, int, float, int]

# Rows in file order: (user, item, rating, ts_seconds). Rows 1 and 2 share a
# timestamp and must keep this order; row 3 is the earliest and must come first.
ROWS: list[Row] = [
    (1, 10, 4.0, 964982703),
    (2, 20, 3.5, 964982800),
    (1, 30, 5.0, 964982800),
    (3, 40, 1.0, 964980000),
]
# The expected order after a stable sort on ts: earliest first, tie in file order.
SORTED = [ROWS[3], ROWS[0], ROWS[1], ROWS[2]]


def write_latest(d: Path, rows: list[Row] = ROWS) -> Path:
    lines = ["userId,movieId,rating,timestamp"] + [",".join(map(str, r)) for r in rows]
    (d / "ratings.csv").write_text("\n".join(lines) + "\n")
    (d / "movies.csv").write_text(
        'movieId,title,genres\n10,"Toy Story (1995)",Animation\n'
        '20,"American President, The (1995)",Comedy|Drama\n'
    )
    return d


def write_100k(d: Path, rows: list[Row] = ROWS) -> Path:
    # ml-100k ratings are whole stars, so 3.5 is written as 3.
    lines = ["\t".join(str(int(v)) for v in r) for r in rows]
    (d / "u.data").write_text("\n".join(lines) + "\n")
    (d / "u.item").write_bytes(
        "10|Toy Story (1995)|01-Jan-1995||http://x|0|1|0\n"
        "20|Misérables, Les (1995)|01-Jan-1995||http://x|0|0|1\n".encode("latin-1")
    )
    (d / "u.genre").write_text("unknown|0\nAnimation|1\nDrama|2\n")
    return d


def write_dat(d: Path, rows: list[Row] = ROWS) -> Path:
    lines = ["::".join(str(v) for v in r) for r in rows]
    (d / "ratings.dat").write_text("\n".join(lines) + "\n")
    (d / "movies.dat").write_bytes(
        "10::Toy Story (1995)::Animation|Children's\n20::Misérables, Les (1995)::Drama\n".encode(
            "latin-1"
        )
    )
    return d


WRITERS = {"ml-latest": write_latest, "ml-100k": write_100k, "ml-dat": write_dat}


@pytest.mark.parametrize("layout", list(WRITERS))
def test_detect_layout_from_directory_and_file(tmp_path: Path, layout: str) -> None:
    d = WRITERS[layout](tmp_path)
    assert detect_layout(d) == layout
    ratings = next(p for p in d.iterdir() if p.name in {"ratings.csv", "u.data", "ratings.dat"})
    assert detect_layout(ratings) == layout


@pytest.mark.parametrize("layout", list(WRITERS))
def test_load_ratings_sorted_stable_ms_and_dtypes(tmp_path: Path, layout: str) -> None:
    df = load_ratings(WRITERS[layout](tmp_path))
    assert list(df.columns) == ["user_id", "item_id", "ts", "type", "weight"]
    assert df["ts"].dtype == np.int64
    assert df["weight"].dtype == np.float32
    assert isinstance(df["type"].dtype, pd.CategoricalDtype)
    assert df["type"].tolist() == ["rating"] * len(ROWS)
    assert all(isinstance(v, str) for v in df["user_id"]) and pd.api.types.is_string_dtype(
        df["user_id"]
    )
    assert all(isinstance(v, str) for v in df["item_id"])
    assert list(df.index) == list(range(len(ROWS)))
    got = list(zip(df["user_id"], df["item_id"], df["weight"].tolist(), df["ts"], strict=True))
    want = [(str(u), str(i), float(r), ts * 1000) for u, i, r, ts in SORTED]
    if layout == "ml-100k":  # whole stars only, see write_100k
        want = [(u, i, float(int(r)), ts) for u, i, r, ts in want]
    assert got == want


@pytest.mark.parametrize("layout", list(WRITERS))
def test_limit_keeps_earliest_rows(tmp_path: Path, layout: str) -> None:
    df = load_ratings(WRITERS[layout](tmp_path), limit=2)
    assert list(df["ts"]) == [SORTED[0][3] * 1000, SORTED[1][3] * 1000]
    assert list(df.index) == [0, 1]
    assert len(load_ratings(tmp_path, limit=0)) == 0


def test_many_ties_keep_file_order(tmp_path: Path) -> None:
    # Three interleaved timestamps over 500 rows: pandas' default quicksort
    # reorders rows within a tie here (checked), a stable sort must not.
    rows = [(u, u * 7, 3.0, 964982703 + u % 3) for u in range(500)]
    df = load_ratings(write_latest(tmp_path, rows))
    want = [str(u) for k in range(3) for u in range(500) if u % 3 == k]
    assert list(df["user_id"]) == want


@pytest.mark.parametrize(
    ("layout", "bad_line", "content"),
    [
        ("ml-latest", 3, "userId,movieId,rating,timestamp\n1,2,3.0,964982703\n1,3,x,964982704\n"),
        ("ml-latest", 2, "userId,movieId,rating,timestamp\n1,2,3.0\n"),
        ("ml-latest", 3, "userId,movieId,rating,timestamp\n1,2,3,5\n1,2,3.0,5,9\n"),
        ("ml-100k", 2, "1\t2\t3\t964982703\n1\t2\t3\tlater\n"),
        ("ml-dat", 2, "1::2::3::964982703\n1::2::3::964982703.5\n"),
    ],
)
def test_malformed_row_names_file_and_line(
    tmp_path: Path, layout: str, bad_line: int, content: str
) -> None:
    name = {"ml-latest": "ratings.csv", "ml-100k": "u.data", "ml-dat": "ratings.dat"}[layout]
    (tmp_path / name).write_text(content)
    with pytest.raises(DatasetError, match=rf"{name}.*line {bad_line}\b"):
        load_ratings(tmp_path)


def test_unknown_layout_lists_supported(tmp_path: Path) -> None:
    (tmp_path / "interactions.parquet").write_bytes(b"PAR1")
    with pytest.raises(DatasetError) as err:
        detect_layout(tmp_path)
    assert "ml-100k" in err.value.hint and "ml-dat" in err.value.hint
    with pytest.raises(DatasetError):
        detect_layout(tmp_path / "interactions.parquet")
    with pytest.raises(DatasetError, match="does not exist"):
        load_ratings(tmp_path / "nope")


def test_ratings_csv_without_header_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text("1,2,3.0,964982703\n")
    with pytest.raises(DatasetError, match="ml-latest"):
        detect_layout(tmp_path)


@pytest.mark.parametrize("layout", list(WRITERS))
def test_load_titles(tmp_path: Path, layout: str) -> None:
    titles = load_titles(WRITERS[layout](tmp_path))
    assert titles["10"] == "Toy Story (1995)"
    second = "American President, The (1995)" if layout == "ml-latest" else "Misérables, Les (1995)"
    assert titles["20"] == second
    assert len(titles) == 2


@pytest.mark.parametrize("layout", list(WRITERS))
def test_load_genres(tmp_path: Path, layout: str) -> None:
    genres = load_genres(WRITERS[layout](tmp_path))
    assert "Animation" in genres["10"]
    assert genres["20"] == ({"Comedy", "Drama"} if layout == "ml-latest" else {"Drama"})


def test_load_titles_absent_is_empty(tmp_path: Path) -> None:
    write_dat(tmp_path)
    (tmp_path / "movies.dat").unlink()
    assert load_titles(tmp_path) == {}


def test_to_events_round_trip_the_contract(tmp_path: Path) -> None:
    df = load_ratings(write_latest(tmp_path))
    events = list(to_events(df))
    assert events[0] == ClickEvent("3", "40", 964980000000, "rating", 1.0)
    assert [e.ts for e in events] == list(df["ts"])
    for event in events:
        assert type(event.ts) is int and type(event.weight) is float
        assert decode(event.encode()) == event


@pytest.mark.realdata
def test_real_ml_latest_small(movielens_dir: Path) -> None:
    assert detect_layout(movielens_dir) == "ml-latest"
    df = load_ratings(movielens_dir)
    assert len(df) == 100_836
    assert df["user_id"].nunique() == 610
    assert df["ts"].is_monotonic_increasing
    raw = pd.read_csv(movielens_dir / "ratings.csv")
    # argmin returns the first of several minima, i.e. file order breaks the tie.
    first = int(raw["timestamp"].to_numpy().argmin())
    user, item, ts = (int(raw[c].iloc[first]) for c in ("userId", "movieId", "timestamp"))
    assert df["ts"].iloc[0] == ts * 1000
    assert (df["user_id"].iloc[0], df["item_id"].iloc[0]) == (str(user), str(item))
    titles = load_titles(movielens_dir)
    assert len(titles) == 9742 and titles["1"] == "Toy Story (1995)"
    assert sum(1 for _ in to_events(df.iloc[:1000])) == 1000
