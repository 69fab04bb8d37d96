"""A session linear item-item model (SLIST, Choi et al., WWW 2021), in closed form.

Sessions are each user's events cut where two clicks lie more than the session
gap apart. Two views of them are fitted by one item-item matrix ``B``:

- reconstruction (SLIS): a session's items from its other items, ``X ≈ X B``
  over the binary sessions x items matrix ``X`` (a session longer than
  ``block`` items counts as blocks of that many, as the pair window bounds a
  co-occurrence);
- transition (SLIT): what follows from what came before, ``T ≈ S B``: for every
  position ``t`` of a session, ``S`` holds the ``window`` items before it
  (weight ``decay**(d-1)`` at distance ``d``) and ``T`` the ``window`` items
  from it on (``decay**(j+1)`` for the j-th).

With weight ``alpha`` on the first and ridge ``reg``, and ``B``'s diagonal held
at zero (an item may not explain itself)::

    A = alpha X'X + (1 - alpha) S'S + reg I,   R = alpha X'X + (1 - alpha) S'T
    P = A^-1,   B = P R - P diag(g),   g_i = (P R)_ii / P_ii

Each item's row of ``B`` is kept as its ``top`` largest positive weights: rows
served like co-occurrence rows, read by the learned ranker (serving.ranker).

The inverse is dense, n³ in time and n² in memory: only the ``max_items`` most
clicked items take part (8,000 by default: all but ml-latest-small's rarest
items; a 62,000-item catalogue keeps its head, docs/evaluation.md measures both).

Pure functions: no I/O, no logging, no globals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.linalg
import scipy.sparse as sp

from core.errors import DatasetError

__all__ = ["LinearConfig", "LinearRows", "fit_linear", "session_matrices", "solve"]


@dataclass(frozen=True, slots=True)
class LinearConfig:
    alpha: float = 0.5
    # Alone (its rows' decayed sum, top 10) on ml-latest-small's validation
    # part: HR@10 0.090 at reg 1, 0.092 at 10, 0.098 at 100, 0.104 at 300,
    # 0.107 at 1000, 0.105 at 3000 (alpha 0.5; 0.2 and 0.8 no better).
    reg: float = 1000.0
    max_items: int = 8_000
    window: int = 10
    decay: float = 0.8
    block: int = 50
    top: int = 50

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], not {self.alpha}")
        if self.reg <= 0:
            raise ValueError(f"reg must be positive, not {self.reg}")
        if min(self.max_items, self.window, self.block, self.top) < 1:
            raise ValueError("max_items, window, block and top must be at least 1")
        if not 0.0 < self.decay <= 1.0:
            raise ValueError(f"decay must lie in (0, 1], not {self.decay}")


class LinearRows:
    """Each modelled item's strongest positive neighbours in ``B``, best first
    (equal weights by item id)."""

    def __init__(self, items: list[str], codes: np.ndarray, weights: np.ndarray) -> None:
        if codes.shape != weights.shape or codes.ndim != 2 or codes.shape[0] != len(items):
            raise ValueError(f"rows of shape {codes.shape}/{weights.shape} for {len(items)} items")
        self.items = items
        self.codes = codes.astype(np.int32, copy=False)  # -1 past a row's end
        self.weights = weights.astype(np.float32, copy=False)
        self._rows = {item: r for r, item in enumerate(items)}

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, item: object) -> bool:
        return item in self._rows

    def row(self, item: str, k: int) -> list[tuple[str, float]]:
        r = self._rows.get(item)
        if r is None or k <= 0:
            return []
        items = self.items
        return [
            (items[c], w)
            for c, w in zip(self.codes[r, :k].tolist(), self.weights[r, :k].tolist(), strict=True)
            if c >= 0
        ]

    def rows(self, sources: Sequence[str], k: int) -> dict[str, list[tuple[str, float]]]:
        return {s: row for s in sources if (row := self.row(s, k))}

    def arrays(self) -> dict[str, np.ndarray]:
        """What ``from_arrays`` reads back (np.savez without pickles)."""
        return {"items": np.array(self.items, dtype=np.str_), "codes": self.codes,
                "weights": self.weights}  # fmt: skip

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> LinearRows:
        items = [str(i) for i in arrays["items"].tolist()]
        codes, weights = np.asarray(arrays["codes"]), np.asarray(arrays["weights"])
        if len(items) and (codes.max(initial=-1) >= len(items) or codes.min(initial=0) < -1):
            raise ValueError("linear rows point past their item list")
        if not np.isfinite(weights).all():
            raise ValueError("linear rows hold NaN or infinity")
        return cls(items, codes, weights)


def _sessions(df: pd.DataFrame, gap_ms: int, keep: pd.Index) -> tuple[np.ndarray, np.ndarray]:
    """(item code, session number) of the events of kept items, in (user, time) order."""
    frame = pd.DataFrame(
        {"u": df["user_id"].astype(str), "i": df["item_id"].astype(str), "ts": df["ts"]}
    ).sort_values(["u", "ts"], kind="stable")
    users = frame["u"].to_numpy()
    ts = frame["ts"].to_numpy(dtype=np.int64)
    starts = np.ones(len(frame), dtype=bool)
    if len(frame) > 1:
        starts[1:] = (users[1:] != users[:-1]) | (np.diff(ts) > gap_ms)
    session = np.cumsum(starts) - 1
    codes = keep.get_indexer(pd.Index(frame["i"]))
    kept = codes >= 0
    return codes[kept].astype(np.int64), session[kept]


def _lagged(
    codes: np.ndarray, session: np.ndarray, lags: range, weight: np.ndarray, n: int
) -> sp.csr_matrix:
    """Rows = positions; row t holds ``codes[t - lag]`` (same session) at ``weight[j]``
    for the j-th lag."""
    rows, cols, vals = [], [], []
    m = len(codes)
    for j, lag in enumerate(lags):
        t = np.arange(max(lag, 0), m + min(lag, 0))
        same = session[t] == session[t - lag]
        rows.append(t[same])
        cols.append(codes[t[same] - lag])
        vals.append(np.full(int(same.sum()), weight[j]))
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(m, n)
    )


def fit_linear(df: pd.DataFrame, gap_ms: int, cfg: LinearConfig | None = None) -> LinearRows:
    """The model of ``df``'s sessions (``user_id``, ``item_id``, ``ts``; see the module)."""
    cfg = cfg or LinearConfig()
    items, x, s, t = session_matrices(df, gap_ms, cfg)
    return _top_rows(items, solve(x, s, t, cfg.alpha, cfg.reg), cfg.top)


