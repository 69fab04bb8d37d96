"""Find a MovieLens dataset on disk, or download and verify it from GroupLens.

Lookup order, first hit wins::

    path                      an explicit dataset directory or ratings file
    data_dir / NAME           data_dir defaults to $STREAMREC_DATA_DIR
    cache_dir / NAME          cache_dir defaults to ~/.cache/streamrec/datasets
    {base_url}/NAME.zip       downloaded into cache_dir (unless download=False)

A download is trusted only after it passes every check we can make: the MD5
GroupLens publishes beside the zip (when the server has one), the zip's own
CRCs (``testzip``), the expected ratings file being present, and the layout
detection succeeding on the extracted copy. Extraction goes to a temporary
directory that is renamed into place, so an interrupted download never leaves
a half dataset in the cache that the next run would trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import httpx

from core.errors import DatasetError
from producer.movielens import ML_100K, ML_DAT, ML_LATEST, RATINGS_FILES, detect_layout
from producer.progress import Progress

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens"
DATA_DIR_ENV = "STREAMREC_DATA_DIR"
DEFAULT_CACHE = Path("~/.cache/streamrec/datasets")
# Connect fast, but let a slow mirror trickle: ml-25m is ~250 MB.
TIMEOUT = httpx.Timeout(60.0, connect=10.0)
_CHUNK = 1 << 20
_MD5_RE = re.compile(rb"\b([0-9a-fA-F]{32})\b")


@dataclass(frozen=True)
class KnownDataset:
    layout: str
    # The top-level folder inside the zip; it differs from the name for ml-10m.
    folder: str


KNOWN_DATASETS: dict[str, KnownDataset] = {
    "ml-latest-small": KnownDataset(ML_LATEST, "ml-latest-small"),
    "ml-100k": KnownDataset(ML_100K, "ml-100k"),
    "ml-1m": KnownDataset(ML_DAT, "ml-1m"),
    "ml-10m": KnownDataset(ML_DAT, "ml-10M100K"),
    "ml-20m": KnownDataset(ML_LATEST, "ml-20m"),
    "ml-25m": KnownDataset(ML_LATEST, "ml-25m"),
    "ml-latest": KnownDataset(ML_LATEST, "ml-latest"),
}


def _hint(name: str) -> str:
    return (
        f"download {name}.zip from grouplens.org/datasets/movielens, unzip it and pass "
        f"--data-dir (the folder holding {name}/) or set {DATA_DIR_ENV}"
    )


def _usable(directory: Path) -> bool:
    try:
        detect_layout(directory)
    except DatasetError:
        return False
    return directory.is_dir()


def _candidates(base: Path, name: str) -> list[Path]:
    names = [name]
    known = KNOWN_DATASETS.get(name)
    if known is not None and known.folder != name:
        names.append(known.folder)  # a copy unzipped by hand keeps the zip's folder name
    return [base / n for n in names]


def resolve_dataset(
    name: str = "ml-latest-small",
    *,
    path: Path | None = None,
    data_dir: Path | None = None,
    download: bool = True,
    cache_dir: Path | None = None,
    base_url: str = GROUPLENS_URL,
) -> Path:
    """The directory holding dataset ``name``; downloads it into the cache if needed."""
    if path is not None:
        path = Path(path).expanduser()
        if not path.exists():
            raise DatasetError(f"dataset path {path} does not exist", hint=_hint(name))
        detect_layout(path)  # fail here, with the layout hint, not later in a loader
        return path if path.is_dir() else path.parent

    if data_dir is None and os.environ.get(DATA_DIR_ENV):
        data_dir = Path(os.environ[DATA_DIR_ENV])
    cache = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE).expanduser()
    bases = [Path(data_dir).expanduser()] if data_dir is not None else []
    bases.append(cache)
    for base in bases:
        for candidate in _candidates(base, name):
            if _usable(candidate):
                return candidate

    where = ", ".join(str(p) for p in bases)
    if name not in KNOWN_DATASETS:
        raise DatasetError(
            f"dataset {name!r} not found in {where} and not a known MovieLens release "
            f"({', '.join(KNOWN_DATASETS)})",
            hint=_hint(name),
        )
    if not download:
        raise DatasetError(f"dataset {name!r} not found in {where}", hint=_hint(name))
    return _download(name, KNOWN_DATASETS[name], cache, base_url.rstrip("/"))


def _fetch_md5(client: httpx.Client, url: str) -> str | None:
    """The published MD5 of ``url``, or None if the server publishes none."""
    response = client.get(url + ".md5")
    if response.status_code != 200:
        return None
    # GroupLens files read "MD5 (ml-1m.zip) = <hex>"; md5sum writes "<hex>  file".
    match = _MD5_RE.search(response.content)
    return match.group(1).decode().lower() if match else None


def _fetch_zip(client: httpx.Client, url: str, target: Path) -> str:
    """Stream ``url`` into ``target``; return the MD5 of what arrived."""
    digest = hashlib.md5(usedforsecurity=False)
    with client.stream("GET", url) as response:
        response.raise_for_status()
        size = response.headers.get("content-length")
        bar = Progress(f"download {url.rsplit('/', 1)[-1]}", int(size) if size else None, unit="B")
        done = 0
        with open(target, "wb") as out:
            for chunk in response.iter_bytes(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                bar.update(done)
        bar.close()
    return digest.hexdigest()


def _verify_and_extract(archive: Path, name: str, known: KnownDataset, into: Path) -> Path:
    """Check the zip and extract it under ``into``; return the dataset folder in it."""
    expected = f"{known.folder}/{RATINGS_FILES[known.layout]}"
    try:
        with zipfile.ZipFile(archive) as zf:
            broken = zf.testzip()
            if broken is not None:
                raise DatasetError(f"{name}.zip is corrupt: CRC mismatch in {broken}")
            if expected not in zf.namelist():
                raise DatasetError(f"{name}.zip does not contain {expected}")
            # extractall drops absolute paths and ".." parts, so members stay under `into`.
            zf.extractall(into)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as exc:
        raise DatasetError(f"{name}.zip is not a valid zip archive: {exc}") from exc
    except zlib.error as exc:
        # A damaged deflate stream can fail in zlib before the CRC check sees it.
        raise DatasetError(f"{name}.zip is corrupt: {exc}") from exc
    except OSError as exc:
        raise DatasetError(f"could not extract {name}.zip into {into}: {exc}") from exc
    folder = into / known.folder
    layout = detect_layout(folder)
    if layout != known.layout:
        raise DatasetError(f"{name}.zip holds the {layout} layout, expected {known.layout}")
    return folder


def _download(name: str, known: KnownDataset, cache: Path, base_url: str) -> Path:
    url = f"{base_url}/{name}.zip"
    target = cache / name
    cache.mkdir(parents=True, exist_ok=True)
    # Everything goes into one temp dir beside the cache entry (same filesystem,
    # so the final os.replace is an atomic rename) and is removed whatever happens.
    work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache))
    try:
        archive = work / f"{name}.zip"
        try:
            with httpx.Client(timeout=TIMEOUT, follow_redirects=True) as client:
                published = _fetch_md5(client, url)
                actual = _fetch_zip(client, url, archive)
        except httpx.HTTPStatusError as exc:
            raise DatasetError(
                f"download of {url} failed: HTTP {exc.response.status_code}", hint=_hint(name)
            ) from exc
        except httpx.HTTPError as exc:
            raise DatasetError(
                f"could not download {url}: {exc or type(exc).__name__}", hint=_hint(name)
            ) from exc
        if published is None:
            print(f"note: no {name}.zip.md5 published at {base_url}; checked the zip itself only",
                  file=sys.stderr)  # fmt: skip
        elif published != actual:
            raise DatasetError(
                f"{name}.zip failed verification: MD5 {actual}, published {published}",
                hint=_hint(name),
            )
        try:
            folder = _verify_and_extract(archive, name, known, work / "extract")
        except DatasetError as exc:
            raise DatasetError(str(exc), hint=_hint(name)) from exc
        try:
            os.replace(folder, target)
        except OSError:
            # Another process finished the same download first: keep theirs if it works.
            if not _usable(target):
                raise
        return target
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(work)
