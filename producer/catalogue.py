"""Catalogue files to a ``Catalogue``: a team's own file, or MovieLens's movie and tag files.

A catalogue file is CSV, TSV or JSON lines with these columns (keys), only
``item_id`` required::

    item_id      the item's id (the id rule of core.events)
    title        its display title (empty: none)
    categories   several, "|"-separated ("Shoes|Running"); in JSON lines a list
                 of strings or a "|"-separated string
    tags         the same; tags are stripped and lower-cased, categories only stripped

Bad rows are skipped and counted like a click log's (producer.read_report),
under the first rule they break::

    blank_line, short_row, long_row, not_json, not_an_object   (as in producer.clicklog)
    missing_item      empty or absent item_id
    bad_id            an item id the id rule refuses (in JSON: not a string or integer)
    bad_title         a JSON title that is not a string
    bad_categories    JSON categories neither a list of strings nor a string
    bad_tags          the same for tags
    duplicate_item    an item id listed before (the first row wins)

MovieLens layouts are read by ``load_movielens_catalogue`` (producer.movielens).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.catalogue import Catalogue, CatalogueItem
from core.errors import DatasetError
from core.events import id_problem
from producer.movielens import load_movielens_catalogue
from producer.read_report import ReadReport, RowTally
from producer.tabular import (
    JSONL,
    STRUCTURE,
    Rows,
    check_file,
    check_read,
    csv_rows,
    header,
    infer_format,
    jsonl_rows,
    require_columns,
)

COLUMNS = ("item_id", "title", "categories", "tags")
REASONS = (
    *STRUCTURE,
    "missing_item",
    "bad_id",
    "bad_title",
    "bad_categories",
    "bad_tags",
    "duplicate_item",
)
SEPARATOR = "|"
_NONE: frozenset[str] = frozenset()


def catalogue_format(path: Path, fmt: str | None = None) -> str:
    """``fmt`` if given, else the format the file name says; DatasetError if neither."""
    if fmt is not None:
        return fmt
    inferred = infer_format(path)
    if inferred is None:
        raise DatasetError(
            f"cannot tell the format of {path} from its name",
            hint="name it .csv, .tsv or .jsonl (.gz allowed), or give --catalogue-format",
        )
    return inferred


def load_catalogue_file(path: Path, format: str | None = None) -> tuple[Catalogue, ReadReport]:
    """A catalogue file (see the module docstring) and what was read, kept and skipped.

    ``format``: csv, tsv or jsonl; default from the file name. DatasetError if
    ``item_id`` is not a column or no row is usable.
    """
    fmt = catalogue_format(Path(path), format)
    path = check_file(Path(path), fmt)
    tally = RowTally(str(path), REASONS)
    items: dict[str, CatalogueItem] = {}
    names: dict[str, str] = {}  # one shared str per category/tag name
    present: set[str] = set()
    for rows in _rows(path, fmt):
        _take(rows, tally, items, names)
        present |= rows.present
    check_read(
        path,
        fmt,
        tally,
        present,
        {"item_id": "item_id"},
        {},
        "a catalogue needs an item_id column; see docs/own-data.md",
    )
    return Catalogue(items), tally.report()


def _rows(path: Path, fmt: str) -> Iterator[Rows]:
    if fmt == JSONL:
        yield from jsonl_rows(path, COLUMNS)
        return
    have = header(path, fmt)
    require_columns(path, have, {"item_id": "item_id"}, "its header has")
    wanted = [c for c in COLUMNS if c in have]
    yield from csv_rows(path, fmt, wanted, dtypes=dict.fromkeys(wanted, str))


def _take(
    rows: Rows, tally: RowTally, items: dict[str, CatalogueItem], names: dict[str, str]
) -> None:
    # Catalogues are small next to click logs (a row per item, not per click):
    # row by row is clear and fast enough (~1 s per 500k items).
    cols = rows.columns
    n = len(rows.lines)
    absent = [None] * n
    ids = cols["item_id"].tolist()
    titles = cols["title"].tolist() if "title" in cols else absent
    categories = cols["categories"].tolist() if "categories" in cols else absent
    tags = cols["tags"].tolist() if "tags" in cols else absent
    lines = rows.lines.tolist()
    for k, problem in enumerate(rows.problems.tolist()):
        if problem:
            tally.skip(STRUCTURE[problem - 1], lines[k])
            continue
        reason, item_id, item = _row(ids[k], titles[k], categories[k], tags[k], names)
        if reason is None and item_id in items:
            reason = "duplicate_item"
        if reason is not None:
            tally.skip(reason, lines[k])
            continue
        items[item_id] = item
        tally.keep()


def _row(
    raw_id: Any, title: Any, categories: Any, tags: Any, names: dict[str, str]
) -> tuple[str | None, str, CatalogueItem]:
    """(reason the row is refused or None, item id, the item)."""
    nothing = CatalogueItem()
    if type(raw_id) is int:
        raw_id = str(raw_id)
    if raw_id is None or raw_id == "":
        return "missing_item", "", nothing
    if type(raw_id) is not str or id_problem(raw_id) is not None:
        return "bad_id", "", nothing
    if title is not None and type(title) is not str:
        return "bad_title", raw_id, nothing
    cats = _names(categories, names, lower=False)
    if cats is None:
        return "bad_categories", raw_id, nothing
    tag_set = _names(tags, names, lower=True)
    if tag_set is None:
        return "bad_tags", raw_id, nothing
    return None, raw_id, CatalogueItem(title or None, cats, tag_set)


def _names(value: Any, shared: dict[str, str], *, lower: bool) -> frozenset[str] | None:
    """A "|"-separated string or a list of strings as a set of names; None if neither."""
    if value is None:
        return _NONE
    if type(value) is str:
        parts = value.split(SEPARATOR)
    elif type(value) is list and all(type(v) is str for v in value):
        parts = value
    else:
        return None
    out = set()
    for part in parts:
        name = part.strip()
        if lower:
            name = name.lower()
        if name:
            out.add(shared.setdefault(name, name))
    return frozenset(out) if out else _NONE


__all__ = [
    "COLUMNS",
    "REASONS",
    "Catalogue",
    "CatalogueItem",
    "catalogue_format",
    "load_catalogue_file",
    "load_movielens_catalogue",
]
