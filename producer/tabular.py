"""Rows of a CSV, TSV or JSON-lines file, in chunks, each with its line number.

The common ground of the click-log and catalogue readers: find the format,
open plain or gzip-compressed files alike (by their magic bytes, not their
name), read the header, and hand out rows chunk by chunk with what was wrong
with their structure. What the values mean is the readers' business.

CSV and TSV go through pandas' C parser (a few seconds per 10M rows), which
neither reports line numbers nor tells a short row from one with empty fields.
So a first pass counts each record's fields: with numpy over raw bytes when the
file has no quote character (then a record is a line), with the ``csv`` module
when it has one (a quoted field may hold a separator or a newline). Records
whose field count differs from the header's are ``short_row`` or ``long_row``,
blank lines are ``blank_line``; pandas still parses them, the reader skips them.
JSON-lines are decoded line by line with orjson: ``not_json`` or
``not_an_object`` when a line is neither.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import orjson
import pandas as pd

from core.errors import DatasetError
from producer.read_report import RowTally

log = logging.getLogger("streamrec.producer")

CSV, TSV, JSONL = "csv", "tsv", "jsonl"
FORMATS = (CSV, TSV, JSONL)
SEPARATORS = {CSV: ",", TSV: "\t"}
SUFFIXES = {".csv": CSV, ".tsv": TSV, ".tab": TSV, ".jsonl": JSONL, ".ndjson": JSONL}
# Problems with a row's structure, before any value is looked at. Every reader's
# reasons start with these, so a row's code (index + 1) means the same in all.
STRUCTURE = ("blank_line", "short_row", "long_row", "not_json", "not_an_object")
BLANK, SHORT, LONG, NOT_JSON, NOT_OBJECT = range(1, len(STRUCTURE) + 1)

# Rows per chunk: each chunk's distinct ids are looked up once, so larger chunks
# do less work where ids repeat; 2M rows of text ids are ~300 MB of Python
# strings while the chunk lives.
CHUNK_ROWS = 2_000_000
# Bytes per block of the field-count pass: ~400k lines of a 40-byte click log,
# ~100 MB of index arrays while it is counted.
_BLOCK = 16 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"


@dataclass
class Rows:
    """One chunk of rows: line numbers, structural problem codes (0: none), values."""

    lines: np.ndarray  # int64, 1-based line of each row in the (decompressed) file
    problems: np.ndarray  # int8, 0 or one of BLANK .. NOT_OBJECT
    columns: dict[str, pd.Series]  # requested column -> its values, row-aligned
    # JSON values (any type, None where absent), not CSV text (str, or what pandas inferred)
    json: bool = False
    # JSON lines: the requested keys some object of the chunk has (null or not)
    present: frozenset[str] = frozenset()


def infer_format(path: Path) -> str | None:
    """csv, tsv or jsonl from the file name (``.gz`` looked through), or None."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return SUFFIXES.get(suffixes[-1]) if suffixes else None


