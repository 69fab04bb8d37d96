"""Business rules on the read endpoints: exclusions, categories, what counts as seen.

A request may say (query parameters of ``GET /recommendations/{user_id}`` and
``GET /items/{item_id}/similar``; the list ones repeated for several values,
``?exclude=a&exclude=b``: ids and categories may hold commas):

- ``exclude``: item ids never to return (an out-of-stock list, what the page
  already shows);
- ``category``: return only items in at least one of these categories;
- ``exclude_category``: never return an item in any of these;
- ``seen``: what of the user's history is not recommended again (``history``,
  ``session`` or ``none``; the default is the ``seen`` setting). Negative
  feedback is excluded whatever it says (``serving.history``).

Categories come from the catalogue the index was built with
(``ItemIndex.catalogue``); an item the catalogue does not hold is in no
category. Both scorers take the category rule: the reference blend asks
:meth:`CategoryRule.allows` per candidate, the vectorised one a boolean mask
over item codes (:meth:`CategoryRule.mask`), computed once per item and rule and
kept per worker, so a filtered request costs about what an unfiltered one does.

The parsing here is the one both the route and ``serving.fastpath`` use.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np

from core.events import id_problem
from serving.history import SEEN_POLICIES, Seen

if TYPE_CHECKING:
    from serving.scoring import Vocab

# At most this many values per list parameter; each at most MAX_ID_LEN characters.
MAX_VALUES = 200
# Category rules whose masks a worker keeps (least recently used dropped first).
MAX_RULES = 64

CategoriesOf = Callable[[str], frozenset[str]]


class FilterError(ValueError):
    """A filter parameter that breaks its rule; ``field`` names the parameter."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"query.{field}: {message}")
        self.field = field


def parse_values(field: str, values: Collection[str]) -> frozenset[str]:
    """The values of a repeated parameter as a set; FilterError for too many, or
    for one that breaks the id rule (core.events.ID_PATTERN, at most MAX_ID_LEN):
    ids and category names follow the same rule."""
    if len(values) > MAX_VALUES:
        raise FilterError(field, f"at most {MAX_VALUES} values, got {len(values)}")
    for value in values:
        if id_problem(value) is not None:
            raise FilterError(field, f"{value[:40]!r} is not a valid id or category name")
    return frozenset(values)


def parse_seen(value: str | None) -> Seen | None:
    if value is None:
        return None
    if value not in SEEN_POLICIES:
        raise FilterError("seen", f"must be one of {', '.join(SEEN_POLICIES)}")
    return cast(Seen, value)


@dataclass(frozen=True, slots=True)
class Filters:
    """One request's rules (all empty: none)."""

    exclude: frozenset[str] = frozenset()
    categories: frozenset[str] = frozenset()
    exclude_categories: frozenset[str] = frozenset()
    seen: Seen | None = None  # None: the seen setting

    @classmethod
    def parse(
        cls,
        exclude: Collection[str] = (),
        category: Collection[str] = (),
        exclude_category: Collection[str] = (),
        seen: str | None = None,
    ) -> Filters:
        """From the query parameters' values; FilterError names the one that is wrong."""
        return cls(
            parse_values("exclude", exclude),
            parse_values("category", category),
            parse_values("exclude_category", exclude_category),
            parse_seen(seen),
        )

    @property
    def by_category(self) -> bool:
        return bool(self.categories or self.exclude_categories)

    def rule(self, categories_of: CategoriesOf, key: object) -> CategoryRule | None:
        """The category rule, or None when the request names no category.
        ``key`` identifies the catalogue (its masks are kept per catalogue)."""
        if not self.by_category:
            return None
        return CategoryRule(self.categories, self.exclude_categories, categories_of, key)


NO_FILTERS = Filters()


@dataclass(frozen=True, slots=True)
class CategoryRule:
    """Which items a request's category parameters let through."""

    include: frozenset[str]
    exclude: frozenset[str]
    categories_of: CategoriesOf
    catalogue: object  # what the categories come from (a cache key)

    def allows(self, item: str) -> bool:
        cats = self.categories_of(item)
        if self.include and self.include.isdisjoint(cats):
            return False
        return not (self.exclude and not self.exclude.isdisjoint(cats))

    def mask(self, codes: np.ndarray, vocab: Vocab) -> np.ndarray:
        """``allows`` of each code's item, as a boolean array (see :class:`RuleMasks`)."""
        return vocab.rule_masks.mask(self, codes, vocab.names)

    @property
    def key(self) -> tuple[object, frozenset[str], frozenset[str]]:
        return (self.catalogue, self.include, self.exclude)


class RuleMasks:
    """Per worker: for each recent category rule, a code-indexed verdict array
    (0 not yet asked, 1 allowed, 2 refused), filled in as codes are met. Codes
    only grow within a vocabulary, so a verdict never goes stale; a new
    catalogue is a new key."""

    def __init__(self, max_rules: int = MAX_RULES) -> None:
        self._max = max_rules
        self._verdicts: OrderedDict[object, np.ndarray] = OrderedDict()

    def mask(self, rule: CategoryRule, codes: np.ndarray, names: list[str]) -> np.ndarray:
        key = rule.key
        verdicts = self._verdicts.get(key)
        size = len(names)
        if verdicts is None or len(verdicts) < size:
            grown = np.zeros(max(size, 1024, 0 if verdicts is None else 2 * len(verdicts)), np.int8)
            if verdicts is not None:
                grown[: len(verdicts)] = verdicts
            verdicts = grown
        self._verdicts[key] = verdicts
        self._verdicts.move_to_end(key)
        while len(self._verdicts) > self._max:
            self._verdicts.popitem(last=False)
        got = verdicts[codes]
        unknown = np.unique(codes[got == 0])
        if unknown.size:
            allows = rule.allows
            verdicts[unknown] = [1 if allows(names[c]) else 2 for c in unknown.tolist()]
            got = verdicts[codes]
        return got == 1
