"""Item embeddings from interactions: SVD of the positive PMI item-item matrix.

Why this and not item2vec: Levy & Goldberg (2014, "Neural word embedding as
implicit matrix factorization") show that word2vec's skip-gram with negative
sampling (and so item2vec) implicitly factorises the PMI matrix shifted by
log(k). Taking the truncated SVD of the positive (shifted) PMI matrix recovers
that signal deterministically, in seconds, with no training loop, no learning
rate and no epochs to tune. Rows are L2-normalised so that cosine similarity is
a plain inner product, which is what FAISS ``IndexFlatIP`` computes (the
benfred/implicit habit).

Pure functions: no I/O, no logging, no globals.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.linalg import eigsh

from core.errors import DatasetError

REQUIRED_COLUMNS = ("user_id", "item_id")

# Up to this many items the PPMI matrix is decomposed densely: 1,000² float64 is
# 8 MB and LAPACK takes well under a second, the answer is exact, and ARPACK's
# restriction k < n (and its slow convergence when k is close to n) never bites.
# Above it, ARPACK (Lanczos) on the sparse matrix: ml-latest-small's 9.7k items
# would be 760 MB dense.
_DENSE_SVD_MAX_ITEMS = 1_000


def interaction_matrix(df: pd.DataFrame) -> tuple[sp.csr_matrix, list[str]]:
    """Binary users x items matrix and the item id of each column.

    Every row of ``df`` counts as one consumption; ``type``, ``weight`` and ``ts``
    are not used (rating a film means having watched it, whatever the score). Repeated
    (user, item) pairs collapse to 1. Items are ordered by their string id and
    users likewise, so the same data gives the same matrix whatever the row order.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(f"interactions lack column(s) {missing}; have {list(df.columns)}")
    if df["user_id"].isna().any() or df["item_id"].isna().any():
        raise DatasetError("interactions contain null user_id or item_id")
    # Ids are strings on the wire; coercing here keeps int ids (raw MovieLens)
    # from sorting numerically in one place and lexically in another.
    users = df["user_id"].astype(str)
    items = df["item_id"].astype(str)
    user_codes, user_uniques = pd.factorize(users, sort=True)
    item_codes, item_uniques = pd.factorize(items, sort=True)
    shape = (len(user_uniques), len(item_uniques))
    ones = np.ones(len(df), dtype=np.float32)
    matrix = sp.csr_matrix((ones, (user_codes, item_codes)), shape=shape, dtype=np.float32)
    # The constructor sums duplicates; clamp those sums back to 1.
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix, [str(i) for i in item_uniques]


def ppmi_svd_embeddings(
    matrix: sp.spmatrix | sp.sparray | np.ndarray,
    dim: int = 64,
    *,
    seed: int = 0,
    shift: float = 1.0,
) -> np.ndarray:
    """Item embeddings (n_items x d, float32, unit rows) from a users x items matrix.

    C = XᵀX with a zero diagonal counts how many users consumed both i and j.
    PPMI_ij = max(0, log(C_ij · N / (c_i · c_j)) − log(shift)) with c_i the row
    sums of C and N their total; ``shift`` plays the role of SGNS's number of
    negative samples (1 = no shift). Embeddings are U·sqrt(S) of the truncated
    SVD (the symmetric eigenvalue weighting Levy & Goldberg recommend), then
    L2-normalised. An item that co-occurs with nothing gets a zero row, never NaN.

    ``d = min(dim, n_items - 1)`` (at least 1): a rank-r matrix has at most r
    useful directions and ARPACK needs k < n. With a fixed ``seed`` the result
    is identical from run to run (seeded ARPACK start vector, fixed signs).
    The input must be symmetric-safe: PPMI always is, which is what lets ARPACK
    run as a symmetric eigensolver (``eigsh``) rather than ``svds``.
    """
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    # A copy: the caller's matrix is not ours to binarise in place.
    x = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    x.eliminate_zeros()
    x.data[:] = 1.0
    n_items = x.shape[1]
    out_dim = max(1, min(dim, n_items - 1))
    ppmi = _ppmi(x, shift)
    if ppmi.nnz == 0:
        return np.zeros((n_items, out_dim), dtype=np.float32)
    u, s = _truncated_svd(ppmi, out_dim, seed)
    emb = (u * np.sqrt(s)).astype(np.float32)
    return _normalise_rows(emb)


