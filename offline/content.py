"""Content neighbours: items alike by their catalogue categories and tags.

The only signal for an item nobody has clicked yet: co-occurrence needs clicks
and the embedding needs an index build after them. Each item is a TF-IDF
vector over its features (``c:<category>``, ``t:<tag>``; a feature every item
has weighs nothing, a rare tag a lot), L2-normalised; neighbours are the
largest cosines, equal cosines by item id. A query is one sparse row times the
feature matrix, so it touches only the items sharing a feature with it.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import scipy.sparse as sp

from core.catalogue import Catalogue

# Neighbour lists kept per index (most recently used); a list is ~50 tuples.
CACHE_MAX_ENTRIES = 20_000


def features_of(categories: Iterable[str], tags: Iterable[str]) -> list[str]:
    return [f"c:{c}" for c in categories] + [f"t:{t}" for t in tags]


def content_features(catalogue: Catalogue) -> dict[str, list[str]]:
    """Every catalogued item's features (its categories and tags)."""
    return {item: features_of(e.categories, e.tags) for item, e in catalogue.items()}


class ContentIndex:
    """Cosine neighbours over TF-IDF feature vectors (thread-safe).

    ``cold``: which items count as cold (for ``ItemIndex``: not in the embedding),
    for queries that ask for cold neighbours only (the blend's content term)."""

    def __init__(
        self, features: Mapping[str, Iterable[str]], cold: Callable[[str], bool] | None = None
    ) -> None:
        ids: list[str] = []
        rows: list[int] = []
        cols: list[int] = []
        vocab: dict[str, int] = {}
        for item, feats in features.items():
            # Sorted: the vocabulary order (and so every float sum) must not
            # depend on the interpreter's string hashing.
            fs = sorted(set(feats))
            if not fs:
                continue
            r = len(ids)
            ids.append(item)
            for f in fs:
                rows.append(r)
                cols.append(vocab.setdefault(f, len(vocab)))
        self._ids = ids
        self._rows = {item: r for r, item in enumerate(ids)}
        n = len(ids)
        m = sp.csr_matrix(
            (np.ones(len(rows), dtype=np.float64), (rows, cols)), shape=(n, len(vocab))
        )
        df = np.asarray((m > 0).sum(axis=0)).ravel()
        idf = np.array([math.log(n / d) if d else 0.0 for d in df])
        m = m @ sp.diags(idf)
        norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
        inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        self._m = sp.csr_matrix(sp.diags(inv) @ m)
        self._t = sp.csr_matrix(self._m.T)
        # Which rows are cold, asked once per item here rather than per query.
        self._cold = np.array([cold(i) for i in ids] if cold else [True] * n, dtype=bool)
        self._id_rank = np.empty(n, dtype=np.int64)
        self._id_rank[np.argsort(np.array(ids, dtype=object), kind="stable")] = np.arange(n)
        self._cache: OrderedDict[tuple[str, int, bool], list[tuple[str, float]]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item: object) -> bool:
        return item in self._rows

    def similar(self, item: str, k: int, *, cold_only: bool = False) -> list[tuple[str, float]]:
        """Up to ``k`` (item, cosine > 0) pairs, best first, never the item itself;
        ``cold_only``: only cold items (applied before the cut to k)."""
        row = self._rows.get(item)
        if row is None or k <= 0:
            return []
        key = (item, k, cold_only)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        sims = sp.csr_matrix(self._m[row] @ self._t)
        cols, vals = sims.indices, sims.data
        mine = (cols != row) & (vals > 0)
        if cold_only:
            mine &= self._cold[cols]
        cols, vals = cols[mine], vals[mine]
        # Best first, equal cosines by item id (the rank of each id in sorted order).
        order = np.lexsort((self._id_rank[cols], -vals))
        ids, top = self._ids, order[:k]
        out = [(ids[c], v) for c, v in zip(cols[top].tolist(), vals[top].tolist(), strict=True)]
        with self._lock:
            self._cache[key] = out
            while len(self._cache) > CACHE_MAX_ENTRIES:
                self._cache.popitem(last=False)
        return out

    def similar_many(
        self, items: Iterable[str], k: int, *, cold_only: bool = False
    ) -> dict[str, list[tuple[str, float]]]:
        return {item: self.similar(item, k, cold_only=cold_only) for item in items}
