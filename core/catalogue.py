"""The catalogue: what is known about each item besides its clicks.

A plain value type with no file I/O: ``producer.catalogue`` reads catalogues
(MovieLens's movie and tag files, or a team's own file) into it, the offline
job stores it beside an index version (``catalogue.json``), and serving and the
evaluation read titles and categories from it. It lives in ``core`` because
both ``producer`` (which reads it) and ``offline`` (which stores it) need the
type, and neither may import the other.

``to_json`` is stable: items sorted by id, categories and tags sorted, so the
same catalogue always gives the same bytes (they go into the index's version
digest).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import orjson

__all__ = ["Catalogue", "CatalogueItem"]

FORMAT = 1  # catalogue.json's layout version, for readers of later layouts


@dataclass(frozen=True, slots=True)
class CatalogueItem:
    """One item's title (None when unknown), categories and tags."""

    title: str | None = None
    categories: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()


_EMPTY = CatalogueItem()
_NO_NAMES: frozenset[str] = frozenset()


class Catalogue:
    """item id -> CatalogueItem; read-only once built.

    Lookups of unknown items answer "nothing known" (None title, empty sets)
    rather than raising, because every served or evaluated item may be one the
    catalogue never listed.
    """

    __slots__ = ("_by_category", "_items")

    def __init__(self, items: Mapping[str, CatalogueItem] | None = None) -> None:
        self._items: dict[str, CatalogueItem] = dict(items or {})
        self._by_category: Mapping[str, frozenset[str]] | None = None

    @classmethod
    def from_titles(cls, titles: Mapping[str, str]) -> Catalogue:
        """A catalogue that knows titles only (an index saved before catalogue.json)."""
        return cls({str(k): CatalogueItem(title=str(v)) for k, v in titles.items()})

    # -- the mapping face ------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Catalogue) and self._items == other._items

    def __repr__(self) -> str:
        return f"Catalogue({len(self._items)} items)"

    def get(self, item_id: str) -> CatalogueItem | None:
        return self._items.get(item_id)

    def items(self) -> Iterable[tuple[str, CatalogueItem]]:
        return self._items.items()

    # -- what serving and the evaluation ask -------------------------------------------
    def title(self, item_id: str) -> str | None:
        return self._items.get(item_id, _EMPTY).title

    def categories(self, item_id: str) -> frozenset[str]:
        return self._items.get(item_id, _EMPTY).categories

    def tags(self, item_id: str) -> frozenset[str]:
        return self._items.get(item_id, _EMPTY).tags

    def titles(self) -> dict[str, str]:
        """item id -> title, for the items that have one."""
        return {i: it.title for i, it in self._items.items() if it.title is not None}

    def by_category(self) -> Mapping[str, frozenset[str]]:
        """category -> the ids of its items; built on first use and kept (read-only)."""
        if self._by_category is None:
            members: dict[str, list[str]] = {}
            for item_id, item in self._items.items():
                for category in item.categories:
                    members.setdefault(category, []).append(item_id)
            # Two threads may both build it once; the results are equal, and the
            # assignment of a finished mapping is atomic.
            self._by_category = MappingProxyType(
                {c: frozenset(ids) for c, ids in sorted(members.items())}
            )
        return self._by_category

    def category_names(self) -> list[str]:
        """Every category some item has, sorted."""
        return list(self.by_category())

    def restrict(self, item_ids: Iterable[str]) -> Catalogue:
        """The entries of the given items only (those the catalogue has)."""
        return Catalogue({i: it for i in item_ids if (it := self._items.get(i)) is not None})

    # -- catalogue.json ----------------------------------------------------------------
    def to_json(self) -> bytes:
        """``{"format": 1, "items": {id: {"title", "categories", "tags"}}}``, sorted."""
        items = {
            item_id: {
                "title": item.title,
                "categories": sorted(item.categories),
                "tags": sorted(item.tags),
            }
            for item_id, item in self._items.items()
        }
        return orjson.dumps({"format": FORMAT, "items": items}, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, data: bytes | str) -> Catalogue:
        """Read ``to_json``'s bytes; ValueError (orjson's decode error is one) if malformed."""
        doc = orjson.loads(data)
        if not isinstance(doc, dict) or not isinstance(doc.get("items"), dict):
            raise ValueError("catalogue JSON must be an object with an 'items' object")
        if doc.get("format") != FORMAT:
            raise ValueError(f"catalogue JSON format {doc.get('format')!r}, expected {FORMAT}")
        # Categories and tags repeat across items: one shared str object per
        # name keeps a large catalogue's memory at its distinct names.
        names: dict[str, str] = {}
        items: dict[str, CatalogueItem] = {}
        for item_id, raw in doc["items"].items():
            if not isinstance(raw, dict):
                raise ValueError(f"catalogue item {item_id!r} is not an object")
            title = raw.get("title")
            if title is not None and not isinstance(title, str):
                raise ValueError(f"catalogue item {item_id!r}: title must be a string or null")
            items[item_id] = CatalogueItem(
                title=title,
                categories=_names(raw.get("categories"), names, item_id),
                tags=_names(raw.get("tags"), names, item_id),
            )
        return cls(items)


def _names(value: Any, shared: dict[str, str], item_id: str) -> frozenset[str]:
    if value is None:
        return _NO_NAMES
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"catalogue item {item_id!r}: categories and tags must be string lists")
    if not value:
        return _NO_NAMES
    return frozenset(shared.setdefault(v, v) for v in value)