def is_gzip(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(2) == _GZIP_MAGIC
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc


def open_binary(path: Path) -> IO[bytes]:
    """The file's bytes, decompressed if it is gzip."""
    if is_gzip(path):
        return cast(IO[bytes], gzip.GzipFile(path, "rb"))
    return open(path, "rb")


def check_file(path: Path, fmt: str) -> Path:
    path = Path(path)
    if fmt not in FORMATS:
        raise DatasetError(f"unknown format {fmt!r}", hint="one of: " + ", ".join(FORMATS))
    if not path.is_file():
        raise DatasetError(f"{path} does not exist or is not a file")
    return path


def header(path: Path, fmt: str) -> list[str]:
    """The column names of a CSV/TSV file's first line (a UTF-8 BOM stripped)."""
    try:
        names = pd.read_csv(
            path,
            sep=SEPARATORS[fmt],
            nrows=0,
            index_col=False,
            encoding="utf-8",
            encoding_errors="replace",
            compression="gzip" if is_gzip(path) else None,
        ).columns
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{path} is empty: no header line") from None
    except (pd.errors.ParserError, OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DatasetError(f"{path}: unreadable header: {str(exc).strip()}") from exc
    return [str(n) for n in names]


def require_columns(path: Path, have: Sequence[str], wanted: Mapping[str, str], where: str) -> None:
    """DatasetError naming every wanted column (option -> name) that ``have`` lacks."""
    missing = [f"{name!r} ({option})" for option, name in wanted.items() if name not in have]
    if missing:
        shown = ", ".join(repr(h) for h in have[:40]) + (", ..." if len(have) > 40 else "")
        raise DatasetError(
            f"{path}: no column {', '.join(missing)}; {where}: {shown or 'nothing'}",
            hint="name the columns exactly as the file spells them (case and spaces count)",
        )


def check_read(
    path: Path,
    fmt: str,
    tally: RowTally,
    present: set[str],
    wanted: Mapping[str, str],
    hints: Mapping[str, str],
    hint: str,
) -> None:
    """After a reader's last chunk: DatasetError for a file with no rows after its
    header, a JSON-lines file in which no object has a ``wanted`` key (option ->
    key; objects may leave a key out, but one no object has is a misnamed
    column), or a file with no usable row (the hint for its most common reason
    from ``hints``, else ``hint``). ``present``: the wanted keys the chunks saw."""
    if tally.read == 0:
        raise DatasetError(f"{path} has no rows after its header")
    if fmt == JSONL:
        seen = list(dict.fromkeys([*first_keys(path), *sorted(present)]))
        require_columns(path, seen, wanted, "its objects have the keys")
    if tally.kept == 0:
        report = tally.report()
        worst = max(report.skipped, key=lambda r: report.skipped[r])
        raise DatasetError(f"no usable row: {report.summary()}", hint=hints.get(worst, hint))


# -- CSV and TSV ---------------------------------------------------------------------
def csv_rows(
    path: Path,
    fmt: str,
    columns: Sequence[str],
    *,
    exact: Sequence[str] = (),
    dtypes: Mapping[str, Any] | None = None,
    empty_is_na: Sequence[str] = (),
    chunk_rows: int | None = None,
) -> Iterator[Rows]:
    """The named columns, chunk by chunk, as pandas dtypes (default: inferred per chunk).

    ``exact`` columns (ids) come as their text (object), or as integers where
    that is exact: when no field of the file could be an integer written another
    way (``007``, ``+7``, `` 7``, ``-0``), an all-integer chunk of an id column
    is read as int64, 4x faster to parse and to factorise than text. An empty
    field stays "" except in ``empty_is_na`` columns, where it is NaN; nothing
    else (no "NA", "null") is ever taken for missing.
    """
    sep = SEPARATORS[fmt]
    names = header(path, fmt)
    counts, lines, ints_exact = _field_counts(path, sep)
    as_text = dict.fromkeys(exact, object)
    options: dict[str, Any] = {
        "sep": sep,
        "keep_default_na": False,
        "na_values": {c: [""] for c in empty_is_na},
        "skip_blank_lines": False,
        "index_col": False,  # never take a first column for the index (rows longer than the header)
        "encoding": "utf-8",
        "encoding_errors": "replace",  # bad bytes become U+FFFD, which the id rule refuses
        "compression": "gzip" if is_gzip(path) else None,
        "engine": "c",
    }
    reader = pd.read_csv(
        path,
        usecols=list(columns),
        dtype={**(dtypes or {}), **({} if ints_exact else as_text)},
        chunksize=chunk_rows or CHUNK_ROWS,
        **options,
    )
    width = len(names)
    start = 0
    aligned = True
    chunks = iter(reader)
    try:
        while True:
            try:
                chunk = next(chunks)
            except StopIteration:
                break
            except (pd.errors.ParserError, ValueError):
                # pandas refuses a last chunk of nothing but blank lines (a file that
                # ends in blank lines just after a whole number of chunks): they are
                # blank_line rows, and the end of the file.
                rest = counts[start:]
                if not aligned or len(rest) == 0 or rest.any():
                    raise
                chunk = pd.DataFrame({c: [""] * len(rest) for c in columns}, dtype=object)
            n = len(chunk)
            end = start + n
            if any(not _exact(chunk[c]) for c in exact):
                # Inference made floats or bools of an id column (all "1.5", or
                # "True"): not its text. Read this chunk again as text; rows are
                # lines here (ints_exact needs a file without quotes). Rare, so the
                # per-line skip test is fine.
                chunk = pd.read_csv(
                    path,
                    usecols=list(columns),
                    dtype={**(dtypes or {}), **as_text},
                    skiprows=_after(start),
                    nrows=n,
                    **options,
                )
            if aligned and end > len(counts):
                aligned = _misaligned(path, end, len(counts))
            if aligned:
                fields = counts[start:end]
                row_lines = np.arange(start + 2, end + 2) if lines is None else lines[start:end]
                problems = np.zeros(n, dtype=np.int8)
                problems[fields < width] = SHORT
                problems[fields > width] = LONG
                problems[fields == 0] = BLANK
            else:
                row_lines = np.arange(start + 2, end + 2)
                problems = np.zeros(n, dtype=np.int8)
            yield Rows(row_lines, problems, {c: chunk[c] for c in columns})
            start = end
    except (pd.errors.ParserError, ValueError, OSError, EOFError) as exc:
        raise DatasetError(f"{path}: unreadable after row {start:,}: {str(exc).strip()}") from exc
    finally:
        reader.close()
    if aligned and start != len(counts):
        _misaligned(path, start, len(counts))


def _after(rows: int) -> Callable[[int], bool]:
    """pandas' skiprows test for "skip the first ``rows`` data lines, keep the header"."""

    def skip(line: int) -> bool:
        return 0 < line <= rows

    return skip


def _exact(values: pd.Series) -> bool:
    """Whether a column read for its text holds it: text, or integers (see csv_rows)."""
    if pd.api.types.is_bool_dtype(values):
        return False
    return (
        values.dtype == object
        or pd.api.types.is_string_dtype(values)
        or pd.api.types.is_integer_dtype(values)
    )


def _misaligned(path: Path, rows: int, records: int) -> bool:
    log.warning(
        "%s: pandas read %d rows where the field count found %d records; "
        "line numbers are row numbers + 1 from here and short/long rows are not told apart",
        path,
        rows,
        records,
    )
    return False


def _field_counts(path: Path, sep: str) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """Fields per data record (0: a blank line); each record's line, None when every
    record is one line (line = record number + 2, after the header); and whether
    every integer-looking field is written as Python writes the integer."""
    plain = _plain_counts(path, ord(sep))
    if plain is not None:
        counts, ints_exact = plain
        return counts[1:], None, ints_exact
    return (*_quoted_counts(path, sep), False)


def _plain_counts(path: Path, sep: int) -> tuple[np.ndarray, bool] | None:
    """Fields per line (header included) by counting separators, and whether integers
    are exact (see _count_block); None if a quote character appears."""
    parts: list[np.ndarray] = []
    ints_exact = True
    carry = b""
    with open_binary(path) as fh:
        while True:
            block = fh.read(_BLOCK)
            if not block:
                break
            block = carry + block
            if b'"' in block:
                return None
            cut = block.rfind(b"\n") + 1
            carry = block[cut:]
            if cut:
                fields, exact = _count_block(block[:cut], sep)
                parts.append(fields)
                ints_exact &= exact
    if carry:
        fields, exact = _count_block(carry + b"\n", sep)
        parts.append(fields)
        ints_exact &= exact
    if not parts:
        return np.zeros(0, dtype=np.int32), ints_exact
    return np.concatenate(parts), ints_exact


_DIGIT0, _DIGIT9 = ord("0"), ord("9")
_PLUS, _MINUS, _SPACE, _TAB, _CR = ord("+"), ord("-"), ord(" "), ord("\t"), ord("\r")


def _count_block(block: bytes, sep: int) -> tuple[np.ndarray, bool]:
    """Fields per line of a block of whole lines (ending in newline), and whether no
    field is an integer pandas would read but Python would write otherwise: one
    starting with "+", a blank, "-0" or a 0 before a digit ("007"), or ending in a
    blank. Any such field anywhere makes every id column text (safe, slower)."""
    buf = np.frombuffer(block, dtype=np.uint8)
    ends = np.flatnonzero(buf == 10)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    seps = np.flatnonzero(buf == sep)
    fields = (np.searchsorted(seps, ends) - np.searchsorted(seps, starts) + 1).astype(np.int32)
    length = ends - starts
    # A blank line, "\n" or "\r\n". (buf[starts] is in range: starts <= ends.)
    fields[(length == 0) | ((length == 1) & (buf[starts] == _CR))] = 0
    # Field starts: line starts and the byte after each separator (in range: a
    # block ends with a newline). The byte after them, clipped at the end.
    first_at = np.concatenate([starts, seps + 1])
    first = buf[first_at]
    second = buf[np.minimum(first_at + 1, len(buf) - 1)]
    blanks = (first == _SPACE) | ((first == _TAB) & (sep != _TAB))
    lossy = (first == _PLUS) | blanks | ((first == _MINUS) & (second == _DIGIT0))
    lossy |= (first == _DIGIT0) & (second >= _DIGIT0) & (second <= _DIGIT9)
    # Field ends: the byte before each separator and before each newline (or "\r\n").
    line_last = np.maximum(ends - 1, 0)
    line_last = np.where(buf[line_last] == _CR, np.maximum(line_last - 1, 0), line_last)
    last = buf[np.concatenate([line_last, np.maximum(seps - 1, 0)])]
    lossy_end = (last == _SPACE) | ((last == _TAB) & (sep != _TAB))
    return fields, not (lossy.any() or lossy_end.any())


def _quoted_counts(path: Path, sep: str) -> tuple[np.ndarray, np.ndarray]:
    counts = array("i")
    lines = array("q")
    with open_binary(path) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")
        reader = csv.reader(text, delimiter=sep)
        try:
            next(reader, None)
            end = reader.line_num
            for record in reader:
                lines.append(end + 1)
                counts.append(len(record))
                end = reader.line_num
        except csv.Error as exc:
            raise DatasetError(f"{path}, line {reader.line_num}: malformed row: {exc}") from None
    return np.frombuffer(counts, dtype=np.int32), np.frombuffer(lines, dtype=np.int64)


# -- JSON lines ----------------------------------------------------------------------
_NOTHING: dict[str, Any] = {}


def jsonl_rows(path: Path, keys: Sequence[str], *, chunk_rows: int | None = None) -> Iterator[Rows]:
    """The values of ``keys`` in each line's object (None where absent), chunk by chunk."""
    loads = orjson.loads
    decode_error = orjson.JSONDecodeError
    with open_binary(path) as fh:
        line = 0
        objs: list[dict[str, Any]] = []
        problems = array("b")
        try:
            for raw in fh:
                line += 1
                if line == 1:
                    raw = raw.removeprefix(_BOM)
                raw = raw.strip()
                problem = 0
                obj: Any = _NOTHING
                if not raw:
                    problem = BLANK
                else:
                    try:
                        obj = loads(raw)
                    except decode_error:
                        # Invalid UTF-8 in a string: decode as the CSV reader does
                        # (U+FFFD, refused by the id rule) rather than lose the row.
                        try:
                            obj = loads(raw.decode("utf-8", "replace"))
                        except decode_error:
                            obj, problem = _NOTHING, NOT_JSON
                    if problem == 0 and type(obj) is not dict:
                        obj, problem = _NOTHING, NOT_OBJECT
                objs.append(obj)
                problems.append(problem)
                if len(objs) >= (chunk_rows or CHUNK_ROWS):
                    yield _json_chunk(objs, problems, line, keys)
                    objs, problems = [], array("b")
        except (OSError, EOFError) as exc:
            raise DatasetError(f"{path}, line {line + 1}: unreadable: {exc}") from exc
        if objs:
            yield _json_chunk(objs, problems, line, keys)


def _json_chunk(
    objs: list[dict[str, Any]], problems: array[int], last_line: int, keys: Sequence[str]
) -> Rows:
    n = len(objs)
    return Rows(
        lines=np.arange(last_line - n + 1, last_line + 1, dtype=np.int64),
        problems=np.frombuffer(problems, dtype=np.int8).copy(),
        columns={k: pd.Series([o.get(k) for o in objs], dtype=object) for k in keys},
        json=True,
        present=frozenset(k for k in keys if any(k in o for o in objs)),
    )


def first_keys(path: Path, *, sample: int = 1000) -> list[str]:
    """Keys seen in the first ``sample`` objects of a JSON-lines file, in first-seen order."""
    seen: dict[str, None] = {}
    with open_binary(path) as fh:
        for i, raw in enumerate(fh):
            if i >= sample:
                break
            try:
                obj = orjson.loads(raw.removeprefix(_BOM) if i == 0 else raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                seen.update(dict.fromkeys(obj))
    return list(seen)


__all__ = [
    "CSV",
    "FORMATS",
    "JSONL",
    "STRUCTURE",
    "TSV",
    "Rows",
    "check_file",
    "check_read",
    "csv_rows",
    "first_keys",
    "header",
    "infer_format",
    "is_gzip",
    "jsonl_rows",
    "open_binary",
    "require_columns",
]
