"""Paired per-user bootstrap intervals (evaluation/bootstrap.py): known cases, symmetry."""

from __future__ import annotations

import numpy as np

from evaluation.bootstrap import paired_interval, per_user_intervals


def test_the_same_method_differs_by_nothing() -> None:
    n = [3, 5, 8]
    hits = [1, 2, 4]
    iv = paired_interval(n, hits, hits)
    assert (iv.diff, iv.lo, iv.hi) == (0.0, 0.0, 0.0) and not iv.excludes_zero


def test_better_for_every_user_excludes_zero() -> None:
    rng = np.random.default_rng(1)
    n = rng.integers(5, 50, size=80)
    base = rng.binomial(n, 0.1)
    other = np.minimum(n, base + rng.integers(1, 4, size=80))
    iv = paired_interval(n, base, other)
    assert iv.lo > 0 and iv.lo <= iv.diff <= iv.hi and iv.excludes_zero
    assert iv.diff == (other.sum() - base.sum()) / n.sum()


def test_a_difference_held_by_one_user_is_within_noise() -> None:
    n = np.full(50, 100)
    base = np.full(50, 10)
    other = base.copy()
    other[0] += 30  # one heavy user carries all of it
    iv = paired_interval(n, base, other)
    assert iv.diff > 0 and iv.lo == 0.0 and not iv.excludes_zero


def test_swapping_the_methods_mirrors_the_interval() -> None:
    rng = np.random.default_rng(2)
    n = rng.integers(1, 30, size=40)
    a, b = rng.binomial(n, 0.2), rng.binomial(n, 0.25)
    ab, ba = paired_interval(n, a, b, seed=5), paired_interval(n, b, a, seed=5)
    assert np.isclose(ab.diff, -ba.diff)
    assert np.isclose(ab.lo, -ba.hi) and np.isclose(ab.hi, -ba.lo)


def test_per_user_intervals_pair_methods_by_user() -> None:
    per_user = {
        "co": {"u1": (10, 1, 0.5), "u2": (10, 2, 1.0)},
        "blend": {"u2": (10, 4, 2.0), "u1": (10, 3, 1.5)},  # any order of users
    }
    out = per_user_intervals(per_user, "co", ["hr@10", "ndcg@10"], draws=200)
    assert set(out) == {"blend"}
    assert np.isclose(out["blend"]["hr@10"]["diff"], (7 - 3) / 20)
    assert np.isclose(out["blend"]["ndcg@10"]["diff"], (3.5 - 1.5) / 20)
