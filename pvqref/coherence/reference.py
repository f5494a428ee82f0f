"""Reference tier of the fast Hadamard transform: the textbook algorithm in plain NumPy.

This is the oracle the other tiers (``_numba.py``, ``_torch.py``, same function names)
are tested against; it imports neither Numba nor torch. Inputs are already checked by
``transform.py``; NaN, Inf and overflow are detected there, on the result.

The transform y = H_n x along the last axis, H_n = (H_k (x) H_M) / sqrt(n), n = k M:
write the index of x as i = a * M + b (a < k, b < M). Then

    y[a, b] = sum_{a', b'} H_k[a, a'] H_M[b, b'] x[a', b'] / sqrt(n):

first the Walsh-Hadamard butterfly on each of the k rows of length M (log2 M stages;
stage h maps each pair (u, v) at distance h to (u + v, u - v): that is H_2 (x) H_h),
then the dense k x k product on every column, then the scale. Cost per vector:
n log2 M additions + n k multiply-adds. H_n^T uses H_k^T (Sylvester is symmetric).
"""

from __future__ import annotations

import math

import numpy as np

# The errors every tier raises (the Numba kernel detects them inline, the others on the result).
NAN_OR_INF = "input contains NaN or Inf"
OVERFLOW = "the transform overflowed the input's dtype (values near its maximum); rescale"


def fwht(x: np.ndarray) -> np.ndarray:
    """Unnormalised Walsh-Hadamard transform along the last axis (length M = 2^m)."""
    lead, M = x.shape[:-1], x.shape[-1]
    h = 1
    while h < M:
        pairs = x.reshape(*lead, M // (2 * h), 2, h)      # pair (u, v) at distance h
        u, v = pairs[..., 0, :], pairs[..., 1, :]
        x = np.stack([u + v, u - v], axis=-2).reshape(*lead, M)
        h *= 2
    return x


def transform(x: np.ndarray, Hk: np.ndarray, M: int, pre=None, post=None) -> np.ndarray:
    """post * H_n (pre * x) along the last axis of a float array, H_n = (Hk (x) H_M) / sqrt(n).

    ``Hk``: the integer k x k factor (its transpose for H_n^T); ``pre``, ``post``: sign
    vectors of length n, or None. The result has x's shape and dtype.
    """
    if pre is not None:
        x = x * pre.astype(x.dtype)
    k = Hk.shape[0]
    with np.errstate(over="ignore", invalid="ignore"):     # overflow: the caller's error
        y = fwht(x.reshape(*x.shape[:-1], k, M))           # butterflies on rows
        y = np.matmul(Hk.astype(x.dtype), y)                # dense k-mix on columns
        y = y.reshape(x.shape) / x.dtype.type(math.sqrt(k * M))
    if post is not None:
        y = y * post.astype(y.dtype)
    return y


def dense(x: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """x @ Q^T along the last axis (the product with a dense rotation Q), in x's dtype."""
    with np.errstate(over="ignore", invalid="ignore"):     # overflow: the caller's error
        return x @ Q.T.astype(x.dtype)
