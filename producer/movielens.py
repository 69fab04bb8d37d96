"""MovieLens files to an interactions frame and a catalogue. Pure file parsing, no network.

Three on-disk layouts cover every MovieLens release:

    ml-latest  ratings.csv  header ``userId,movieId,rating,timestamp``, comma-separated
               (ml-latest-small, ml-20m, ml-25m, ml-latest); titles and genres in
               movies.csv, tags in tags.csv (``userId,movieId,tag,timestamp``)
    ml-100k    u.data       ``user<TAB>item<TAB>rating<TAB>ts``, no header; titles and
               genre flags in u.item, the flags' names in u.genre; no tags
    ml-dat     ratings.dat  ``user::item::rating::ts``, no header (ml-1m, ml-10m);
               titles and genres in movies.dat, tags in tags.dat (ml-10m only,
               ``user::item::tag::ts``)

Every layout stores timestamps in epoch seconds; the event contract wants
milliseconds, so ``load_ratings`` multiplies by 1000 once, here. A rating is an
event of type "rating" whose weight is the rating (producer.frame).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from core.catalogue import Catalogue, CatalogueItem
from core.errors import DatasetError
from producer.frame import interactions_frame
from producer.frame import to_events as to_events  # where callers have always found it

ML_LATEST = "ml-latest"
ML_100K = "ml-100k"
ML_DAT = "ml-dat"

RATINGS_FILES: dict[str, str] = {ML_LATEST: "ratings.csv", ML_100K: "u.data", ML_DAT: "ratings.dat"}
TITLES_FILES: dict[str, str] = {ML_LATEST: "movies.csv", ML_100K: "u.item", ML_DAT: "movies.dat"}
TAGS_FILES: dict[str, str] = {ML_LATEST: "tags.csv", ML_DAT: "tags.dat"}
RATING_TYPE = "rating"
LATEST_HEADER = "userId,movieId,rating,timestamp"
COLUMNS = ["user_id", "item_id", "rating", "ts"]  # file column order in every layout

LAYOUT_HINT = (
    "supported layouts: ml-latest (ratings.csv with header userId,movieId,rating,timestamp: "
    "ml-latest-small, ml-20m, ml-25m, ml-latest), ml-100k (u.data, tab-separated), "
    "ml-dat (ratings.dat with '::' separators: ml-1m, ml-10m)"
)


def _first_line(file: Path) -> str:
    try:
        with open(file, "rb") as fh:
            head = fh.readline(65_536)
    except OSError as exc:
        raise DatasetError(f"cannot read {file}: {exc.strerror or exc}") from exc
    # latin-1 decodes any byte, and a UTF-8 BOM would hide the header: strip it.
    return head.decode("latin-1").removeprefix("\xef\xbb\xbf").strip()


def _sniff(file: Path) -> str | None:
    """The layout a ratings file's first line belongs to, or None."""
    line = _first_line(file)
    if line.replace(" ", "") == LATEST_HEADER:
        return ML_LATEST
    if len(line.split("::")) == 4:
        return ML_DAT
    if len(line.split("\t")) == 4:
        return ML_100K
    return None


def locate_ratings(path: Path) -> tuple[str, Path]:
    """(layout, ratings file) for a dataset directory or a ratings file."""
    path = Path(path)
    if path.is_dir():
        for layout, name in RATINGS_FILES.items():
            file = path / name
            if file.is_file():
                found = _sniff(file)
                if found != layout:
                    raise DatasetError(
                        f"{file} does not look like the {layout} layout "
                        f"(first line: {_first_line(file)[:80]!r})",
                        hint=LAYOUT_HINT,
                    )
                return layout, file
        raise DatasetError(f"no MovieLens ratings file in {path}", hint=LAYOUT_HINT)
    if path.is_file():
        sniffed = _sniff(path)
        if sniffed is None:
            raise DatasetError(
                f"{path} is not a MovieLens ratings file (first line: {_first_line(path)[:80]!r})",
                hint=LAYOUT_HINT,
            )
        return sniffed, path
    raise DatasetError(f"{path} does not exist", hint=LAYOUT_HINT)


def detect_layout(path: Path) -> str:
    """ "ml-latest", "ml-100k" or "ml-dat" for a dataset directory or ratings file."""
    return locate_ratings(path)[0]


