"""What a reader made of a file: rows read, kept, and every skipped row's reason.

A reader never drops a row silently and never stops on one: each bad row is
counted under the first rule it breaks, with the line numbers of the first few
(``LINES_KEPT``) so they can be found, and the summary says it all in one line::

    read 1,204 rows from events.csv: kept 1,200, skipped 4 (bad_time: 3, lines 7, 19, 20;
    short_row: 1, line 1205)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Enough to find the pattern in an editor; the count says how many there are.
LINES_KEPT = 5


@dataclass(frozen=True)
class ReadReport:
    """The outcome of reading one file. ``skipped`` and ``lines`` are keyed by reason."""

    file: str
    rows_read: int
    rows_kept: int
    skipped: Mapping[str, int] = field(default_factory=dict)
    lines: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    # Rows used after ``limit`` cut the kept ones (None: no limit cut anything).
    rows_used: int | None = None

    @property
    def rows_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        text = f"read {self.rows_read:,} rows from {self.file}: kept {self.rows_kept:,}"
        text += f", skipped {self.rows_skipped:,}"
        if self.skipped:
            parts = []
            for reason, count in self.skipped.items():
                shown = self.lines.get(reason, ())
                where = ", ".join(str(n) for n in shown)
                more = ", ..." if count > len(shown) else ""
                noun = "line" if len(shown) == 1 and not more else "lines"
                parts.append(f"{reason}: {count:,}" + (f", {noun} {where}{more}" if shown else ""))
            text += " (" + "; ".join(parts) + ")"
        if self.rows_used is not None and self.rows_used < self.rows_kept:
            text += f"; using the first {self.rows_used:,} in time order (limit)"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "rows_skipped": self.rows_skipped,
            "skipped": dict(self.skipped),
            "lines": {k: list(v) for k, v in self.lines.items()},
            "rows_used": self.rows_used,
        }


class RowTally:
    """Builds a ReadReport chunk by chunk. Reasons are reported in the order given."""

    def __init__(self, file: str, reasons: tuple[str, ...]) -> None:
        self.file = file
        self.reasons = reasons
        self.read = 0
        self.kept = 0
        self._counts = dict.fromkeys(reasons, 0)
        self._lines: dict[str, list[int]] = {r: [] for r in reasons}

    def code(self, reason: str) -> int:
        """The int8 code of ``reason`` in per-row reason arrays (0 means kept)."""
        return self.reasons.index(reason) + 1

    def add(self, codes: np.ndarray, lines: np.ndarray) -> None:
        """One chunk: per-row reason codes (0 = kept) and the rows' line numbers."""
        self.read += len(codes)
        bad = np.flatnonzero(codes)
        self.kept += len(codes) - len(bad)
        if len(bad) == 0:
            return
        found = np.bincount(codes[bad], minlength=len(self.reasons) + 1)
        for k in np.flatnonzero(found):
            reason = self.reasons[k - 1]
            self._counts[reason] += int(found[k])
            room = LINES_KEPT - len(self._lines[reason])
            if room > 0:
                rows = bad[codes[bad] == k][:room]
                self._lines[reason].extend(int(n) for n in lines[rows])

    def skip(self, reason: str, line: int) -> None:
        """One bad row, for readers that go row by row."""
        self.read += 1
        self._counts[reason] += 1
        if len(self._lines[reason]) < LINES_KEPT:
            self._lines[reason].append(line)

    def keep(self) -> None:
        self.read += 1
        self.kept += 1

    def report(self, rows_used: int | None = None) -> ReadReport:
        return ReadReport(
            file=self.file,
            rows_read=self.read,
            rows_kept=self.kept,
            skipped={r: n for r, n in self._counts.items() if n},
            lines={r: tuple(self._lines[r]) for r, n in self._counts.items() if n},
            rows_used=rows_used,
        )
