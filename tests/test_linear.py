"""The session linear model (offline/linear.py): its matrices, its closed form, its
rows, and their trip through an index version."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from consumer.logic import SessionRules
from core.errors import DatasetError, IndexNotFound
from offline import job
from offline.index import LINEAR_FILE, ItemIndex, load_current
from offline.job import OfflineSettings
from offline.linear import LinearConfig, LinearRows, fit_linear, session_matrices, solve

MIN = 60_000
GAP = 30 * MIN


def clicks(*sessions: tuple[str, int, str]) -> pd.DataFrame:
    """Rows of (user, minute, item)."""
    return pd.DataFrame([{"user_id": u, "ts": m * MIN, "item_id": i} for u, m, i in sessions])


def test_the_matrices_hold_sessions_blocks_and_transitions() -> None:
    # u: a, b, c in one session, d two hours later; v: c alone.
    df = clicks(("u", 0, "a"), ("u", 1, "b"), ("u", 2, "c"), ("u", 120, "d"), ("v", 5, "c"))
    cfg = LinearConfig(window=2, decay=0.5, block=2)
    items, x, s, t = session_matrices(df, GAP, cfg)
    assert items == ["a", "b", "c", "d"]
    code = {item: i for i, item in enumerate(items)}
    # Blocks of two: [a b] [c] of u's first session, [d], and v's [c].
    blocks = sorted(tuple(sorted(items[j] for j in row.indices)) for row in x)
    assert blocks == [("a", "b"), ("c",), ("c",), ("d",)]
    dense_s, dense_t = s.toarray(), t.toarray()
    # Rows are positions in (user, time) order: u's a, b, c, d, then v's c.
    assert dense_s[0].sum() == 0  # nothing before a session's first click
    assert dense_s[1, code["a"]] == 1.0
    assert dense_s[2, code["b"]] == 1.0 and dense_s[2, code["a"]] == 0.5
    assert dense_s[3].sum() == 0 and dense_s[4].sum() == 0  # d and v start sessions
    # T at b: b itself, then c (decay, then decay squared); nothing past the gap.
    assert dense_t[1, code["b"]] == 0.5 and dense_t[1, code["c"]] == 0.25
    assert dense_t[2, code["c"]] == 0.5 and dense_t[2, code["d"]] == 0.0


def test_the_closed_form_is_the_constrained_minimum(rng: np.random.Generator) -> None:
    n_items = 12
    rows = [
        {"user_id": f"u{rng.integers(8)}", "ts": int(rng.integers(0, 600)) * MIN,
         "item_id": f"i{rng.integers(n_items)}"}
        for _ in range(300)
    ]  # fmt: skip
    cfg = LinearConfig(alpha=0.3, reg=2.0, window=3)
    _, x, s, t = session_matrices(pd.DataFrame(rows), GAP, cfg)
    b = solve(x, s, t, cfg.alpha, cfg.reg)
    assert np.allclose(np.diag(b), 0.0)
    # Gradient of alpha|X - XB|² + (1-alpha)|T - SB|² + reg|B|²: zero off the
    # diagonal (the diagonal holds the constraint's multipliers).
    xx, ss, st = (x.T @ x).toarray(), (s.T @ s).toarray(), (s.T @ t).toarray()
    a = cfg.alpha * xx + (1 - cfg.alpha) * ss + cfg.reg * np.eye(len(b))
    grad = a @ b - (cfg.alpha * xx + (1 - cfg.alpha) * st)
    off = grad - np.diag(np.diag(grad))
    assert np.abs(off).max() < 1e-9 * max(np.abs(a).max(), 1.0)

    # And any other zero-diagonal matrix does worse.
    def loss(m: np.ndarray) -> float:
        xd, sd, td = x.toarray(), s.toarray(), t.toarray()
        return float(
            cfg.alpha * ((xd - xd @ m) ** 2).sum()
            + (1 - cfg.alpha) * ((td - sd @ m) ** 2).sum()
            + cfg.reg * (m**2).sum()
        )

    for _ in range(5):
        other = b + 0.01 * rng.standard_normal(b.shape)
        np.fill_diagonal(other, 0.0)
        assert loss(other) > loss(b)


def test_a_row_holds_what_follows_and_nothing_across_a_session_gap() -> None:
    # Ten users click a then b; after a pause of two hours, c. Transitions only.
    df = clicks(
        *[(f"u{k}", m, item) for k in range(10) for m, item in ((0, "a"), (1, "b"), (200, "c"))]
    )
    rows = fit_linear(df, GAP, LinearConfig(alpha=0.0, reg=1.0))
    assert [item for item, _ in rows.row("a", 5)] == ["b"]
    assert rows.row("b", 5) == [] and rows.row("c", 5) == []
    assert rows.row("nobody", 5) == [] and rows.rows(["a", "nobody"], 5).keys() == {"a"}


def test_only_the_most_clicked_items_are_modelled() -> None:
    df = clicks(
        ("u", 0, "a"), ("u", 1, "b"), ("v", 0, "a"), ("v", 1, "b"), ("w", 0, "c"), ("w", 1, "b")
    )
    rows = fit_linear(df, GAP, LinearConfig(max_items=2))
    assert rows.items == ["a", "b"] and "c" not in rows
    with pytest.raises(DatasetError, match="no interactions"):
        fit_linear(df.iloc[:0], GAP)
    with pytest.raises(DatasetError, match="lack"):
        fit_linear(df.drop(columns="ts"), GAP)
    with pytest.raises(ValueError):
        LinearConfig(alpha=1.5)


def test_rows_round_trip_and_refuse_bad_arrays() -> None:
    rows = LinearRows(["a", "b"], np.array([[1, -1], [0, -1]]), np.array([[0.5, 0], [0.25, 0]]))
    again = LinearRows.from_arrays(rows.arrays())
    assert again.row("a", 5) == [("b", 0.5)] and again.row("b", 5) == [("a", 0.25)]
    with pytest.raises(ValueError, match="past"):
        LinearRows.from_arrays({**rows.arrays(), "codes": np.array([[2, -1], [0, -1]])})
    with pytest.raises(ValueError, match="NaN"):
        LinearRows.from_arrays({**rows.arrays(), "weights": np.full((2, 2), np.nan)})


def movies(n_users: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.DataFrame(
        [
            {"user_id": f"u{u}", "ts": (u * 10 + j) * MIN, "item_id": f"m{rng.integers(30)}"}
            for u in range(n_users)
            for j in range(8)
        ]
    )


def test_a_version_carries_its_linear_rows(tmp_path: Path) -> None:
    settings = OfflineSettings(dim=8, ranker=False, linear=True)
    index = job.build_index(movies(), tmp_path, settings)
    assert index.linear is not None and index.manifest.params["linear"]["items"] == 30
    loaded = load_current(tmp_path)
    assert loaded.linear is not None and loaded.version == index.version
    some = index.linear.items[:3]
    assert loaded.linear_rows(some, 10) == index.linear_rows(some, 10)
    off = job.build_index(movies(), tmp_path / "off", settings.model_copy(update={"linear": False}))
    assert off.linear is None and off.linear_rows(some, 10) == {} and off.version != index.version
    # A damaged file: the version does not load (the server keeps what it has).
    (tmp_path / "index" / index.version / LINEAR_FILE).write_bytes(b"not an npz")
    with pytest.raises(IndexNotFound):
        ItemIndex.load(tmp_path / "index" / index.version)


def test_the_offline_sessions_end_where_the_consumer_s_do() -> None:
    assert OfflineSettings().session_gap_ms == SessionRules().gap_ms
