"""Numba tier of the fast Hadamard transform (CPU): the reference's algorithm, jitted.

Same function name and contract as ``reference.transform``. The kernel fuses the sign
products, the scale and the NaN/Inf check into its passes, does two butterfly stages per
pass (radix 4: H_4 = H_2 (x) H_2 on the four elements at distances h, 2h) and the k-mix
as a small BLAS product per row. It checks NaN/Inf input and overflow itself (raising
ValueError), so ``transform.py`` does not check its result again.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .reference import NAN_OR_INF, OVERFLOW


@njit(cache=True)
def _kernel(x, out, pre, post, Hk, M):
    """out[r] = post * H (pre * x[r]) for each row r of the 2-D x; H = (Hk (x) H_M)/sqrt(n).

    Returns 0 on success, 1 if x holds a NaN or Inf, 2 if the result overflowed.
    """
    rows, n = x.shape
    k = Hk.shape[0]
    scale = 1.0 / math.sqrt(n)
    for r in range(rows):
        v = out[r]
        for i in range(n):
            if not np.isfinite(x[r, i]):
                return 1
            v[i] = x[r, i] * pre[i]
        for a in range(k):                       # butterflies on each length-M row
            base, h = a * M, 1
            while 4 * h <= M:                    # two stages at once
                for start in range(base, base + M, 4 * h):
                    for i in range(start, start + h):
                        p, q, s, t = v[i], v[i + h], v[i + 2 * h], v[i + 3 * h]
                        v[i], v[i + h] = (p + q) + (s + t), (p - q) + (s - t)
                        v[i + 2 * h], v[i + 3 * h] = (p + q) - (s + t), (p - q) - (s - t)
                h *= 4
            if h < M:                            # one stage left when log2 M is odd
                for start in range(base, base + M, 2 * h):
                    for i in range(start, start + h):
                        u, w = v[i], v[i + h]
                        v[i], v[i + h] = u + w, u - w
        if k > 1:                                # dense k-mix (a small BLAS product)
            v[:] = np.dot(Hk, v.reshape(k, M)).ravel()
        for i in range(n):
            v[i] *= scale * post[i]
            if not np.isfinite(v[i]):
                return 2
    return 0


def transform(x: np.ndarray, Hk: np.ndarray, M: int, pre=None, post=None) -> np.ndarray:
    """post * H_n (pre * x) along the last axis (see ``reference.transform``); raises
    ValueError for NaN/Inf input or an overflowing result."""
    n = x.shape[-1]
    flat = x.reshape(-1, n)                       # a view when possible, else a copy
    out = np.empty(flat.shape, dtype=x.dtype)
    ones = np.ones(n, dtype=x.dtype)
    pre = ones if pre is None else pre.astype(x.dtype)
    post = ones if post is None else post.astype(x.dtype)
    status = _kernel(flat, out, pre, post, Hk.astype(x.dtype), M)
    if status:
        raise ValueError(NAN_OR_INF if status == 1 else OVERFLOW)
    return out.reshape(x.shape)