def session_matrices(
    df: pd.DataFrame, gap_ms: int, cfg: LinearConfig
) -> tuple[list[str], sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]:
    """The modelled items (sorted) and the module's ``X``, ``S`` and ``T`` over them."""
    missing = [c for c in ("user_id", "item_id", "ts") if c not in df.columns]
    if missing:
        raise DatasetError(f"interactions lack column(s) {missing}; have {list(df.columns)}")
    counts = df["item_id"].astype(str).value_counts()
    if counts.empty:
        raise DatasetError("no interactions to fit a linear model on")
    pairs = ((str(item), int(count)) for item, count in counts.items())
    ranked = sorted(pairs, key=lambda kv: (-kv[1], kv[0]))[: cfg.max_items]
    keep = pd.Index(sorted(item for item, _ in ranked))
    n = len(keep)
    codes, session = _sessions(df, gap_ms, keep)
    # Positions in a session, for the reconstruction's blocks.
    first = np.r_[True, session[1:] != session[:-1]] if len(session) else np.zeros(0, bool)
    starts = np.flatnonzero(first)
    position = np.arange(len(session)) - np.repeat(starts, np.diff(np.r_[starts, len(session)]))
    block = np.cumsum(first | (position % cfg.block == 0)) - 1
    x = sp.csr_matrix(
        (np.ones(len(codes)), (block, codes)), shape=(int(block.max(initial=-1)) + 1, n)
    )
    x.data[:] = 1.0  # an item twice in a block is still in it once
    w = cfg.decay ** np.arange(cfg.window, dtype=np.float64)
    s = _lagged(codes, session, range(1, cfg.window + 1), w, n)
    t = _lagged(codes, session, range(0, -cfg.window, -1), w * cfg.decay, n)
    return list(keep), x, s, t


def solve(
    x: sp.csr_matrix, s: sp.csr_matrix, t: sp.csr_matrix, alpha: float, reg: float
) -> np.ndarray:
    """The dense ``B`` of the module's closed form (zero diagonal)."""
    n = x.shape[1]
    gram = (x.T @ x).toarray()
    a = alpha * gram + (1.0 - alpha) * (s.T @ s).toarray()
    a[np.diag_indices(n)] += reg
    r = alpha * gram
    r += (1.0 - alpha) * (s.T @ t).toarray()
    del gram
    p = scipy.linalg.inv(a, overwrite_a=True, check_finite=False)
    b = p @ r
    del r
    g = np.diag(b) / np.diag(p)
    b -= p * g  # P diag(g): column j of P times g_j
    del p
    np.fill_diagonal(b, 0.0)  # zero already, up to rounding
    return b


def _top_rows(items: list[str], b: np.ndarray, top: int) -> LinearRows:
    k = min(top, len(items))
    part = np.argpartition(-b, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(b, part, axis=1)
    # Best first; equal weights by item id (items are sorted, so by column).
    order = np.lexsort((part, -vals), axis=1)
    part = np.take_along_axis(part, order, axis=1)
    vals = np.take_along_axis(vals, order, axis=1)
    # Non-positive weights (the sort put them last) become padding.
    keep = vals > 0
    codes = np.where(keep, part, -1).astype(np.int32)
    weights = np.where(keep, vals, 0.0).astype(np.float32)
    return LinearRows(items, codes, weights)
