"""The numba tier of the gain quantizer: jitted loops over a batch of groups (CPU).

Chapter: Gain quantization (book/gain.ipynb), "Throughput of the tiers". Same functions as
the reference tier (reference.py, where they are explained), same results bit for bit: the
kernels sum left to right in float64 like the reference, and the row-norm codes use the
same float64 thresholds.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .. import _tiers, pyramid
from ..format import FP16_NORMS
from .norms import fp16_norms, fp32_norm_range, norm_levels, norm_thresholds


def matrix(W):
    """(X, r): W as a C-contiguous float64 NumPy matrix (a tensor is read detached) and
    its row norms; NumPy's sum, the same as the reference tier's."""
    X = np.ascontiguousarray(_tiers.to_numpy(W.detach() if _tiers.is_torch(W) else W),
                             dtype=np.float64)
    return X, np.sqrt(np.sum(X ** 2, axis=1))


@njit(cache=True)
def _log_codes(r, thresholds, codes):
    """codes[i] = 1 + #{thresholds < r[i]} for r[i] > 0 (binary search), 0 for a zero row."""
    for i in range(r.shape[0]):
        if r[i] > 0.0:
            lo, hi = 0, thresholds.shape[0]
            while lo < hi:
                mid = (lo + hi) // 2
                if thresholds[mid] < r[i]:
                    lo = mid + 1
                else:
                    hi = mid
            codes[i] = 1 + lo
        else:
            codes[i] = 0
    return codes


def row_norms(r, bits: int):
    """(stored, norm range, decoded) for float64 norms r (NumPy). Numba has no float16, so
    fp16 norms are NumPy's cast (as in the reference); log-grid codes are a jitted search."""
    if bits == FP16_NORMS:
        stored = fp16_norms(r)
        return stored, np.zeros(0, dtype=np.float32), stored.astype(np.float64)
    nz = r > 0
    norm_range = fp32_norm_range(float(r[nz].min()) if nz.any() else 0.0, float(r.max()))
    levels = norm_levels(norm_range[0], norm_range[1], bits)
    codes = _log_codes(np.ascontiguousarray(r, dtype=np.float64), norm_thresholds(levels),
                       np.empty(len(r), dtype=np.uint16))
    return codes, norm_range, levels[codes]


def _fixed_points(g: int, L: int, K: int) -> np.ndarray:
    """g copies of the pyramid point (K, 0, ..., 0), for all-zero groups."""
    Y = np.zeros((g, L), dtype=np.int64)
    Y[:, 0] = K
    return Y


@njit(cache=True)
def _gain_codes_kernel(G, Y, rg, thresholds, ls, codes):
    for i in range(G.shape[0]):
        gy = 0.0
        yy = 0.0
        gg = 0.0
        for j in range(G.shape[1]):
            gy += G[i, j] * Y[i, j]
            yy += float(Y[i, j]) * Y[i, j]
            gg += G[i, j] * G[i, j]
        t = 0.0
        if gg > 0.0:
            t = (gy / math.sqrt(yy) if ls else math.sqrt(gg)) / rg[i]
        c = 0
        for th in thresholds:
            if t > th:
                c += 1
        codes[i] = c
    return codes


def groups(G, rg, K: int, thresholds, ls: bool):
    """(Y, codes) of every group: the pyramid's numba search, then one jitted pass."""
    Y = _fixed_points(len(G), G.shape[1], K)
    nz = np.any(G != 0, axis=1)
    if nz.any():
        Y[nz] = pyramid.search_batch(G[nz], K, backend="numba")
    codes = np.empty(len(G), dtype=np.int64)
    _gain_codes_kernel(G, Y, np.asarray(rg, dtype=np.float64), thresholds, ls, codes)
    return Y, codes


@njit(cache=True)
def _reconstruct_kernel(Y, codes, rg, levels, out):
    for i in range(Y.shape[0]):
        yy = 0.0
        for j in range(Y.shape[1]):
            yy += float(Y[i, j]) * Y[i, j]
        norm = math.sqrt(yy)
        gain = rg[i] * levels[codes[i]]
        for j in range(Y.shape[1]):
            out[i, j] = gain * Y[i, j] / norm
    return out


def reconstruct(Y, codes, rg, levels):
    """The decoded groups, float64: w_g = r * t_c * y / ||y||."""
    out = np.empty(Y.shape, dtype=np.float64)
    return _reconstruct_kernel(np.ascontiguousarray(Y), np.asarray(codes, dtype=np.int64),
                               np.asarray(rg, dtype=np.float64), levels, out)