def _read(layout: str, file: Path) -> pd.DataFrame:
    """The raw four columns as pandas parses them (ids come out int64 in MovieLens)."""
    if layout == ML_LATEST:
        df = pd.read_csv(file, engine="c", header=0)
        df.columns = pd.Index(COLUMNS)
        return df
    if layout == ML_100K:
        return pd.read_csv(file, engine="c", sep="\t", header=None, names=COLUMNS)
    # The C parser takes single-character separators only, and the python engine
    # with sep="::" manages ~100k rows/s (minutes for ml-10m). Rewriting "::" to a
    # tab in memory is one bytes.replace, and then the C parser does the rest.
    data = file.read_bytes().replace(b"::", b"\t")
    return pd.read_csv(io.BytesIO(data), engine="c", sep="\t", header=None, names=COLUMNS)


def _codes(ids: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Ids as (code per row, distinct ids as str): one str object per distinct id.

    Parsing ids as str makes one Python object per row: 25M rows of ml-25m cost
    ~1.5 s per 2M rows and ~50 bytes each. Ids repeat (ml-25m: 162k users, 59k
    items), so factorize the integers and stringify the few uniques (the frame
    points every row at its shared str, producer.frame.strings). MovieLens ids
    have no leading zeros, so int -> str round-trips exactly.
    """
    if not pd.api.types.is_integer_dtype(ids):
        ids = ids.astype(str)
    codes, uniques = pd.factorize(ids)
    return codes, [str(v) for v in uniques.tolist()]


def _check(raw: pd.DataFrame, file: Path, header_lines: int) -> tuple[pd.Series, pd.Series]:
    """Numeric rating and integer ts columns; DatasetError naming the first bad line."""
    rating = raw["rating"]
    ts = raw["ts"]
    if not pd.api.types.is_numeric_dtype(rating):
        rating = pd.to_numeric(rating, errors="coerce")
    if not pd.api.types.is_numeric_dtype(ts):
        ts = pd.to_numeric(ts, errors="coerce")
    bad = raw["user_id"].isna() | raw["item_id"].isna() | rating.isna() | ts.isna()
    if not pd.api.types.is_integer_dtype(ts):
        # A float column means NaNs or fractions; a fractional second is not a MovieLens ts.
        bad |= ts.notna() & (ts != np.floor(ts))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        values = ",".join(str(v) for v in raw.iloc[row].tolist())
        raise DatasetError(
            f"{file}, line {row + 1 + header_lines}: malformed rating row ({values})",
            hint="expected user, item, numeric rating and integer epoch-seconds timestamp",
        )
    return rating, ts


def load_ratings(path: Path, *, limit: int | None = None) -> pd.DataFrame:
    """Ratings as an interactions frame (producer.frame) in timestamp order: user_id,
    item_id (str), ts (int64 ms), type ("rating"), weight (float32, the rating).

    The sort is stable, so events with equal timestamps keep their file order
    (the tie rule of the prequential evaluation). ``limit`` keeps the first
    ``limit`` rows of that order.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    layout, file = locate_ratings(path)
    try:
        raw = _read(layout, file)
    except pd.errors.ParserError as exc:
        raise DatasetError(f"{file}: malformed rating row: {str(exc).strip()}") from exc
    except (UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DatasetError(f"{file}: unreadable ratings file: {exc}") from exc
    rating, ts = _check(raw, file, header_lines=1 if layout == ML_LATEST else 0)
    # Stable argsort on the int64 column alone, then gather: cheaper than sorting
    # a frame, and every column is built once, already in order.
    order = np.argsort(ts.to_numpy(), kind="stable")
    if limit is not None:
        order = order[:limit]
    user_codes, users = _codes(raw["user_id"])
    item_codes, items = _codes(raw["item_id"])
    return interactions_frame(
        users=(user_codes[order], users),
        items=(item_codes[order], items),
        ts=ts.to_numpy().astype("int64")[order] * 1000,
        types=(np.zeros(len(order), dtype=np.int8), [RATING_TYPE]),
        weight=rating.to_numpy().astype("float32")[order],
    )


def _read_text(file: Path) -> str:
    data = file.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        # ml-100k u.item and ml-1m movies.dat are latin-1 ("Misérables" as 0xE9).
        return data.decode("latin-1")


NO_GENRES = "(no genres listed)"


def load_movielens_catalogue(path: Path) -> Catalogue:
    """Titles, genres (as categories) and tags of a MovieLens dataset (directory or
    ratings file); empty if it has neither a movie nor a tag file. Tags are
    stripped, lower-cased and deduplicated per movie; "(no genres listed)" (and
    ml-100k's "unknown") is no genre. A movie tagged but not in the movie file is
    in it without a title."""
    layout, ratings = locate_ratings(path)
    folder = ratings.parent
    movies = _movies(layout, folder)
    tags = _tags(layout, folder)
    items = {
        item: CatalogueItem(title, genres, tags.get(item, frozenset()))
        for item, (title, genres) in movies.items()
    }
    for item, item_tags in tags.items():
        if item not in items:
            items[item] = CatalogueItem(None, frozenset(), item_tags)
    return Catalogue(items)


def load_titles(path: Path) -> dict[str, str]:
    """item_id -> title from the dataset's movie file; empty if the dataset has none."""
    return load_movielens_catalogue(path).titles()


def load_genres(path: Path) -> dict[str, frozenset[str]]:
    """item_id -> its genres (the catalogue's categories); empty without a movie file."""
    return {item: entry.categories for item, entry in load_movielens_catalogue(path).items()}


Movies = dict[str, tuple[str | None, frozenset[str]]]  # item -> (title, genres)


def _genres(field: str) -> frozenset[str]:
    return frozenset(g for g in field.strip().split("|") if g and g != NO_GENRES)


def _movies(layout: str, folder: Path) -> Movies:
    file = folder / TITLES_FILES[layout]
    if not file.is_file():
        return {}
    if layout == ML_LATEST:
        # Titles contain commas and quotes: leave the quoting rules to the CSV parser.
        table = pd.read_csv(file, engine="c", dtype=str, keep_default_na=False)
        genres = table["genres"] if "genres" in table else pd.Series([""] * len(table))
        return {
            item: (title or None, _genres(field))
            for item, title, field in zip(
                table["movieId"].str.strip(), table["title"], genres, strict=True
            )
        }
    if layout == ML_100K:
        return _movies_100k(file, folder / "u.genre")
    movies: Movies = {}
    for line in _read_text(file).splitlines():
        parts = line.split("::")
        if len(parts) >= 2 and parts[0].strip():
            movies[parts[0].strip()] = (
                parts[1] or None,
                _genres(parts[2]) if len(parts) >= 3 else frozenset(),
            )
    return movies


def _movies_100k(file: Path, genre_file: Path) -> Movies:
    """u.item: ``id|title|release|video release|url|flag0|flag1|...``, flag k named
    by the line ``name|k`` of u.genre (no genres without u.genre)."""
    names: dict[int, str] = {}
    if genre_file.is_file():
        for line in _read_text(genre_file).splitlines():
            name, _, code = line.rpartition("|")
            if name and code.strip().isdigit() and name != "unknown":
                names[int(code)] = name
    movies: Movies = {}
    for line in _read_text(file).splitlines():
        parts = line.split("|")
        if len(parts) >= 2 and parts[0].strip():
            flags = parts[5:]
            genres = frozenset(
                names[k] for k, f in enumerate(flags) if f.strip() == "1" and k in names
            )
            movies[parts[0].strip()] = (parts[1] or None, genres)
    return movies


def _tags(layout: str, folder: Path) -> dict[str, frozenset[str]]:
    name = TAGS_FILES.get(layout)
    file = folder / name if name else None
    if file is None or not file.is_file():
        return {}
    if layout == ML_LATEST:
        table = pd.read_csv(
            file, engine="c", dtype=str, usecols=["movieId", "tag"], keep_default_na=False
        )
        items, tags = table["movieId"].str.strip(), table["tag"]
    else:
        # ``user::item::tag::ts``; a tag holding "::" keeps it (split from both ends).
        rows = [line.split("::") for line in _read_text(file).splitlines()]
        rows = [r for r in rows if len(r) >= 4]
        items = pd.Series([r[1].strip() for r in rows], dtype=str)
        tags = pd.Series(["::".join(r[2:-1]) for r in rows], dtype=str)
    tags = tags.str.strip().str.lower()
    pairs = pd.DataFrame({"item": items, "tag": tags})
    pairs = pairs[(pairs["tag"] != "") & (pairs["item"] != "")].drop_duplicates()
    # One shared str object per distinct tag: ml-25m has 1.1M tag rows, 74k distinct.
    codes, uniques = pd.factorize(pairs["tag"])
    shared = np.asarray(uniques, dtype=object)[codes]
    out: dict[str, set[str]] = {}
    for item, tag in zip(pairs["item"].tolist(), shared.tolist(), strict=True):
        out.setdefault(item, set()).add(tag)
    return {item: frozenset(t) for item, t in out.items()}
