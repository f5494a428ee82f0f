"""Vector quantization, the Numba tier: the nearest-centroid search (the part of k-means
and of the quantizer that costs: N x k x v per pass), parallel over the vectors. The
centroid update is a NumPy scatter, the reference's (``pvqref.vq.kmeans`` uses it)."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(parallel=True, cache=True)
def _assign(X, C, out):
    n, v = X.shape
    for i in numba.prange(n):
        best, arg = np.inf, 0
        for c in range(C.shape[0]):
            d = 0.0
            for t in range(v):
                e = X[i, t] - C[c, t]
                d += e * e
            if d < best:
                best, arg = d, c
        out[i] = arg


def assign(X, C):
    """Index of the nearest centroid of each vector (int64), the lowest index on ties."""
    out = np.empty(len(X), dtype=np.int64)
    _assign(np.ascontiguousarray(X, np.float64), np.ascontiguousarray(C, np.float64), out)
    return out