def build_embeddings(
    df: pd.DataFrame, dim: int = 64, seed: int = 0
) -> tuple[list[str], np.ndarray]:
    """Interactions DataFrame -> (item ids, unit-norm float32 vectors), row i for id i."""
    matrix, item_ids = interaction_matrix(df)
    return item_ids, ppmi_svd_embeddings(matrix, dim, seed=seed)


def _ppmi(x: sp.csr_matrix, shift: float) -> sp.csr_matrix:
    # float32 holds co-counts exactly up to 2**24 users, and halves the memory of
    # the item-item matrix (ml-latest-small: 26M non-zeros, ~210 MB as float32).
    co = (x.T @ x).tocsr()
    rows = np.repeat(np.arange(co.shape[0], dtype=np.int32), np.diff(co.indptr))
    # Zero the diagonal in place (an item does not co-occur with itself);
    # subtracting diags() would copy the whole matrix.
    co.data[rows == co.indices] = 0.0
    counts = np.asarray(co.sum(axis=1), dtype=np.float64).ravel()
    total = counts.sum()
    if total == 0:
        return sp.csr_matrix(co.shape, dtype=np.float32)
    log_counts = np.log(np.where(counts > 0, counts, 1.0)).astype(np.float32)
    # log(C·N/(c_i·c_j)) as a sum of logs, in place: no product ever nears overflow
    # and no second nnz-sized float64 array is allocated. log(0) on the zeroed
    # diagonal gives -inf, which the clip below turns into an explicit 0.
    data = co.data
    with np.errstate(divide="ignore"):
        np.log(data, out=data)
    data += np.float32(np.log(total) - np.log(shift))
    data -= log_counts[rows]
    data -= log_counts[co.indices]
    np.maximum(data, 0.0, out=data)
    co.eliminate_zeros()
    return co


def _truncated_svd(m: sp.csr_matrix, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k left singular vectors and values, values descending, signs fixed."""
    n = m.shape[0]
    if n <= _DENSE_SVD_MAX_ITEMS:
        u, s, _ = np.linalg.svd(m.toarray().astype(np.float64))
        u, s = u[:, :k], s[:k]
    else:
        rng = np.random.default_rng(seed)
        # ARPACK starts from a random vector unless given one; seeding it is what
        # makes two builds of the same data bit-identical.
        v0 = rng.uniform(-1.0, 1.0, size=n).astype(m.dtype)
        # PPMI is symmetric, so its SVD is its eigendecomposition with σ = |λ|
        # and U = the eigenvectors. eigsh works on the matrix itself where svds
        # works on MᵀM (squared spectrum, two products per step): on
        # ml-latest-small that is ~5 s instead of ~12 s, same neighbours.
        lam, u = eigsh(m, k=k, which="LM", v0=v0)
        s = np.abs(lam)
        order = np.argsort(s)[::-1]
        u, s = u[:, order].astype(np.float64), s[order].astype(np.float64)
    # A singular vector is defined up to sign; pin it (largest entry positive) so
    # equal inputs give equal vectors whatever path or platform computed them.
    pivots = np.argmax(np.abs(u), axis=0)
    signs = np.sign(u[pivots, np.arange(u.shape[1])])
    signs[signs == 0] = 1.0
    return u * signs, np.clip(s, 0.0, None)


def _normalise_rows(v: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    # Rows of zeros stay zero: dividing by 1 instead of 0 avoids NaN.
    return (v / np.where(norms > 0, norms, 1.0)).astype(np.float32)
