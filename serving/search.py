"""Title search over the catalogue the serving index carries (``GET /items?q=``).

Case- and accent-insensitive: titles and queries are folded the same way
(Unicode NFKD, combining marks dropped, casefolded, punctuation as spaces), so
"amelie" finds "Amélie (2001)" and "TOY st" finds "Toy Story (1995)". A title
matches when every word of the query is a prefix of one of its words, in any
order; titles that start with the query come first, then titles whose words
match in the query's order, then the rest, shorter titles first within each.

Built once per index version (a few milliseconds for ml-latest-small's 9,742
titles) and kept until the index is swapped.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_left
from collections.abc import Mapping

_NON_WORD = re.compile(r"[^\w]+")


def fold(text: str) -> str:
    """The form titles and queries are compared in."""
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(_NON_WORD.sub(" ", bare.casefold()).split())


class TitleSearch:
    def __init__(self, titles: Mapping[str, str]) -> None:
        self._items = list(titles.items())
        self._folded = [fold(title) for _, title in self._items]
        # (word, title number), sorted: a query word's prefix matches are one slice.
        pairs = sorted({(word, n) for n, text in enumerate(self._folded) for word in text.split()})
        self._words = [w for w, _ in pairs]
        self._owners = [n for _, n in pairs]

    def __len__(self) -> int:
        return len(self._items)

    def _with_prefix(self, prefix: str) -> set[int]:
        lo = bisect_left(self._words, prefix)
        hi = bisect_left(self._words, prefix + "\U0010ffff")
        return set(self._owners[lo:hi])

    def search(self, query: str, limit: int) -> list[tuple[str, str]]:
        """Up to ``limit`` (item_id, title) pairs matching ``query``, best first."""
        q = fold(query)
        words = q.split()
        if not words:
            return []
        found: set[int] | None = None
        for word in sorted(set(words), key=len, reverse=True):  # rarest first, usually
            hits = self._with_prefix(word)
            found = hits if found is None else found & hits
            if not found:
                return []
        assert found is not None

        def rank(n: int) -> tuple[int, int, str]:
            text = self._folded[n]
            if text.startswith(q):
                tier = 0
            elif _in_order(text.split(), words):
                tier = 1
            else:
                tier = 2
            return tier, len(text), text

        best = sorted(found, key=rank)[:limit]
        return [self._items[n] for n in best]


def _in_order(title_words: list[str], query_words: list[str]) -> bool:
    """Each query word a prefix of a later title word than the previous one's."""
    at = 0
    for q in query_words:
        while at < len(title_words) and not title_words[at].startswith(q):
            at += 1
        if at == len(title_words):
            return False
        at += 1
    return True
