"""The item index: unit vectors in FAISS, a manifest, and its on-disk form.

One index lives in one directory::

    index.faiss     faiss.write_index of an IndexFlatIP over L2-normalised float32 rows
    items.json      {"ids": [...row order...], "titles": {id: title}, "first_ms": [...]}
                    (titles of indexed items; first_ms, in row order, the time of each
                    item's first click in the build, absent in versions built before it)
    catalogue.json  core.catalogue.Catalogue.to_json(): every catalogued item, indexed
                    or not (titles, categories, tags); absent in versions built before
                    it existed, whose catalogue is items.json's titles
    ranker.json     the learned ranker (serving.ranker: its pool and LightGBM model), when the
                    build trained one (evaluation.ranker); part of the version's digest
    linear.npz      the session linear model's rows (offline.linear: items, codes, weights),
                    when the build fitted one; part of the version's digest
    manifest.json   Manifest.to_dict()

Published versions (see ``publish``) live under ``<artifacts>/index/<version>/``
with ``<artifacts>/index/CURRENT`` naming the one to serve.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

import faiss
import numpy as np

from core.catalogue import Catalogue
from core.errors import IndexNotFound
from offline.content import ContentIndex, content_features
from offline.linear import LinearRows
from offline.manifest import Manifest

__all__ = ["ItemIndex", "Manifest", "current_version", "load_current", "publish"]

log = logging.getLogger("streamrec.offline")

INDEX_FILE = "index.faiss"
ITEMS_FILE = "items.json"
CATALOGUE_FILE = "catalogue.json"
RANKER_FILE = "ranker.json"
LINEAR_FILE = "linear.npz"
MANIFEST_FILE = "manifest.json"
BUILD_HINT = "run `streamrec build-index`"
INDEX_SUBDIR = "index"
CURRENT_FILE = "CURRENT"
_VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,127}$")
# A temp dir this old is the leftover of a killed publisher, not one in progress
# (a build of ml-latest-small writes in well under a second).
_STALE_TMP_S = 3600.0

# Neighbour lists are cached at this length at least, so calls with different k
# (10 for the API, 50 for candidate generation) share one cache entry.
MIN_CACHED_NEIGHBOURS = 50
# An entry is the ready-made answer: ~50 (item, cosine) tuples, ~5 KB with
# object overhead (the item strings are shared with the id list), so 20k
# entries cost ~100 MB at most: a MovieLens-sized catalogue fits whole, anything
# larger keeps its hot items. Ready-made because converting arrays to tuples on
# every call was ~11% of the API's CPU (py-spy). Tuples holding only atomic
# values are untracked by CPython's cyclic GC, so a full cache adds nothing to
# a full collection's work.
CACHE_MAX_ENTRIES = 20_000

Neighbours = tuple[tuple[str, float], ...]


class ItemIndex:
    """Exact cosine neighbours over item vectors, with a bounded per-item cache.

    Safe to share between threads (FastAPI's threadpool): FAISS searches on a
    flat index are read-only, and the cache is guarded by a lock.
    """

    manifest: Manifest

    def __init__(
        self,
        item_ids: list[str],
        vectors: np.ndarray,
        index: faiss.Index,
        catalogue: Catalogue,
        manifest: Manifest,
        ranker_model: str | None = None,
        linear: LinearRows | None = None,
        first_ms: Sequence[int] | None = None,
    ) -> None:
        # Use from_vectors or load; this only wires validated parts together.
        self.manifest = manifest
        # item -> the time (ms) of its first click in the build: the candidate's
        # age for the learned ranker (serving.ranker); empty for older versions.
        self.first_seen: Mapping[str, int] = MappingProxyType(
            {} if first_ms is None else dict(zip(item_ids, map(int, first_ms), strict=True))
        )
        # The learned ranker's model as text (serving.ranker reads it), or None.
        self.ranker_model = ranker_model
        # The version's directory when loaded from one (serving.ranker keeps the
        # trees it compiles from the model there), else None.
        self.directory: Path | None = None
        # The session linear model's rows (offline.linear), or None.
        self.linear = linear
        self._ids = item_ids
        self._rows = {item_id: row for row, item_id in enumerate(item_ids)}
        self._vectors = vectors
        self._index = index
        self._catalogue = catalogue
        # The titles of indexed items: what search offers (every hit can be looked up).
        self._titles = {i: t for i in item_ids if (t := catalogue.title(i)) is not None}
        self._nonzero = np.linalg.norm(vectors, axis=1) > 0
        self._search_params = self._exclude_rows(np.flatnonzero(~self._nonzero))
        # row -> (neighbours best first, whether that is every neighbour there is)
        self._cache: OrderedDict[int, tuple[Neighbours, bool]] = OrderedDict()
        self._lock = threading.Lock()

    def _exclude_rows(self, rows: np.ndarray) -> faiss.SearchParameters | None:
        # Zero vectors score 0 against everything, which would rank them above
        # every negatively correlated item; keep them out of the search itself
        # so a top-k is always k real neighbours.
        if len(rows) == 0:
            return None
        # The params hold raw pointers to the selectors: keep them alive with self.
        self._excluded = faiss.IDSelectorBatch(rows.astype(np.int64))
        self._selector = faiss.IDSelectorNot(self._excluded)
        params = faiss.SearchParameters()
        params.sel = self._selector
        return params

    @classmethod
    def from_vectors(
        cls,
        item_ids: Sequence[str],
        vectors: np.ndarray,
        *,
        catalogue: Catalogue | None = None,
        titles: Mapping[str, str] | None = None,
        method: str = "ppmi-svd",
        params: Mapping[str, Any] | None = None,
        source: str = "",
        before_ts: int | None = None,
        ranker_model: str | None = None,
        linear: LinearRows | None = None,
        first_ms: Sequence[int] | None = None,
    ) -> ItemIndex:
        """Index ``vectors[i]`` under ``item_ids[i]``; rows are L2-normalised here.

        ``catalogue`` is kept whole, indexed items or not. ``titles`` (instead of a
        catalogue) keeps the titles of indexed items only. ``ranker_model``: a
        learned ranker's model (``serving.ranker.Ranker.to_text``) that
        travels with this version; ``linear`` likewise the session linear
        model's rows (``offline.linear``). ``first_ms[i]``: the time (epoch ms)
        of ``item_ids[i]``'s first click in the build.
        """
        if catalogue is not None and titles is not None:
            raise ValueError("give a catalogue or titles, not both")
        if first_ms is not None and len(first_ms) != len(item_ids):
            raise ValueError(f"{len(first_ms)} first-click times for {len(item_ids)} item ids")
        ids = [str(i) for i in item_ids]
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[0] != len(ids) or vecs.shape[1] < 1:
            raise ValueError(f"vectors of shape {vecs.shape} do not match {len(ids)} item ids")
        if len(set(ids)) != len(ids):
            raise ValueError("item ids are not unique")
        if not np.isfinite(vecs).all():
            raise ValueError("vectors contain NaN or infinity")
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        vecs = (vecs / np.where(norms > 0, norms, 1.0)).astype(np.float32)
        params_dict = dict(params or {})
        try:
            params_json = json.dumps(params_dict, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"params must be JSON-serialisable: {exc}") from None
        if catalogue is None:
            known = set(ids)
            catalogue = Catalogue.from_titles(
                {str(k): str(v) for k, v in (titles or {}).items() if str(k) in known}
            )

        digest = hashlib.sha256()
        digest.update("\n".join(ids).encode())
        digest.update(vecs.tobytes())
        digest.update(catalogue.to_json())
        digest.update(json.dumps([method, params_json, source, before_ts]).encode())
        if ranker_model is not None:
            digest.update(ranker_model.encode())
        if linear is not None:
            for array in linear.arrays().values():
                digest.update(array.tobytes())
        if first_ms is not None:
            digest.update(np.asarray(first_ms, dtype=np.int64).tobytes())
        now = datetime.now(UTC)
        manifest = Manifest(
            version=f"{now:%Y%m%dT%H%M%SZ}-{digest.hexdigest()[:6]}",
            item_count=len(ids),
            dim=int(vecs.shape[1]),
            built_at=now.isoformat(timespec="microseconds"),
            method=method,
            params=params_dict,
            source=source,
            before_ts=before_ts,
        )
        # Exact search: a query is one pass over n x d floats (1e5 x 64 ≈ 6.4M
        # multiply-adds, ~1-2 ms). Past a few hundred thousand items, or with the
        # per-item cache cold under load, IndexHNSWFlat would pay for its build time.
        index = faiss.IndexFlatIP(manifest.dim)
        index.add(vecs)
        return cls(ids, vecs, index, catalogue, manifest, ranker_model, linear, first_ms)

    @property
    def version(self) -> str:
        return self.manifest.version

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._rows

    def __len__(self) -> int:
        return len(self._ids)

    def title(self, item_id: str) -> str | None:
        """The catalogue's title of any catalogued item, indexed or not."""
        return self._catalogue.title(item_id)

    @property
    def titles(self) -> Mapping[str, str]:
        """The catalogue's titles (item id -> title) of the indexed items."""
        return MappingProxyType(self._titles)

    @property
    def catalogue(self) -> Catalogue:
        """Everything known about the items (empty when the build had no catalogue)."""
        return self._catalogue

    @cached_property
    def content(self) -> ContentIndex:
        """Content neighbours over the catalogue's categories and tags (offline.content),
        built on first use; an item not in this index counts as cold."""
        rows = self._rows
        return ContentIndex(content_features(self._catalogue), cold=lambda item: item not in rows)

    def linear_rows(self, item_ids: Sequence[str], k: int) -> dict[str, list[tuple[str, float]]]:
        """The linear model's first ``k`` (item, weight) of each item that has a
        row (none without a model)."""
        return {} if self.linear is None else self.linear.rows(item_ids, k)

    def similar(self, item_id: str, k: int) -> list[tuple[str, float]]:
        """Up to k (item, cosine) pairs, best first; never the item itself or a zero vector."""
        return self.similar_many([item_id], k).get(item_id, [])

    def similar_many(self, item_ids: Sequence[str], k: int) -> dict[str, list[tuple[str, float]]]:
        """``similar`` for many items, with one FAISS search for the uncached ones."""
        out: dict[str, list[tuple[str, float]]] = {item_id: [] for item_id in item_ids}
        if k <= 0:
            return out
        want = max(k, MIN_CACHED_NEIGHBOURS)
        hits: dict[int, tuple[Neighbours, bool]] = {}
        misses: list[int] = []
        with self._lock:
            for item_id in out:
                row = self._rows.get(item_id)
                if row is None or not self._nonzero[row]:
                    continue
                entry = self._cache.get(row)
                # An entry answers k if it is long enough or already holds every neighbour.
                if entry is not None and (len(entry[0]) >= k or entry[1]):
                    self._cache.move_to_end(row)
                    hits[row] = entry
                else:
                    misses.append(row)
        if misses:
            hits.update(self._search(misses, want))
        for item_id in out:
            row = self._rows.get(item_id)
            if row is not None and row in hits:
                out[item_id] = list(hits[row][0][:k])
        return out

    def _search(self, rows: list[int], want: int) -> dict[int, tuple[Neighbours, bool]]:
        # One more than wanted, because the query item finds itself.
        n_search = min(want + 1, len(self._ids))
        _, labels = self._index.search(self._vectors[rows], n_search, params=self._search_params)
        found: dict[int, tuple[Neighbours, bool]] = {}
        ids = self._ids
        for row, row_labels in zip(rows, labels, strict=True):
            # -1 pads a result shorter than asked (excluded zero rows).
            keep = (row_labels >= 0) & (row_labels != row)
            neighbours = row_labels[keep][:want].astype(np.int32)
            # Re-score the few candidates with one fixed numpy product: FAISS may
            # take another code path for a batch than for one query (BLAS above
            # its distance_compute_blas_threshold), and the last bits, so the
            # order of near-ties, must not depend on who asked alongside.
            sims = self._vectors[neighbours] @ self._vectors[row]
            order = np.lexsort((neighbours, -sims))
            neighbours = neighbours[order]
            # Float rounding can put a unit-vector product a hair above 1.
            sims = np.clip(sims[order], -1.0, 1.0)
            exhaustive = len(neighbours) < want
            pairs = zip(neighbours.tolist(), sims.tolist(), strict=True)
            found[row] = (tuple((ids[n], s) for n, s in pairs), exhaustive)
        with self._lock:
            for row, entry in found.items():
                self._cache[row] = entry
                self._cache.move_to_end(row)
            while len(self._cache) > CACHE_MAX_ENTRIES:
                self._cache.popitem(last=False)
        return found

    def save(self, directory: Path) -> None:
        """Write the files into ``directory`` (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self._index, str(directory / INDEX_FILE))
        # items.json keeps the titles too, so a reader older than catalogue.json
        # can still serve (and roll back to) this version.
        items: dict[str, Any] = {"ids": self._ids, "titles": self._titles}
        if self.first_seen:
            items["first_ms"] = [self.first_seen[i] for i in self._ids]
        (directory / ITEMS_FILE).write_text(json.dumps(items, ensure_ascii=False))
        (directory / CATALOGUE_FILE).write_bytes(self._catalogue.to_json())
        if self.ranker_model is not None:
            (directory / RANKER_FILE).write_text(self.ranker_model)
        if self.linear is not None:
            arrays = self.linear.arrays()
            with open(directory / LINEAR_FILE, "wb") as f:
                np.savez(f, items=arrays["items"], codes=arrays["codes"], weights=arrays["weights"])
        # Manifest last: a directory with a manifest has everything before it.
        (directory / MANIFEST_FILE).write_text(json.dumps(self.manifest.to_dict(), indent=2))

    @classmethod
    def load(cls, directory: Path) -> ItemIndex:
        """Read an index written by ``save``; IndexNotFound if absent, partial or corrupt."""
        directory = Path(directory)
        paths = [directory / name for name in (INDEX_FILE, ITEMS_FILE, MANIFEST_FILE)]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise IndexNotFound(
                f"no complete index in {directory} (missing {', '.join(missing)})", hint=BUILD_HINT
            )
        try:
            manifest = Manifest.from_dict(json.loads(paths[2].read_text()))
            items = json.loads(paths[1].read_text())
            ids, titles = items["ids"], items["titles"]
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise ValueError("items.json ids must be a list of strings")
            if not isinstance(titles, dict):
                raise ValueError("items.json titles must be an object")
            first_ms = items.get("first_ms")
            if first_ms is not None and (
                not isinstance(first_ms, list)
                or len(first_ms) != len(ids)
                or not all(isinstance(t, int) and not isinstance(t, bool) for t in first_ms)
            ):
                raise ValueError("items.json first_ms must be one integer per id")
            catalogue_file = directory / CATALOGUE_FILE
            if catalogue_file.is_file():
                catalogue = Catalogue.from_json(catalogue_file.read_bytes())
            else:  # a version built before catalogue.json: titles only
                catalogue = Catalogue.from_titles(titles)
            ranker_file = directory / RANKER_FILE
            ranker_model = ranker_file.read_text() if ranker_file.is_file() else None
            linear_file = directory / LINEAR_FILE
            linear = None
            if linear_file.is_file():
                with np.load(linear_file, allow_pickle=False) as arrays:
                    linear = LinearRows.from_arrays(dict(arrays))
            index = faiss.read_index(str(paths[0]))
            _check_consistent(manifest, ids, index)
            vectors = index.reconstruct_n(0, index.ntotal)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, zipfile.BadZipFile) as exc:
            # faiss reports a corrupt file as RuntimeError; json as ValueError;
            # numpy a truncated npz as BadZipFile.
            raise IndexNotFound(
                f"index in {directory} is unreadable: {exc}", hint=BUILD_HINT
            ) from exc
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        loaded = cls(ids, vectors, index, catalogue, manifest, ranker_model, linear, first_ms)
        loaded.directory = directory
        return loaded


def _check_consistent(manifest: Manifest, ids: list[str], index: faiss.Index) -> None:
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise ValueError("index.faiss is not an inner-product index")
    if not (manifest.item_count == len(ids) == index.ntotal):
        raise ValueError(
            f"item counts disagree: manifest {manifest.item_count}, "
            f"items.json {len(ids)}, index.faiss {index.ntotal}"
        )
    if manifest.dim != index.d:
        raise ValueError(f"dims disagree: manifest {manifest.dim}, index.faiss {index.d}")
    if len(set(ids)) != len(ids):
        raise ValueError("items.json ids are not unique")


def publish(index: ItemIndex, artifacts_dir: Path, *, keep: int = 3) -> Path:
    """Make ``index`` the current version under ``artifacts_dir/index`` and return its dir.

    Readers never see a half-written version: files go to a temp dir that is
    renamed into place, then CURRENT is replaced by rename as well. The newest
    ``keep`` versions (by build time) are kept, so a reader that read CURRENT
    just before the switch still finds its version when keep >= 2; the current
    version is never deleted whatever its age.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    root = Path(artifacts_dir) / INDEX_SUBDIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / index.version
    if not final.is_dir():
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
        try:
            index.save(tmp)
            os.replace(tmp, final)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            # The version name holds a content hash, so a dir that appeared
            # meanwhile (a concurrent publish of the same build) is this index.
            if not (final / MANIFEST_FILE).is_file():
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    _write_current(root, index.version)
    _prune(root, keep, protect={index.version})
    return final


def current_version(artifacts_dir: Path) -> str | None:
    """The published version name, or None if nothing is published (one small read)."""
    try:
        text = (Path(artifacts_dir) / INDEX_SUBDIR / CURRENT_FILE).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not _VERSION_RE.match(text):
        log.warning("ignoring %s: %r is not a version name", CURRENT_FILE, text[:80])
        return None
    return text


def load_current(artifacts_dir: Path) -> ItemIndex:
    """Load the published version; IndexNotFound (with a hint) if there is none."""
    root = Path(artifacts_dir) / INDEX_SUBDIR
    version = current_version(artifacts_dir)
    if version is None:
        raise IndexNotFound(f"no published index under {root}", hint=BUILD_HINT)
    try:
        return ItemIndex.load(root / version)
    except IndexNotFound:
        # A publish may have switched CURRENT between our read and the load;
        # one retry on the new name is enough, as pruning keeps the newest.
        newer = current_version(artifacts_dir)
        if newer is None or newer == version:
            raise
        return ItemIndex.load(root / newer)


def _write_current(root: Path, version: str) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=".CURRENT-", dir=root)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(version + "\n")
            f.flush()
            # Durable before visible: after a crash CURRENT is old or new, never empty.
            os.fsync(f.fileno())
        os.replace(tmp_name, root / CURRENT_FILE)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def _prune(root: Path, keep: int, protect: set[str]) -> None:
    current = current_version(root.parent)
    if current is not None:
        # Another publisher may have switched CURRENT since we did: keep its choice too.
        protect = protect | {current}
    versions: list[tuple[str, str]] = []
    now = time.time()
    for entry in root.iterdir():
        if entry.name.startswith("."):
            if entry.is_dir() and now - entry.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(entry, ignore_errors=True)
            continue
        if entry.is_dir():
            versions.append((_built_at(entry), entry.name))
    # Newest first by build time; the version name breaks ties. An unreadable
    # manifest sorts oldest, so broken versions are the first to go.
    versions.sort(reverse=True)
    for _, name in versions[keep:]:
        if name not in protect:
            shutil.rmtree(root / name, ignore_errors=True)


def _built_at(version_dir: Path) -> str:
    try:
        built = json.loads((version_dir / MANIFEST_FILE).read_text())["built_at"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return built if isinstance(built, str) else ""
