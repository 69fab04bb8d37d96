"""Embedding neighbours as ready-made (item, cosine) lists, per index version.

ItemIndex caches its FAISS results as numpy arrays and converts them to Python
tuples on every call: ~500 tuples per recommendation (10 sources x 50), which
py-spy put at ~11% of the API's CPU. Items are shared across users (the hot
ones most of all), so the converted lists are kept here, keyed by item, and
dropped as a whole when a new index version is swapped in.

They are stored as tuples of (str, float) tuples: CPython's cyclic GC stops
tracking a tuple that holds only atomic values (and then a tuple of those), so
a full cache adds nothing to the work of a full collection, which would
otherwise walk ~500k objects and stall the event loop (see serving.app).
"""

from __future__ import annotations

from collections.abc import Sequence

from offline.index import ItemIndex

Neighbours = tuple[tuple[str, float], ...]

# ~50 tuples of (str, float) per entry, ~5 KB with object overhead: 20,000
# entries is ~100 MB at most, and a MovieLens catalogue (~10k items) fits whole.
MAX_ENTRIES = 20_000


class NeighbourCache:
    """Lists of ``k`` neighbours for one index; clears itself when handed another version.

    Used from the event loop thread only, so no lock. The lists are shared: the
    blend only reads them.
    """

    def __init__(self, k: int, max_entries: int = MAX_ENTRIES) -> None:
        self.k = k
        self.max_entries = max_entries
        self.version: str | None = None
        self._lists: dict[str, Neighbours] = {}

    def __len__(self) -> int:
        return len(self._lists)

    def get_many(self, index: ItemIndex, items: Sequence[str]) -> dict[str, Neighbours]:
        if index.version != self.version:
            self._lists = {}
            self.version = index.version
        lists = self._lists
        missing = [item for item in items if item not in lists]
        if missing:
            found = index.similar_many(missing, self.k)
            if len(lists) + len(found) > self.max_entries:
                # Full: start over rather than track recency per hit; a refill
                # costs one FAISS search per item, and hot items return first.
                lists.clear()
            lists.update((item, tuple(row)) for item, row in found.items())
        return {item: lists[item] for item in items}
