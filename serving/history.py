"""A user's history as serving reads it: entries, negative feedback, what counts as seen.

Pure, shared by every reader backend and the evaluation. The consumer writes
history entries as JSON arrays ``[ts_ms, item, session, partition, offset,
neg]`` (``consumer.logic.Entry``), newest first; ``neg`` = 1 marks negative
feedback (``core.feedback``): the item is excluded from the user's
answers whatever the seen policy, and is never a source.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from serving.blend import recent_sources

# What a user has seen, and so is not recommended again: every item of the
# history read ("history"), the items of their current session ("session"),
# or nothing ("none"). Negative feedback is excluded under all three.
Seen = Literal["history", "session", "none"]
SEEN_POLICIES: tuple[Seen, ...] = ("history", "session", "none")


@dataclass(frozen=True, slots=True)
class History:
    """The newest entries of one user's history, as read."""

    entries: list[tuple[int, str]]  # (ts_ms, item_id), newest first, negatives included
    # items whose newest entry is negative feedback (a later click lifts it)
    negative: frozenset[str] = frozenset()
    skipped: int = 0  # entries that did not parse

    @property
    def items(self) -> list[str]:
        return [item for _, item in self.entries]

    def sources(self, n: int) -> list[str]:
        """The ``n`` most recent distinct items the user did not reject."""
        return sources_of(self.entries, self.negative, n)


def sources_of(entries: Sequence[tuple[int, str]], negative: frozenset[str], n: int) -> list[str]:
    """The ``n`` most recent distinct items of ``entries`` that are not in ``negative``."""
    if not negative:
        return recent_sources([item for _, item in entries], n)
    return recent_sources([item for _, item in entries if item not in negative], n)


def seen_items(
    entries: Sequence[tuple[int, str]], negative: Iterable[str], policy: Seen, gap_ms: int
) -> set[str]:
    """The items a request excludes under ``policy`` (see ``Seen``), negatives always:
    "session" is :func:`current_session`'s entries."""
    out = set(negative)
    if policy == "history":
        out.update(item for _, item in entries)
    elif policy == "session":
        out.update(item for _, item in current_session(entries, gap_ms))
    return out


def current_session(entries: Sequence[tuple[int, str]], gap_ms: int) -> list[tuple[int, str]]:
    """The newest entries of a newest-first history while consecutive ones are at
    most ``gap_ms`` apart: the consumer's session rule on event time, walked
    back from the newest entry."""
    found = sessions(entries, gap_ms, limit=1)
    return found[0] if found else []


def sessions(
    entries: Sequence[tuple[int, str]], gap_ms: int, limit: int | None = None
) -> list[list[tuple[int, str]]]:
    """A newest-first history cut into its sessions, newest first, each newest
    first (at most ``limit`` of them)."""
    out: list[list[tuple[int, str]]] = []
    prev: int | None = None
    for ts, item in entries:
        if prev is None or abs(prev - ts) > gap_ms:
            if limit is not None and len(out) >= limit:
                break
            out.append([])
        out[-1].append((ts, item))
        prev = ts
    return out


def parse_history(raw: Iterable[Any]) -> History:
    """Parse newest-first JSON entries; count the unparseable.

    A usable entry is a list whose first element is a number and whose second is a
    non-empty string; a sixth element equal to 1 marks negative feedback. An
    item is negative when its newest entry is: clicking it again lifts a dislike.
    """
    out: list[tuple[int, str, bool]] = []
    skipped = 0
    for entry in raw:
        try:
            value = orjson.loads(entry)
        except orjson.JSONDecodeError:
            skipped += 1
            continue
        if (
            isinstance(value, list)
            and len(value) >= 2
            and isinstance(value[1], str)
            and value[1]
            and isinstance(value[0], int | float)
            and not isinstance(value[0], bool)
        ):
            out.append((int(value[0]), value[1], len(value) >= 6 and value[5] == 1))
        else:
            skipped += 1
    return history_of(out, skipped)


def history_of(entries: Iterable[tuple[int, str, bool]], skipped: int = 0) -> History:
    """A History from newest-first ``(ts, item, negative)`` entries: an item is
    negative when its newest entry is (clicking it again lifts a dislike)."""
    out: list[tuple[int, str]] = []
    newest: dict[str, bool] = {}
    for ts, item, neg in entries:
        out.append((ts, item))
        newest.setdefault(item, neg)
    return History(out, frozenset(i for i, neg in newest.items() if neg), skipped)
